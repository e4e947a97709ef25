"""Shared fixtures: real MNIST from ../shared/datasets (or $FERROGRAD_DATA),
and restoring the global thread count after tests that change it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ferrograd as fg

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Folder holding ``mnist/``: $FERROGRAD_DATA, else ../shared/datasets."""
    env = os.environ.get("FERROGRAD_DATA")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def mnist() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Real MNIST as uint8 arrays, loaded once per test session."""
    return fg.datasets.load_mnist(root=data_root(), download=False)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = fg.get_num_threads()
    yield
    fg.set_num_threads(n)

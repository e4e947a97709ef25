"""Shared command-line plumbing for the examples (not part of the library)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import ferrograd as fg

HERE = Path(__file__).resolve().parent


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every example takes."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        default=os.environ.get("FERROGRAD_DATA"),
        help="folder holding mnist/ (default: $FERROGRAD_DATA, else ~/.cache/ferrograd)",
    )
    p.add_argument(
        "--out", default=str(HERE / "out"), help="folder for plots (default examples/out)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    return p


def mnist(data: str | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST as uint8 arrays, from ``data`` (no download when it is given)."""
    return fg.datasets.load_mnist(data, download=data is None)


def out_dir(path: str) -> Path:
    """The plots folder, created."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out

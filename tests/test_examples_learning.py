"""The learning-dynamics examples run in their quick modes and show what they
claim: ``examples/vanishing_gradients.py`` (the sigmoid network's gradient
vanishes, ReLU + He and BatchNorm keep it flowing) and
``examples/overfitting.py`` (dropout, weight decay and early stopping each
narrow the gap between training and held-out loss). Each example runs once
per module; the tests below check its numbers and its figures. Skipped when
the real MNIST files are absent."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ferrograd as fg
from conftest import REPO, data_root

EXAMPLES = REPO / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mnist_root() -> Path:
    """The folder holding ``mnist/``; skips the module when MNIST is absent."""
    root = data_root()
    try:
        fg.datasets.load_mnist(root, download=False)
    except fg.datasets.DatasetNotFoundError:
        pytest.skip(f"real MNIST not found under {root}")
    return root


def run_quick(name: str, root: Path, out: Path) -> dict[str, Any]:
    """Imports ``examples/<name>.py`` and runs its ``main`` in quick mode."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))  # the examples import _common
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        n = fg.get_num_threads()
        try:
            return module.main(["--quick", "--data", str(root), "--out", str(out)])  # type: ignore[no-any-return]
        finally:
            fg.set_num_threads(n)


def assert_pngs(paths: list[str], names: set[str]) -> None:
    assert {Path(p).name for p in paths} == names
    for p in paths:
        data = Path(p).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, p


# ------------------------------------------------------------- vanishing gradients


@pytest.fixture(scope="module")
def vanishing(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("vanishing")
    yield run_quick("vanishing_gradients", mnist_root, out), out


def test_sigmoid_gradients_vanish(vanishing):
    r = vanishing[0]["variants"]["sigmoid"]
    assert r["ratio_init"] < 0.01, r["grad_norm_init"]
    assert r["verdict"].startswith("vanishing")
    # still vanishing while it trains, and it learns nothing in the budget
    assert r["ratio_last_epoch"] < 0.01
    assert r["test_accuracy"] < 0.2


def test_relu_he_gradients_flow(vanishing):
    r = vanishing[0]["variants"]["relu_he"]
    assert 0.1 <= r["ratio_init"] <= 10, r["grad_norm_init"]
    assert 0.1 <= r["ratio_last_epoch"] <= 10
    assert r["test_accuracy"] > 0.8


def test_batchnorm_helps_the_sigmoid_net(vanishing):
    variants = vanishing[0]["variants"]
    bn, plain = variants["sigmoid_bn"], variants["sigmoid"]
    assert 0.1 <= bn["ratio_init"] <= 10, bn["grad_norm_init"]
    assert bn["ratio_init"] > 1000 * plain["ratio_init"]
    assert bn["test_accuracy"] > 0.8 > plain["test_accuracy"] + 0.5


def test_vanishing_same_budget_and_plots(vanishing):
    result, out = vanishing
    cfg = result["config"]
    assert cfg["depth"] == 10 and cfg["epochs"] >= 1
    assert set(result["variants"]) == {"sigmoid", "relu_he", "sigmoid_bn"}
    for r in result["variants"].values():
        assert len(r["grad_norm_init"]) == 10  # one per Dense layer
    assert_pngs(
        result["plots"],
        {
            "vanishing_gradients_init.png",
            "vanishing_gradients_training.png",
            "vanishing_gradients_history.png",
        },
    )
    assert all(Path(p).parent == out for p in result["plots"])


# -------------------------------------------------------------------- overfitting


@pytest.fixture(scope="module")
def overfitting(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("overfitting")
    yield run_quick("overfitting", mnist_root, out), out


def test_unregularised_net_overfits(overfitting):
    result = overfitting[0]
    (runs,) = result["runs"].values()  # quick mode: one seed
    none = runs["none"]
    assert none["train_accuracy"] == 1.0  # memorises its 1,000 images
    assert none["test_accuracy"] < 0.93
    assert none["loss_gap"] > 0.3
    assert none["accuracy_gap"] > 0.08


@pytest.mark.parametrize("variant", ["dropout", "weight_decay", "early_stopping"])
def test_each_regulariser_narrows_the_loss_gap(overfitting, variant):
    result = overfitting[0]
    (runs,) = result["runs"].values()
    r, none = runs[variant], runs["none"]
    assert r["loss_gap"] < none["loss_gap"] - 0.05, (r, none)
    assert r["test_loss"] < none["test_loss"]
    assert result["narrower"]["loss_gap"][variant]


def test_dropout_narrows_the_accuracy_gap(overfitting):
    (runs,) = overfitting[0]["runs"].values()
    assert runs["dropout"]["accuracy_gap"] < runs["none"]["accuracy_gap"]


def test_early_stopping_stopped_early_and_plots(overfitting):
    result, out = overfitting
    (runs,) = result["runs"].values()
    es = runs["early_stopping"]
    assert es["epochs_trained"] < result["config"]["epochs"]
    assert es["best_epoch"] is not None and es["best_epoch"] < es["epochs_trained"]
    assert all(
        runs[v]["epochs_trained"] == result["config"]["epochs"]
        for v in runs
        if v != "early_stopping"
    )
    assert_pngs(result["plots"], {"overfitting_history.png", "overfitting_gaps.png"})
    assert all(Path(p).parent == out for p in result["plots"])

"""The examples in ``examples/`` run in their quick modes and show what they
claim: MNIST accuracy from ``fit``, the custom loop equal to ``fit`` bit for
bit, and gradient checks that pass (and catch a wrong gradient)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import REPO, data_root

EXAMPLES = REPO / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Imports ``examples/<name>.py`` as a module."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    args = ["--quick", "--data", str(data_root()), "--out", str(tmp_path)]
    return load(name, monkeypatch).main(args)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path


def test_mnist_mlp(tmp_path, monkeypatch, capsys):
    out = run("mnist_mlp", tmp_path, monkeypatch)
    assert out["test_accuracy"] > 0.92  # 3 epochs on 10,800 images
    assert_png(tmp_path / "mnist_mlp_history.png")
    assert "test accuracy" in capsys.readouterr().out


def test_mnist_cnn(tmp_path, monkeypatch):
    out = run("mnist_cnn", tmp_path, monkeypatch)
    assert out["test_accuracy"] > 0.85  # one epoch on 4,000 images
    assert_png(tmp_path / "mnist_cnn_history.png")


def test_custom_loop_equals_fit(tmp_path, monkeypatch, capsys):
    out = run("custom_loop", tmp_path, monkeypatch)
    assert out["identical_to_fit"] == 1.0
    assert out["test_accuracy"] > 0.85
    assert "identical weights: True" in capsys.readouterr().out


def test_gradcheck_passes_and_catches_a_wrong_gradient(tmp_path, monkeypatch):
    out = run("gradcheck", tmp_path, monkeypatch)
    wrong = out.pop("wrong_gradient")
    assert len(out) >= 8
    assert all(err < 1e-6 for err in out.values()), out
    assert 0.05 < wrong < 0.2  # the 10% error, measured

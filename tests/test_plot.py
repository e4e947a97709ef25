"""Tests for ferrograd.plot: learning curves and gradient-flow figures.

Histories are built by hand (every field under control) and from a tiny real
``fit``; figures are checked through their artists (axes, labels, lines,
legends, scales), never by pixels.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

import ferrograd as fg
import ferrograd.plot as fplot
from ferrograd import layers as L

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ helpers


def make_history(
    n: int = 10,
    val: bool = True,
    lr: bool = False,
    best: int | None = None,
    stopped: int | None = None,
    first_epoch: int = 0,
) -> fg.History:
    """A History as fit fills it: val_loss lowest at epoch 6 (0-based),
    training loss falling all the way."""
    h = fg.History()
    h.epoch = list(range(first_epoch, first_epoch + n))
    e = np.arange(n, dtype=float)
    h.history["loss"] = list(1.0 / (1.0 + e))
    h.history["accuracy"] = list(0.5 + 0.04 * e)
    if val:
        h.history["val_loss"] = list(0.5 + 0.01 * (e - 6.0) ** 2)
        h.history["val_accuracy"] = list(0.45 + 0.03 * e)
    if lr:
        h.history["learning_rate"] = list(1e-2 * 0.5**e)
    h.best_epoch, h.stopped_epoch = best, stopped
    return h


def add_diagnostics(h: fg.History, layers: int = 3) -> fg.History:
    n = len(h.epoch)
    for stat, scale in (("grad_norm", 1.0), ("weight_norm", 5.0), ("update_ratio", 1e-3)):
        d: dict[str, list[float]] = {}
        for i in range(layers):
            d[f"{2 * i}.weight"] = [scale * 10.0 ** (i - layers) * (1 + 0.1 * k) for k in range(n)]
            d[f"{2 * i}.bias"] = [0.5 * scale * 10.0 ** (i - layers)] * n
        h.diagnostics[stat] = d
    h.diagnostics["dead_fraction"] = {str(2 * i + 1): [0.1 * i] * n for i in range(layers - 1)}
    h.diagnostics["saturated_fraction"] = {str(2 * i + 1): [0.0] * n for i in range(layers - 1)}
    return h


def lines_by_gid(ax) -> dict[str, object]:
    return {line.get_gid(): line for line in ax.get_lines()}


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def report(
    verdict: str | None = "vanishing: the first layer's gradient norm is 3e-06 of the last layer's",
    weights: bool = True,
):
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    grad = {n: 10.0 ** (-6 + i) for i, n in enumerate(names)}
    r = types.SimpleNamespace(grad_norm=grad)
    if weights:
        r.weight_norm = {n: 1.0 + i for i, n in enumerate(names)}
    if verdict is not None:
        r.verdict = verdict
    return r


def blobs(n: int = 96, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(2, d))
    y = rng.integers(0, 2, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, d))
    return x.astype(np.float32), y


def tiny_model():
    return fg.Sequential([L.Dense(4, 8), L.ReLU(), L.Dense(8, 2)], seed=0)


# ------------------------------------------------------------ import policy


def test_importing_ferrograd_does_not_import_matplotlib_or_pyplot():
    code = (
        "import sys, ferrograd, ferrograd.plot\n"
        "assert 'matplotlib' not in sys.modules, 'import ferrograd pulled in matplotlib'\n"
        "h = ferrograd.History(); h.epoch = [0, 1]; h.history['loss'] = [1.0, 0.5]\n"
        "fig = ferrograd.plot.history(h)\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'fg.plot used pyplot'\n"
        "print(type(fig).__module__, type(fig).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "matplotlib.figure Figure"


def test_missing_matplotlib_raises_on_use_not_on_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    module = importlib.reload(fplot)  # importing the module itself still works
    msg = "fg.plot needs matplotlib: pip install 'ferrograd[plot]'"
    with pytest.raises(ImportError) as info:
        module.history(make_history())
    assert str(info.value) == msg
    with pytest.raises(ImportError, match=r"pip install 'ferrograd\[plot\]'"):
        module.gradient_flow(add_diagnostics(make_history()))
    with pytest.raises(ImportError, match=r"needs matplotlib"):
        module.gradient_flow(report())


# ------------------------------------------------------------------ history


def test_history_panels_labels_and_lines():
    h = make_history(lr=True, best=5, stopped=8)
    fig = fplot.history(h)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 3
    loss_ax, acc_ax, lr_ax = axes
    assert [a.get_title() for a in axes] == [
        "Training and validation loss",
        "Training and validation accuracy",
        "Learning rate schedule",
    ]
    assert [a.get_xlabel() for a in axes] == ["Epoch"] * 3
    assert loss_ax.get_ylabel() == "Loss"
    assert acc_ax.get_ylabel() == "Accuracy"
    assert lr_ax.get_ylabel() == "Learning rate (log scale)"
    # training, validation, best line, best ring, early-stop line
    assert len(loss_ax.get_lines()) == 5
    assert len(acc_ax.get_lines()) == 5
    # the learning rate, best line, early-stop line (no ring on the schedule)
    assert len(lr_ax.get_lines()) == 3
    assert lr_ax.get_yscale() == "log"
    assert loss_ax.get_yscale() == "linear"
    # one shared legend above the panels, none per panel
    assert len(fig.legends) == 1
    assert legend_texts(fig.legends[0]) == [
        "training",
        "validation",
        "best epoch 6 (restored)",
        "early stop after epoch 9",
    ]
    assert all(a.get_legend() is None for a in axes)


def test_history_epochs_are_one_based_and_curves_match_the_history():
    h = make_history(n=4)
    fig = fplot.history(h, metrics="loss")
    lines = lines_by_gid(fig.axes[0])
    assert list(lines["loss"].get_xdata()) == [1, 2, 3, 4]
    np.testing.assert_allclose(lines["loss"].get_ydata(), h.history["loss"])
    np.testing.assert_allclose(lines["val_loss"].get_ydata(), h.history["val_loss"])
    # a run resumed with initial_epoch=5: epochs 5.. (0-based) are 6.. on the axis
    h = make_history(n=3, first_epoch=5)
    lines = lines_by_gid(fplot.history(h, metrics="loss").axes[0])
    assert list(lines["loss"].get_xdata()) == [6, 7, 8]


def test_history_marks_restored_best_epoch_and_early_stop():
    h = make_history(best=3, stopped=7)
    fig = fplot.history(h)
    for ax, key in zip(fig.axes, ("val_loss", "val_accuracy")):
        lines = lines_by_gid(ax)
        assert list(lines["best_epoch"].get_xdata()) == [4, 4]
        assert list(lines["stopped_epoch"].get_xdata()) == [8, 8]
        # the ring sits on the validation curve at the best epoch
        assert list(lines["best_marker"].get_xdata()) == [4]
        assert lines["best_marker"].get_ydata()[0] == pytest.approx(h.history[key][3])
        assert lines["best_epoch"].get_label() == "best epoch 4 (restored)"
        assert lines["stopped_epoch"].get_label() == "early stop after epoch 8"


def test_history_best_epoch_defaults_to_lowest_val_loss_then_loss():
    lines = lines_by_gid(fplot.history(make_history()).axes[0])
    assert list(lines["best_epoch"].get_xdata()) == [7, 7]  # val_loss lowest at 0-based 6
    assert lines["best_epoch"].get_label() == "best epoch 7 (lowest val_loss)"
    assert "stopped_epoch" not in lines

    fig = fplot.history(make_history(n=5, val=False))
    lines = lines_by_gid(fig.axes[0])
    assert list(lines["best_epoch"].get_xdata()) == [5, 5]  # training loss falls to the end
    assert lines["best_epoch"].get_label() == "best epoch 5 (lowest loss)"
    assert list(lines["best_marker"].get_xdata()) == [5]
    assert fig.axes[0].get_title() == "Training loss"
    assert legend_texts(fig.legends[0]) == ["training", "best epoch 5 (lowest loss)"]
    assert len(fig.axes[0].get_lines()) == 3  # training, best line, ring


def test_history_metrics_selects_panels():
    h = make_history(lr=True)
    fig = fplot.history(h, metrics=["val_accuracy", "learning_rate"])
    assert [a.get_ylabel() for a in fig.axes] == ["Accuracy", "Learning rate (log scale)"]
    fig = fplot.history(h, metrics="accuracy")
    assert len(fig.axes) == 1
    # a single panel carries its own legend
    assert fig.legends == []
    assert legend_texts(fig.axes[0].get_legend()) == [
        "training",
        "validation",
        "best epoch 7 (lowest val_loss)",
    ]
    with pytest.raises(
        ValueError, match=r"no 'f1' in the history; available: 'loss', 'accuracy', 'learning_rate'"
    ):
        fplot.history(h, metrics=["loss", "f1"])
    with pytest.raises(ValueError, match="metrics is empty"):
        fplot.history(h, metrics=[])


def test_history_into_given_axes():
    fig = Figure()
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    out = fplot.history(make_history(), ax=axes)
    assert out is fig
    assert [a.get_title() for a in axes] == [
        "Training and validation loss",
        "Training and validation accuracy",
    ]
    assert all(a.get_legend() is not None for a in axes)
    single = Figure()
    ax = single.add_subplot(1, 1, 1)
    assert fplot.history(make_history(), metrics="loss", ax=ax) is single
    with pytest.raises(ValueError, match="ax holds 1 axes for 2 panels"):
        fplot.history(make_history(), ax=Figure().add_subplot(1, 1, 1))


def test_history_saves_png_and_svg(tmp_path):
    png = tmp_path / "curves.png"
    fig = fplot.history(make_history(lr=True, best=2, stopped=4), path=png)
    assert isinstance(fig, Figure)
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    svg = tmp_path / "curves.svg"
    fplot.history(make_history(), path=str(svg))
    assert b"<svg" in svg.read_bytes()[:2000]


def test_history_errors():
    with pytest.raises(TypeError, match=r"expects a ferrograd.History .* got dict"):
        fplot.history({"loss": [1.0, 0.5]})
    with pytest.raises(ValueError, match="the history is empty"):
        fplot.history(fg.History())
    h = fg.History()
    h.history["loss"] = []
    with pytest.raises(ValueError, match="the history is empty"):
        fplot.history(h)


def test_history_from_a_real_fit(tmp_path):
    x, y = blobs()
    h = tiny_model().fit(
        x, y, "cross_entropy", "adam", epochs=3, batch_size=16, validation_split=0.25, verbose=0
    )
    path = tmp_path / "fit.png"
    fig = fplot.history(h, path=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert [a.get_ylabel() for a in fig.axes] == ["Loss", "Accuracy"]
    lines = lines_by_gid(fig.axes[0])
    assert list(lines["loss"].get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(lines["val_loss"].get_ydata(), h.history["val_loss"])
    best = int(np.argmin(h.history["val_loss"])) + 1
    assert list(lines["best_epoch"].get_xdata()) == [best, best]
    # trained without diagnostics: nothing for gradient_flow
    with pytest.raises(ValueError, match=r"train with fit\(\.\.\., diagnostics=True\)"):
        fplot.gradient_flow(h)


@pytest.mark.skipif(
    "diagnostics" not in inspect.signature(fg.Sequential.fit).parameters,
    reason="fit(..., diagnostics=True) is not available in this build",
)
def test_gradient_flow_from_a_real_fit_with_diagnostics(tmp_path):
    x, y = blobs()
    h = tiny_model().fit(
        x, y, "cross_entropy", "adam", epochs=3, batch_size=16, verbose=0, diagnostics=True
    )
    path = tmp_path / "flow.png"
    fig = fplot.gradient_flow(h, path=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert legend_texts(ax.get_legend()) == ["0.weight", "2.weight"]
    assert len(ax.get_lines()) == 2
    assert len(fplot.gradient_flow(h, include_bias=True).axes[0].get_lines()) == 4


# ------------------------------------------------------------ gradient flow


def test_gradient_flow_from_history_weights_only():
    h = add_diagnostics(make_history(n=6))
    fig = fplot.gradient_flow(h)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "Gradient norm per parameter during training"
    assert ax.get_xlabel() == "Epoch"
    assert ax.get_ylabel() == r"gradient norm $\|\nabla_{w} L\|_2$ (log scale)"
    lines = ax.get_lines()
    assert len(lines) == 3
    legend = ax.get_legend()
    assert legend_texts(legend) == ["0.weight", "2.weight", "4.weight"]
    assert legend.get_title().get_text() == "parameter\n(shallow → deep)"
    assert list(lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(lines[1].get_ydata(), h.diagnostics["grad_norm"]["2.weight"])
    # coloured by depth: three different colours along one sequential map
    colours = {tuple(line.get_color()) for line in lines}
    assert len(colours) == 3


def test_gradient_flow_include_bias_orders_by_depth():
    h = add_diagnostics(make_history(n=4))
    # the dict order scrambled: the figure still goes by layer index
    h.diagnostics["grad_norm"] = dict(reversed(list(h.diagnostics["grad_norm"].items())))
    ax = fplot.gradient_flow(h, include_bias=True).axes[0]
    lines = ax.get_lines()
    assert len(lines) == 6
    assert legend_texts(ax.get_legend()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert [line.get_linestyle() for line in lines] == ["-", "--"] * 3
    assert lines[0].get_color() == lines[1].get_color()  # a bias takes its layer's colour


@pytest.mark.parametrize(
    ("stat", "title", "ylabel"),
    [
        (
            "update_ratio",
            "Relative update size per parameter during training",
            r"update ratio $\|\Delta w\|_2 \,/\, \|w\|_2$ (log scale)",
        ),
        (
            "weight_norm",
            "Weight norm per parameter during training",
            r"weight norm $\|w\|_2$ (log scale)",
        ),
    ],
)
def test_gradient_flow_other_parameter_stats(stat, title, ylabel):
    h = add_diagnostics(make_history(n=5))
    ax = fplot.gradient_flow(h, stat=stat).axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title() == title
    assert ax.get_ylabel() == ylabel
    assert len(ax.get_lines()) == 3


def test_gradient_flow_activation_stats_are_linear_percentages():
    h = add_diagnostics(make_history(n=5))
    ax = fplot.gradient_flow(h, stat="dead_fraction").axes[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_title() == "Dead units per activation layer during training"
    assert ax.get_ylabel() == "dead units (% of the layer)"
    assert legend_texts(ax.get_legend()) == ["layer 1", "layer 3"]
    assert ax.get_legend().get_title().get_text() == "activation layer\n(shallow → deep)"
    ax = fplot.gradient_flow(h, stat="saturated_fraction").axes[0]
    assert ax.get_ylim()[1] > 0  # all zeros still gives a usable range
    assert len(ax.get_lines()) == 2


def test_gradient_flow_history_errors():
    with pytest.raises(
        ValueError, match=r"no diagnostics: train with fit\(\.\.\., diagnostics=True\)"
    ):
        fplot.gradient_flow(make_history())
    h = add_diagnostics(make_history())
    with pytest.raises(
        ValueError,
        match=r"unknown stat 'grad'; this history recorded: 'grad_norm', 'weight_norm', "
        r"'update_ratio', 'dead_fraction', 'saturated_fraction'",
    ):
        fplot.gradient_flow(h, stat="grad")
    h.diagnostics["grad_norm"] = {"0.bias": [1.0]}
    with pytest.raises(ValueError, match="only biases .* include_bias=True"):
        fplot.gradient_flow(h)
    assert len(fplot.gradient_flow(h, include_bias=True).axes[0].get_lines()) == 1
    h.diagnostics["grad_norm"] = {"0.weight": []}
    with pytest.raises(ValueError, match="holds no epoch"):
        fplot.gradient_flow(h)


def test_gradient_flow_from_report():
    r = report()
    fig = fplot.gradient_flow(r)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "Gradient flow for one batch"
    assert ax.get_xlabel() == "parameter (input → output)"
    assert ax.get_ylabel() == "L2 norm (log scale)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.weight", "2.weight", "4.weight"]
    grad_bars = [p for p in ax.patches if p.get_gid() == "grad_norm"]
    weight_bars = [p for p in ax.patches if p.get_gid() == "weight_norm"]
    assert len(grad_bars) == len(weight_bars) == 3
    np.testing.assert_allclose([b.get_height() for b in grad_bars], [1e-6, 1e-4, 1e-2])
    np.testing.assert_allclose([b.get_height() for b in weight_bars], [1.0, 3.0, 5.0])
    assert legend_texts(ax.get_legend()) == [
        r"gradient norm $\|\nabla_{w} L\|_2$",
        r"weight norm $\|w\|_2$",
    ]
    captions = [t.get_text().replace("\n", " ") for t in ax.texts]
    assert captions == [r.verdict]
    # the smallest bar stays visible: the axis reaches below it
    assert ax.get_ylim()[0] < 1e-6


def test_gradient_flow_report_variants(tmp_path):
    ax = fplot.gradient_flow(report(verdict=None, weights=False), include_bias=True).axes[0]
    assert len(ax.patches) == 6
    assert all(p.get_gid() == "grad_norm" for p in ax.patches)
    assert len(ax.texts) == 0
    assert legend_texts(ax.get_legend()) == [r"gradient norm $\|\nabla_{w} L\|_2$"]
    path = tmp_path / "report.png"
    fplot.gradient_flow(report(), path=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(
        ValueError,
        match=r"unknown stat 'update_ratio' for a gradient-flow report; available: 'grad_norm', 'weight_norm'",
    ):
        fplot.gradient_flow(report(), stat="update_ratio")
    with pytest.raises(ValueError, match="grad_norm is empty"):
        fplot.gradient_flow(types.SimpleNamespace(grad_norm={}))


def test_gradient_flow_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    assert fplot.gradient_flow(report(), ax=ax) is fig
    assert ax.get_yscale() == "log"


def test_gradient_flow_type_errors():
    for bad in (42, {"grad_norm": {"0.weight": 1.0}}, types.SimpleNamespace(grad_norm=[1.0])):
        with pytest.raises(
            TypeError, match="expects a ferrograd.History .* or a gradient-flow report"
        ):
            fplot.gradient_flow(bad)
    with pytest.raises(TypeError, match="stat must be a str"):
        fplot.gradient_flow(report(), stat=None)


def test_matplotlib_global_state_untouched():
    before = dict(matplotlib.rcParams)
    fplot.history(make_history(lr=True))
    fplot.gradient_flow(add_diagnostics(make_history()))
    fplot.gradient_flow(report())
    assert dict(matplotlib.rcParams) == before


def test_history_into_an_array_of_axes():
    fig = Figure()
    axs = fig.subplots(1, 3)
    assert fplot.history(make_history(lr=True), ax=axs) is fig
    assert axs[2].get_yscale() == "log"

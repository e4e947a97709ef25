"""Figures of training runs: learning curves and gradient flow.

::

    import ferrograd as fg
    history = model.fit(x, y, "cross_entropy", opt, epochs=20,
                        validation_split=0.1, diagnostics=True)
    fg.plot.history(history, "curves.png")
    fg.plot.gradient_flow(history, "gradients.png")

Every function returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global state: it works headless, in threads and in tests) and
saves it when given a ``path`` (PNG, SVG, PDF, ... by the file's extension).
In Jupyter, a returned figure shows itself as the cell's result.

matplotlib is an optional dependency (``pip install 'ferrograd[plot]'``):
importing this module never needs it, calling its functions does.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .model import History

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["history", "gradient_flow"]

_MISSING = "fg.plot needs matplotlib: pip install 'ferrograd[plot]'"

# The look, set on each artist (never through matplotlib's global rcParams).
_TITLE_SIZE = 11.5
_LABEL_SIZE = 10.5
_TICK_SIZE = 9.5
_LEGEND_SIZE = 9.0
_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#ff7f0e"
_LR_COLOR = "#6a3d9a"
_BEST_COLOR = "#2ca02c"
_STOP_COLOR = "#d62728"
_WEIGHT_BAR_COLOR = "#b0b0b0"
_DPI = 150  # for raster files; vector formats ignore it

_LR_KEYS = ("learning_rate", "lr")
_PRETTY = {"loss": "Loss", "accuracy": "Accuracy", "learning_rate": "Learning rate"}

# statistic -> (title, y label, log scale)
_STATS: dict[str, tuple[str, str, bool]] = {
    "grad_norm": (
        "Gradient norm per parameter",
        r"gradient norm $\|\nabla_{w} L\|_2$",
        True,
    ),
    "weight_norm": ("Weight norm per parameter", r"weight norm $\|w\|_2$", True),
    "update_ratio": (
        "Relative update size per parameter",
        r"update ratio $\|\Delta w\|_2 \,/\, \|w\|_2$",
        True,
    ),
    "dead_fraction": (
        "Dead units per activation layer",
        "dead units (% of the layer)",
        False,
    ),
    "saturated_fraction": (
        "Saturated units per activation layer",
        "saturated units (% of the layer)",
        False,
    ),
}


def _matplotlib() -> Any:
    """``matplotlib.figure.Figure``, imported on first use."""
    try:
        import matplotlib  # noqa: F401  (checked first: a stale submodule must not mask its absence)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return Figure


def _root_figure(ax: Axes) -> Figure:
    fig: Any = ax.figure
    while getattr(fig, "figure", fig) is not fig:  # a SubFigure's figure is its parent
        fig = fig.figure
    return fig  # type: ignore[no-any-return]


def _style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=_TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=_LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=_LABEL_SIZE)
    ax.tick_params(labelsize=_TICK_SIZE)
    ax.grid(True, which="major", color="#d0d0d0", linewidth=0.6, alpha=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _epoch_axis(ax: Axes) -> None:
    """Whole epochs on the x axis, with room around a run of one or two."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs = [np.asarray(line.get_xdata(), dtype=float).ravel() for line in ax.get_lines()]
    if xs:
        lo, hi = float(np.min(np.concatenate(xs))), float(np.max(np.concatenate(xs)))
        if hi - lo < 2:
            ax.set_xlim(lo - 1, hi + 1)


def _save(fig: Figure, path: str | os.PathLike[str] | None) -> Figure:
    if path is not None:
        fig.savefig(os.fspath(path), dpi=_DPI)
    return fig


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _log_ready(values: Sequence[float]) -> list[float]:
    """Values for a log axis: non-positive and non-finite ones become gaps."""
    out = []
    for v in values:
        f = float(v) if v is not None else math.nan
        out.append(f if math.isfinite(f) and f > 0 else math.nan)
    return out


def _set_log(ax: Axes, values: Sequence[float]) -> None:
    """Log y scale; with nothing positive to show, a fixed range (so
    matplotlib has no reason to warn)."""
    ax.set_yscale("log")
    if not any(math.isfinite(v) for v in values):
        ax.set_ylim(1e-8, 1.0)


# --------------------------------------------------------------------- history


def _epochs_1based(hist: History, n: int) -> list[int]:
    """The x positions (1-based epochs) of a series of ``n`` values."""
    epochs = list(hist.epoch)
    if len(epochs) >= n:
        return [int(e) + 1 for e in epochs[:n]]
    start = int(epochs[0]) if epochs else 0
    return list(range(start + 1, start + n + 1))


def _panel_names(hist: History) -> list[str]:
    names: list[str] = []
    for key, values in hist.history.items():
        if not values:
            continue
        base = key[4:] if key.startswith("val_") else key
        if base in _LR_KEYS:
            base = "learning_rate"
        if base not in names:
            names.append(base)
    order = {"loss": 0, "learning_rate": 2}
    return sorted(names, key=lambda n: order.get(n, 1))  # stable: metrics keep their order


def _best_epoch(hist: History) -> tuple[int, str] | None:
    """The 0-based best epoch and why it is the best."""
    if hist.best_epoch is not None:
        return int(hist.best_epoch), "restored"
    for key in ("val_loss", "loss"):
        values = hist.history.get(key) or []
        finite = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
        if finite:
            i = min(finite)[1]
            return _epochs_1based(hist, len(values))[i] - 1, f"lowest {key}"
    return None


def _draw_panel(
    ax: Axes, hist: History, name: str, best: tuple[int, str] | None, legend: bool
) -> None:
    h = hist.history
    if name == "learning_rate":
        key = next(k for k in _LR_KEYS if h.get(k))
        series = [(key, "learning rate", _LR_COLOR, "o")]
        pretty = "Learning rate"
    else:
        series = []
        if h.get(name):
            series.append((name, "training", _TRAIN_COLOR, "o"))
        if h.get(f"val_{name}"):
            series.append((f"val_{name}", "validation", _VAL_COLOR, "s"))
        pretty = _PRETTY.get(name, name.replace("_", " ").capitalize())

    longest = max(len(h[k]) for k, *_ in series)
    show_markers = longest <= 40
    monitored: tuple[list[int], list[float]] | None = None
    plotted: list[float] = []
    for key, label, color, marker in series:
        ys = [float(v) for v in h[key]]
        if name == "learning_rate":
            ys = _log_ready(ys)
        xs = _epochs_1based(hist, len(ys))
        ax.plot(
            xs,
            ys,
            color=color,
            linewidth=1.6,
            marker=marker if show_markers else None,
            markersize=3.5,
            label=label,
            gid=key,
        )
        plotted += ys
        monitored = (xs, ys)  # the validation curve when there is one

    if best is not None:
        epoch, why = best
        ax.axvline(
            epoch + 1,
            color=_BEST_COLOR,
            linestyle="--",
            linewidth=1.1,
            label=f"best epoch {epoch + 1} ({why})",
            gid="best_epoch",
        )
        if monitored is not None and name != "learning_rate" and epoch + 1 in monitored[0]:
            y = monitored[1][monitored[0].index(epoch + 1)]
            ax.plot(
                [epoch + 1],
                [y],
                linestyle="none",
                marker="o",
                markersize=9,
                markerfacecolor="none",
                markeredgecolor=_BEST_COLOR,
                markeredgewidth=1.8,
                label="_best_marker",
                gid="best_marker",
                zorder=5,
            )
    if hist.stopped_epoch is not None:
        ax.axvline(
            int(hist.stopped_epoch) + 1,
            color=_STOP_COLOR,
            linestyle=":",
            linewidth=1.4,
            label=f"early stop after epoch {int(hist.stopped_epoch) + 1}",
            gid="stopped_epoch",
        )

    _epoch_axis(ax)
    if name == "learning_rate":
        _style(ax, "Learning rate schedule", "Epoch", "Learning rate (log scale)")
        _set_log(ax, plotted)
    else:
        both = len(series) == 2
        which = "Training and validation" if both else series[0][1].capitalize()
        _style(ax, f"{which} {pretty.lower()}", "Epoch", pretty)
    if legend:
        # a light box: the vertical markers span the panel, text must stay readable
        ax.legend(
            fontsize=_LEGEND_SIZE, loc="best", framealpha=0.85, edgecolor="none", fancybox=False
        )


def _shared_legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend above all the panels (the curves' roles and the markers
    are the same in each); the learning rate's panel title names its curve."""
    entries: dict[str, Any] = {}
    for a in axes:
        for line in a.get_lines():
            label = str(line.get_label())
            if not label.startswith("_") and line.get_gid() not in _LR_KEYS:
                entries.setdefault(label, line)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside upper center",
        ncol=len(entries),
        frameon=False,
        fontsize=_LEGEND_SIZE + 0.5,
    )


def history(
    history: History,
    path: str | os.PathLike[str] | None = None,
    metrics: str | Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Learning curves of a training run: one panel per quantity.

    Parameters
    ----------
    history:
        The :class:`~ferrograd.History` that :meth:`~ferrograd.Sequential.fit`
        returns.
    path:
        Where to save the figure (PNG, SVG, PDF, ... by the extension);
        ``None`` saves nothing.
    metrics:
        The panels to draw, in this order: ``"loss"``, a metric such as
        ``"accuracy"`` (``"val_accuracy"`` names the same panel),
        ``"learning_rate"``. ``None`` draws every recorded quantity: the
        loss first, then each metric, then the learning rate if it was
        recorded (with a scheduler).
    ax:
        Draw into existing axes instead of a new figure: one
        :class:`~matplotlib.axes.Axes` per panel (a single one for a single
        panel). The figure they belong to is returned (and saved).

    Each panel shows the training curve and, when there was validation data,
    the validation curve; the learning rate is on a log scale. Epochs are
    numbered from 1 on the x axis (``History.epoch`` counts from 0, as
    Keras): epoch 1 is the first epoch trained. A dashed vertical line marks
    the best epoch, with a ring on the (validation) curve: the epoch whose
    weights an :class:`~ferrograd.callbacks.EarlyStopping` restored
    (``history.best_epoch``), else the epoch of the lowest ``val_loss``, else
    of the lowest ``loss``. A dotted line marks an early stop
    (``history.stopped_epoch``).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ImportError
        Without matplotlib.
    TypeError
        If ``history`` is not a :class:`~ferrograd.History`.
    ValueError
        For a history with no recorded epoch, or an unknown panel name.
    """
    figure_cls = _matplotlib()
    if not isinstance(history, History):
        raise TypeError(
            "fg.plot.history expects a ferrograd.History (what Sequential.fit returns), "
            f"got {type(history).__name__}"
        )
    available = _panel_names(history)
    if not available:
        raise ValueError(
            "the history is empty: it has no recorded epoch "
            "(plot the History that fit returns after at least one epoch)"
        )
    if metrics is None:
        panels = available
    else:
        wanted = [metrics] if isinstance(metrics, str) else list(metrics)
        panels = []
        for m in wanted:
            if not isinstance(m, str):
                raise TypeError(f"metrics must be names (str), got {type(m).__name__}")
            base = m[4:] if m.startswith("val_") else m
            base = "learning_rate" if base in _LR_KEYS else base
            if base not in available:
                raise ValueError(
                    f"no {m!r} in the history; available: {', '.join(map(repr, available))}"
                )
            if base not in panels:
                panels.append(base)
        if not panels:
            raise ValueError(f"metrics is empty; available: {', '.join(map(repr, available))}")

    if ax is None:
        ncols = min(len(panels), 3)
        nrows = -(-len(panels) // ncols)
        fig = figure_cls(figsize=(4.6 * ncols, 3.5 * nrows), layout="constrained")
        axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(len(panels))]
    else:
        # one Axes, or several (a list, or the array Figure.subplots returns)
        axes = [ax] if hasattr(ax, "plot") else list(np.asarray(ax, dtype=object).ravel())
        if len(axes) != len(panels):
            raise ValueError(
                f"ax holds {len(axes)} axes for {len(panels)} panels ({', '.join(panels)})"
            )
        fig = _root_figure(axes[0])

    best = _best_epoch(history)
    shared = ax is None and len(panels) > 1
    for a, name in zip(axes, panels):
        _draw_panel(a, history, name, best, legend=not shared)
    if shared:
        _shared_legend(fig, axes)
    return _save(fig, path)


# --------------------------------------------------------------- gradient flow


def _depth_key(name: str) -> tuple[float, int, str]:
    """Orders parameter names by layer index ("2.weight" after "0.bias")."""
    head, _, tail = name.partition(".")
    index = float(head) if head.isdigit() else math.inf
    return index, {"weight": 0, "bias": 1}.get(tail, 2), name


def _keep(name: str, include_bias: bool) -> bool:
    return include_bias or not name.endswith("bias")


def _legend_outside(ax: Axes, title: str, n: int) -> None:
    ax.legend(
        title=title,
        title_fontsize=_LEGEND_SIZE,
        fontsize=_LEGEND_SIZE,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=max(1, -(-n // 18)),
    )


def _flow_from_history(
    figure_cls: Any, hist: History, stat: str, include_bias: bool, ax: Axes | None
) -> Figure:
    diag = hist.diagnostics
    if not diag:
        raise ValueError(
            "the history has no diagnostics: train with fit(..., diagnostics=True) "
            "to record the gradient statistics"
        )
    if stat not in diag:
        raise ValueError(
            f"unknown stat {stat!r}; this history recorded: {', '.join(map(repr, diag))}"
        )
    per_name = diag[stat]
    names = sorted((n for n, v in per_name.items() if v), key=_depth_key)
    if not names:
        raise ValueError(f"history.diagnostics[{stat!r}] holds no epoch")
    is_param = any("." in n for n in names)
    shown = [n for n in names if _keep(n, include_bias)] if is_param else names
    if not shown:
        raise ValueError(
            f"history.diagnostics[{stat!r}] has only biases ({', '.join(names)}); "
            "pass include_bias=True"
        )
    title, ylabel, log = _STATS.get(
        stat,
        (
            stat.replace("_", " ").capitalize(),
            stat.replace("_", " "),
            not stat.endswith("fraction"),
        ),
    )
    if not is_param:
        title = title.replace("per parameter", "per activation layer")

    if ax is None:
        width = 7.2 + 1.4 * max(0, -(-len(shown) // 18) - 1)
        fig = figure_cls(figsize=(width, 4.2), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = _root_figure(ax)

    from matplotlib import colormaps

    layers = sorted({_depth_key(n)[0] for n in shown})
    cmap = colormaps["viridis"]
    color_of = {
        depth: cmap(0.05 + 0.8 * (i / (len(layers) - 1) if len(layers) > 1 else 0.0))
        for i, depth in enumerate(layers)
    }
    longest = max(len(per_name[n]) for n in shown)
    plotted: list[float] = []
    for n in shown:
        ys = [float(v) for v in per_name[n]]
        if log:
            ys = _log_ready(ys)
        plotted += ys
        label = n if is_param else f"layer {n}"
        ax.plot(
            _epochs_1based(hist, len(ys)),
            ys,
            color=color_of[_depth_key(n)[0]],
            linestyle="--" if n.endswith("bias") else "-",
            linewidth=1.7,
            marker="o" if longest <= 40 else None,
            markersize=3.0,
            label=label,
            gid=n,
        )
    _epoch_axis(ax)
    _style(ax, f"{title} during training", "Epoch", ylabel + (" (log scale)" if log else ""))
    if log:
        _set_log(ax, plotted)
    elif stat.endswith("fraction"):
        from matplotlib.ticker import PercentFormatter

        top = max(0.05, min(1.0, max(_finite(plotted), default=0.0) * 1.15))
        ax.set_ylim(-0.02 * top, top)  # a line at 0 % stays visible above the axis
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    legend_title = (
        "parameter\n(shallow → deep)" if is_param else "activation layer\n(shallow → deep)"
    )
    _legend_outside(ax, legend_title, len(shown))
    return fig


def _flow_from_report(
    figure_cls: Any, report: Any, stat: str, include_bias: bool, ax: Axes | None
) -> Figure:
    grad: Mapping[str, float] = report.grad_norm
    weight: Mapping[str, float] | None = getattr(report, "weight_norm", None) or None
    verdict = getattr(report, "verdict", None)
    available = ["grad_norm"] + (["weight_norm"] if weight is not None else [])
    if stat not in available:
        raise ValueError(
            f"unknown stat {stat!r} for a gradient-flow report; available: "
            f"{', '.join(map(repr, available))} (other statistics come from a History "
            "trained with fit(..., diagnostics=True))"
        )
    if not grad:
        raise ValueError("the report's grad_norm is empty: no parameter to plot")
    names = [n for n in grad if _keep(n, include_bias)]
    if not names:
        raise ValueError(f"the report has only biases ({', '.join(grad)}); pass include_bias=True")

    if ax is None:
        width = min(14.0, max(6.4, 0.55 * len(names) * (2 if weight is not None else 1) + 2.5))
        fig = figure_cls(figsize=(width, 4.4), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = _root_figure(ax)

    xs = list(range(len(names)))
    bar_w = 0.4 if weight is not None else 0.65
    shift = bar_w / 2 if weight is not None else 0.0
    g = _log_ready([grad[n] for n in names])
    ax.bar(
        [x - shift for x in xs],
        g,
        width=bar_w,
        color=_TRAIN_COLOR,
        label=r"gradient norm $\|\nabla_{w} L\|_2$",
        gid="grad_norm",
        zorder=3,
    )
    plotted = list(g)
    if weight is not None:
        w = _log_ready([weight.get(n, math.nan) for n in names])
        ax.bar(
            [x + shift for x in xs],
            w,
            width=bar_w,
            color=_WEIGHT_BAR_COLOR,
            label=r"weight norm $\|w\|_2$",
            gid="weight_norm",
            zorder=3,
        )
        plotted += w
    ax.set_xticks(xs)
    rotate = len(names) > 6 or max(len(n) for n in names) > 10
    ax.set_xticklabels(
        names,
        rotation=40 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
    )
    _style(
        ax,
        "Gradient flow for one batch",
        "parameter (input → output)",
        "L2 norm (log scale)",
    )
    ax.grid(False, axis="x")
    _set_log(ax, plotted)
    low = min(_finite(v for v in plotted if v > 0), default=None)
    if low is not None:  # a decade of room under the smallest bar, so it stays visible
        ax.set_ylim(bottom=10 ** (math.floor(math.log10(low)) - 1))
    ax.legend(fontsize=_LEGEND_SIZE, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if verdict:
        chars = max(40, int(fig.get_figwidth() * 11))
        ax.annotate(
            textwrap.fill(str(verdict), chars),
            xy=(0.5, 0.0),
            xycoords=ax.xaxis.label,
            xytext=(0, -6),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=_LABEL_SIZE,
            style="italic",
            color="#333333",
            gid="verdict",
        )
    return fig


def gradient_flow(
    source: Any,
    path: str | os.PathLike[str] | None = None,
    stat: str = "grad_norm",
    include_bias: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """How gradients (or another per-layer statistic) flow through the network.

    Parameters
    ----------
    source:
        A :class:`~ferrograd.History` from ``fit(..., diagnostics=True)``:
        one line per parameter of ``history.diagnostics[stat]`` over the
        epochs (numbered from 1), log scale, coloured from dark (the first
        layer) to light (the last) with the viridis colormap. Or a
        gradient-flow report for one batch (an object with a ``grad_norm``
        dict of parameter name → gradient L2 norm, in layer order, and
        optionally ``weight_norm`` and a ``verdict`` sentence): a bar per
        parameter, log scale, weight norms beside the gradient norms when
        present, the verdict as a caption.
    path:
        Where to save the figure (PNG, SVG, PDF, ... by the extension).
    stat:
        For a History, the statistic: ``"grad_norm"`` (default),
        ``"weight_norm"``, ``"update_ratio"`` (per parameter, log scale),
        ``"dead_fraction"``, ``"saturated_fraction"`` (per activation layer,
        linear scale). A report holds ``"grad_norm"`` (and ``"weight_norm"``)
        only, and always shows both.
    include_bias:
        Also draw the biases (dashed, in their layer's colour); by default
        only the weights, named as in ``state_dict()`` (``"0.weight"``).
    ax:
        Draw into an existing :class:`~matplotlib.axes.Axes`; its figure is
        returned (and saved).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ImportError
        Without matplotlib.
    TypeError
        If ``source`` is neither a History nor a gradient-flow report.
    ValueError
        For a history trained without diagnostics, or an unknown ``stat``.
    """
    figure_cls = _matplotlib()
    if not isinstance(stat, str):
        raise TypeError(f"stat must be a str, got {type(stat).__name__}")
    if isinstance(source, History):
        fig = _flow_from_history(figure_cls, source, stat, include_bias, ax)
    elif isinstance(getattr(source, "grad_norm", None), Mapping):
        fig = _flow_from_report(figure_cls, source, stat, include_bias, ax)
    else:
        raise TypeError(
            "fg.plot.gradient_flow expects a ferrograd.History (from fit(..., diagnostics=True)) "
            f"or a gradient-flow report (an object with a grad_norm dict), got {type(source).__name__}"
        )
    return _save(fig, path)

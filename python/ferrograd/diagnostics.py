"""Backpropagation made visible: how the gradient flows back through a model.

Two ways to look, both computed in Rust:

- ``model.fit(..., diagnostics=True)`` records, at every step, and stores the
  per-epoch means in ``history.diagnostics``::

      {"grad_norm":    {"0.weight": [...], "0.bias": [...], ...},
       "weight_norm":  {...},
       "update_ratio": {...},
       "dead_fraction":      {"1": [...]},    # per ReLU layer
       "saturated_fraction": {"3": [...]}}    # per sigmoid/tanh layer

- :func:`gradient_flow` reports the same for one batch, as a table with a
  plain-words verdict, without changing the model.

Definitions
-----------
grad_norm
    The L2 norm of a parameter's gradient as backprop computed it (before any
    clipping).
weight_norm
    The L2 norm of the parameter's values (before the step's update).
update_ratio
    ``||w_after - w_before|| / ||w_before||`` for the step: around 1e-3 is
    the usual healthy scale; far below it the parameter barely learns, far
    above it training is unstable. NaN where the weights are all zero
    (a bias at initialisation).
dead_fraction
    Per ReLU layer, the fraction of its units (features of a vector, channels
    of an image or signal) whose output is 0 for every sample of the batch
    (and every position): such a unit passes no gradient back. Per batch, so
    a unit that is rarely active can count as dead in some batches.
saturated_fraction
    Per sigmoid or tanh layer, the fraction of its outputs within
    ``SATURATION`` (0.01) of the asymptotes (sigmoid below 0.01 or above
    0.99, tanh beyond +-0.99), where the derivative is under 4% (sigmoid) or
    2% (tanh) of its largest value.

The verdict of :func:`gradient_flow` compares the gradient norms of the
first and the last weight (parameters named ``*.weight``, in layer order):
*vanishing* when the first is below ``VANISHING`` (1e-2) of the last,
*exploding* when above ``EXPLODING`` (1e2) times it, otherwise *healthy*;
layers with more than ``DEAD_WARN`` (50%) dead or saturated units are named.
Collecting diagnostics in ``fit`` costs a few percent of an epoch (measured in
``BENCHMARKS.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from . import losses
from .model import BaseModel

__all__ = [
    "gradient_flow",
    "GradientFlowReport",
    "VANISHING",
    "EXPLODING",
    "DEAD_WARN",
    "SATURATION",
]

#: Below this ratio of first to last layer gradient norm, gradients vanish.
VANISHING = 1e-2
#: Above this ratio of first to last layer gradient norm, gradients explode.
EXPLODING = 1e2
#: A layer with more than this fraction of dead or saturated units is named.
DEAD_WARN = 0.5
#: Distance from a sigmoid/tanh asymptote that counts as saturated.
SATURATION = 0.01


class GradientFlowReport:
    """What :func:`gradient_flow` returns.

    Attributes
    ----------
    grad_norm, weight_norm:
        ``{parameter name: L2 norm}``, in the model's order.
    dead_fraction, saturated_fraction:
        ``{layer index (str): fraction}`` for ReLU, and sigmoid/tanh, layers.
    layers:
        ``{layer index (str): layer repr}`` for the names in the table.
    verdict:
        One plain-words sentence (see the module's documentation).
    """

    def __init__(
        self,
        grad_norm: Mapping[str, float],
        weight_norm: Mapping[str, float],
        dead_fraction: Mapping[str, float],
        saturated_fraction: Mapping[str, float],
        layers: Mapping[str, str],
    ) -> None:
        self.grad_norm = dict(grad_norm)
        self.weight_norm = dict(weight_norm)
        self.dead_fraction = dict(dead_fraction)
        self.saturated_fraction = dict(saturated_fraction)
        self.layers = dict(layers)
        self.verdict = _verdict(self)

    def table(self) -> str:
        """The report as a fixed-width text table."""
        rows = [("parameter", "layer", "grad norm", "weight norm", "grad/weight")]
        for name, g in self.grad_norm.items():
            w = self.weight_norm.get(name, math.nan)
            ratio = f"{g / w:.3e}" if w else "-"
            layer = self.layers.get(name.rsplit(".", 1)[0], "")
            rows.append((name, layer, f"{g:.3e}", f"{w:.3e}", ratio))
        for key, what in ((self.dead_fraction, "dead"), (self.saturated_fraction, "saturated")):
            for layer, f in key.items():
                rows.append(
                    (f"layer {layer}", self.layers.get(layer, ""), "", "", f"{f:.0%} {what}")
                )
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = []
        for i, r in enumerate(rows):
            lines.append(
                "  ".join(
                    cell.ljust(widths[c]) if c < 2 else cell.rjust(widths[c])
                    for c, cell in enumerate(r)
                ).rstrip()
            )
            if i == 0:
                lines.append("-" * len(lines[0]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.table()}\n\n{self.verdict}"

    def __repr__(self) -> str:
        return f"GradientFlowReport(verdict={self.verdict!r})"


def _verdict(r: GradientFlowReport) -> str:
    weights = [(n, g) for n, g in r.grad_norm.items() if n.endswith(".weight")]
    if not weights:
        return "no weights to judge: the model has no parameters named '*.weight'"
    bad = [n for n, g in weights if not math.isfinite(g)]
    if bad:
        return (
            f"non-finite gradients in {', '.join(bad)}: lower the learning rate or check the data"
        )
    (first, g0), (last, g1) = weights[0], weights[-1]
    notes = []
    for fracs, what in ((r.dead_fraction, "dead"), (r.saturated_fraction, "saturated")):
        for layer, f in fracs.items():
            if f > DEAD_WARN:
                kind = r.layers.get(layer, "")
                name = f"layer {layer} ({kind})" if kind else f"layer {layer}"
                notes.append(f"{name} has {f:.0%} of its units {what}")
    tail = ("; " + "; ".join(notes)) if notes else ""
    if g1 == 0.0 and g0 == 0.0:
        return "no gradient: every weight's gradient is zero" + tail
    if len(weights) == 1:
        return f"one weight only ({first}): nothing to compare" + tail
    if g1 == 0.0:
        return f"the last weight's ({last}) gradient is zero" + tail
    ratio = g0 / g1
    if ratio < VANISHING:
        return (
            f"vanishing: the first layer's gradient norm is {ratio:.1g} of the last "
            f"layer's ({first}: {g0:.2e}, {last}: {g1:.2e})" + tail
        )
    if ratio > EXPLODING:
        return (
            f"exploding: the first layer's gradient norm is {ratio:.3g}x the last "
            f"layer's ({first}: {g0:.2e}, {last}: {g1:.2e})" + tail
        )
    return (
        f"healthy: the first layer's gradient norm is {ratio:.3g}x the last layer's "
        f"(within {VANISHING:g}..{EXPLODING:g})" + tail
    )


def gradient_flow(
    model: BaseModel,
    X: Any,
    y: Any,
    loss: str | losses.Loss,
    sample_weight: Any = None,
) -> GradientFlowReport:
    """Per-parameter gradient and weight norms, and dead or saturated units,
    of one training-mode pass over ``X`` as one batch (e.g. 256 samples).

    Dropout uses one fixed mask and BatchNorm the batch's statistics; nothing
    is updated: weights, gradients, running statistics and the random state
    stay as they were. ``print(report)`` shows the table and the verdict;
    :func:`ferrograd.plot.gradient_flow` draws it.
    """
    if not isinstance(model, BaseModel):
        raise TypeError(
            f"model must be a ferrograd.Sequential or Model, got {type(model).__name__}"
        )
    loss_fn, spec = model._loss(loss)
    xa, ya = model._prepare(X, y, loss_fn, "X")
    sw = model._sample_weights(xa, ya, None, sample_weight)
    d = model._core.diagnose(xa, ya, spec, sw)
    units = model._layer_calls()  # (name, type) of each layer (call), as the engine counts them
    layers = dict(units)
    grad = {name: g for name, g, _w, _r in d["params"]}
    weight = {name: w for name, _g, w, _r in d["params"]}
    dead = {units[i][0]: f for i, kind, f in d["activations"] if kind == "dead"}
    sat = {units[i][0]: f for i, kind, f in d["activations"] if kind == "saturated"}
    return GradientFlowReport(grad, weight, dead, sat, layers)

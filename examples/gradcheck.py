"""Check backpropagation against finite differences, layer by layer.

For each layer type ferrograd has, a small float64 model is built around it
and ``fg.gradcheck`` compares every analytic gradient element with a central
finite difference. Below 1e-6 relative error is a pass. Then a deliberately
wrong gradient (a loss whose backward is off by 10%) shows what a failure
looks like::

    python examples/gradcheck.py            # a few seconds
    python examples/gradcheck.py --quick
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import _common
import ferrograd as fg
from ferrograd import layers as L

TOLERANCE = 1e-6


def cases() -> dict[str, tuple[list[fg.layers.Layer], tuple[int, ...], str, int]]:
    """name -> (layers, per-sample input shape, loss, outputs)."""
    return {
        "Dense+Tanh": ([L.Dense(5, 7), L.Tanh(), L.Dense(7, 3)], (5,), "cross_entropy", 3),
        "Sigmoid+GELU": (
            [L.Dense(4, 6), L.Sigmoid(), L.Dense(6, 6), L.GELU(), L.Dense(6, 2)],
            (4,),
            "mse",
            2,
        ),
        "LeakyReLU+BCE": (
            [L.Dense(4, 6), L.LeakyReLU(0.1), L.Dense(6, 1)],
            (4,),
            "binary_cross_entropy",
            1,
        ),
        "Conv2D+MaxPool": (
            [L.Conv2D(2, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(48, 3)],
            (2, 8, 8),
            "cross_entropy",
            3,
        ),
        "Conv2D stride/dilation+AvgPool": (
            [
                L.Conv2D(1, 2, 3, stride=2, dilation=2, padding=2),
                L.AvgPool2D(2),
                L.Flatten(),
                L.Dense(8, 2),
            ],
            (1, 9, 9),
            "mse",
            2,
        ),
        "Conv1D+pools": (
            [
                L.Conv1D(2, 3, 3, padding="same"),
                L.Tanh(),
                L.MaxPool1D(2),
                L.AvgPool1D(2),
                L.Flatten(),
                L.Dense(6, 2),
            ],
            (2, 8),
            "cross_entropy",
            2,
        ),
        "BatchNorm2D+GlobalAvgPool": (
            [L.Conv2D(2, 4, 3), L.BatchNorm2D(4), L.Tanh(), L.GlobalAvgPool2D(), L.Dense(4, 3)],
            (2, 6, 6),
            "cross_entropy",
            3,
        ),
        "BatchNorm1D+Softmax": (
            [L.Dense(4, 5), L.BatchNorm1D(5), L.Tanh(), L.Dense(5, 3), L.Softmax()],
            (4,),
            "mse",
            3,
        ),
    }


def target(loss: str, n: int, outputs: int, rng: np.random.Generator) -> np.ndarray:
    """Random targets for ``loss`` on ``outputs`` outputs."""
    if loss == "cross_entropy":
        return rng.integers(0, outputs, size=n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, size=(n, outputs)).astype(np.float64)
    return rng.standard_normal((n, outputs))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Runs the example; returns the worst relative error per case."""
    args = _common.parser(__doc__ or "").parse_args(argv)
    rng = np.random.default_rng(args.seed)
    worst: dict[str, float] = {}
    print(f"{'case':32s} {'parameters':>10s} {'worst rel. error':>17s}")
    n = 4 if args.quick else 8
    for name, (layers, shape, loss, outputs) in cases().items():
        model = fg.Sequential(layers, dtype="float64", seed=args.seed)
        x = rng.standard_normal((n, *shape))
        y = target(loss, n, outputs, rng)
        errors = fg.gradcheck(model, loss, x, y)
        worst[name] = max(errors.values())
        verdict = "pass" if worst[name] < TOLERANCE else "FAIL"
        print(f"{name:32s} {model.num_params():10d} {worst[name]:17.2e}  {verdict}")

    # A wrong gradient: scale the loss's dloss/doutput by 1.1 in a custom
    # loop and compare with finite differences of the true loss by hand.
    model = fg.Sequential([L.Dense(3, 4), L.Tanh(), L.Dense(4, 2)], dtype="float64", seed=args.seed)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    mse = fg.losses.MSE()
    mse(model.forward(x, training=True), y)
    model.zero_grad()
    model.backward(1.1 * mse.backward())
    w = model.parameters()[0]
    analytic = w.grad.copy()
    numeric = np.zeros_like(analytic)
    value = w.value
    eps = 1e-6
    for idx in np.ndindex(*value.shape):
        for sign in (1, -1):
            v = value.copy()
            v[idx] += sign * eps
            w.value = v
            numeric[idx] += sign * mse(model.forward(x, training=False), y) / (2 * eps)
    w.value = value
    wrong = float(np.max(np.abs(analytic - numeric) / np.maximum(np.abs(numeric), 1e-12)))
    print(f"{'a gradient 10% too large':32s} {w.value.size:10d} {wrong:17.2e}  (caught: > 1e-6)")
    worst["wrong_gradient"] = wrong
    return worst


if __name__ == "__main__":
    main()

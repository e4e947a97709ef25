"""Layers for :class:`ferrograd.Sequential`.

Layers here are light descriptions (with PyTorch's argument names); the
model compiles them into the Rust engine, which owns the parameters. The
class names and ``state_dict`` keys match ``torch.nn`` (``Dense`` is
``torch.nn.Linear``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "Layer",
    "Dense",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "GELU",
    "Softmax",
    "Dropout",
    "Flatten",
    "Rescaling",
]

_INITS = ("he", "xavier", "lecun", "zeros")


def _positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return value


def _finite_float(name: str, value: Any, owner: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be finite, got {v}")
    return v


class Layer:
    """Base class of all layers."""

    #: Name of the Rust layer this describes.
    kind: str = ""

    def _config(self) -> dict[str, Any]:
        return {}

    def _spec(self) -> tuple[str, dict[str, Any]]:
        return (self.kind, self._config())

    def num_params(self) -> int:
        """Number of trainable scalars in this layer."""
        return 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._spec() == other._spec()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self))


class Dense(Layer):
    """Fully connected layer ``y = x W^T + b`` (``torch.nn.Linear``).

    Parameters
    ----------
    in_features, out_features:
        Sizes of each input and output sample (the last dimension).
    bias:
        Whether to learn an additive bias.
    init:
        Weight initialisation: ``"he"`` (Kaiming normal, std ``sqrt(2/in)``,
        for ReLU networks; the default), ``"xavier"`` (Glorot uniform),
        ``"lecun"`` (normal, std ``sqrt(1/in)``) or ``"zeros"``. Biases start
        at zero.

    The weight has shape ``(out_features, in_features)`` as in PyTorch.
    """

    kind = "Dense"

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, init: str = "he"
    ) -> None:
        self.in_features = _positive_int("in_features", in_features, "Dense")
        self.out_features = _positive_int("out_features", out_features, "Dense")
        self.bias = bool(bias)
        if init not in _INITS:
            raise ValueError(f"Dense: unknown init {init!r}; expected one of {', '.join(_INITS)}")
        self.init = init

    def _config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "init": self.init,
        }

    def num_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


class ReLU(Layer):
    """``max(x, 0)``."""

    kind = "ReLU"


class LeakyReLU(Layer):
    """``x`` for ``x > 0``, else ``negative_slope * x``."""

    kind = "LeakyReLU"

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = _finite_float("negative_slope", negative_slope, "LeakyReLU")

    def _config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``."""

    kind = "Sigmoid"


class Tanh(Layer):
    """Hyperbolic tangent."""

    kind = "Tanh"


class GELU(Layer):
    """Gaussian error linear unit, exact form ``x * Phi(x)`` (torch's default)."""

    kind = "GELU"


class Softmax(Layer):
    """Softmax over the last dimension (``torch.nn.Softmax(dim=-1)``).

    For classification train on logits with ``CrossEntropy`` instead, which
    fuses a stable log-softmax; use this layer for probabilities at the end.
    """

    kind = "Softmax"


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``p``
    and scale the rest by ``1 / (1 - p)``; the identity in evaluation."""

    kind = "Dropout"

    def __init__(self, p: float = 0.5) -> None:
        p = _finite_float("p", p, "Dropout")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def _config(self) -> dict[str, Any]:
        return {"p": self.p}


class Flatten(Layer):
    """Flattens each sample to one dimension: ``(N, d1, d2, ...) -> (N, d1*d2*...)``."""

    kind = "Flatten"


class Rescaling(Layer):
    """``x * scale + offset`` with fixed values, like Keras' ``Rescaling``.

    ``Rescaling(1/255)`` lets uint8 images be passed as they are: they are
    converted batch by batch instead of as a whole float copy.
    """

    kind = "Rescaling"

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        self.scale = _finite_float("scale", scale, "Rescaling")
        self.offset = _finite_float("offset", offset, "Rescaling")

    def _config(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}

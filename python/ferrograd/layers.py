"""Layers for :class:`ferrograd.Sequential`.

Layers here are light descriptions (with PyTorch's argument names); the
model compiles them into the Rust engine, which owns the parameters. The
class names and ``state_dict`` keys match ``torch.nn`` (``Dense`` is
``torch.nn.Linear``).

Each class checks the *types* of its arguments; the values (sizes >= 1,
probabilities in range, known names) are checked once, by the engine, when
the layer is created, so a bad value raises a ``ValueError`` right away.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import _core

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


def _int(name: str, value: Any, owner: str) -> int:
    """``value`` as an int (Python or numpy integer, not a bool)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    return int(value.__index__())


def _number(name: str, value: Any, owner: str) -> float:
    """``value`` as a float (any real number; the engine checks its range)."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a number, got a bool")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}") from None


def _json_value(v: Any) -> Any:
    """JSON has no NaN or infinity: send them as strings the engine reads
    (and then refuses with a message naming the argument)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


class Layer:
    """Base class of all layers."""

    #: Name of the Rust layer this describes.
    kind: str = ""

    def _config(self) -> dict[str, Any]:
        return {}

    def _spec(self) -> str:
        """The layer as the engine reads it: a JSON object."""
        config = {k: _json_value(v) for k, v in self._config().items()}
        return json.dumps({"type": self.kind, **config})

    def _check(self) -> None:
        """Has the engine check the values (raises ``ValueError``)."""
        _core.check_layer(self._spec())

    def num_params(self) -> int:
        """Number of trainable scalars in this layer."""
        return 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._spec() == other._spec()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._spec())


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
        self.in_features = _int("in_features", in_features, "Dense")
        self.out_features = _int("out_features", out_features, "Dense")
        self.bias = bool(bias)
        self.init = init
        self._check()

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
        self.negative_slope = _number("negative_slope", negative_slope, "LeakyReLU")
        self._check()

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
        self.p = _number("p", p, "Dropout")
        self._check()

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
        self.scale = _number("scale", scale, "Rescaling")
        self.offset = _number("offset", offset, "Rescaling")
        self._check()

    def _config(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}

"""Loss functions (mean reduction), computed in Rust.

Each loss is callable as ``value = loss(output, target)`` and keeps the
gradient of that value with respect to ``output`` for :meth:`Loss.backward`,
so a custom loop reads like PyTorch::

    out = model.forward(x, training=True)
    value = loss_fn(out, y)
    model.backward(loss_fn.backward())
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from . import _core
from ._data import as_target, untorch

__all__ = ["Loss", "MSE", "CrossEntropy", "BinaryCrossEntropy", "get"]


def _weights(name: str, value: Any, owner: str) -> list[float] | None:
    """A 1-d sequence of numbers as floats (the engine checks the values)."""
    if value is None:
        return None
    value = untorch(value)
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "biuf":
        raise TypeError(f"{owner}: {name} must be a 1-d sequence of numbers, got {value!r}")
    return [float(v) for v in arr]


def _json_float(v: float) -> Any:
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


class Loss:
    """Base class: a named loss with value and gradient in one Rust pass."""

    #: The name the engine knows this loss by.
    name: str = ""

    def __init__(self) -> None:
        self._grad: np.ndarray | None = None
        self.last_accuracy: float | None = None

    def _options(self) -> dict[str, Any]:
        return {}

    def _spec(self) -> str:
        """The loss as the engine reads it: its name, or a JSON configuration."""
        options = self._options()
        if not options:
            return self.name
        return json.dumps({"kind": self.name, **options})

    def __call__(self, output: np.ndarray, target: np.ndarray, sample_weight: Any = None) -> float:
        """Mean loss of ``output`` (float32/float64 array) against ``target``,
        each sample's term multiplied by ``sample_weight`` when given (the
        mean divides by what it would without weights).

        Also stores ``dloss/doutput`` for :meth:`backward` and the batch
        accuracy (where defined) in :attr:`last_accuracy`.
        """
        if not isinstance(output, np.ndarray) or output.dtype not in (np.float32, np.float64):
            raise TypeError("output must be a float32 or float64 numpy array (a model output)")
        output = np.ascontiguousarray(output)
        y = as_target(target, self.name, output.dtype, len(output))
        sw = None
        if sample_weight is not None:
            sw = np.require(np.asarray(sample_weight, dtype=output.dtype), requirements=["C", "A"])
        value, acc, grad = _core.loss_value(self._spec(), output, y, True, sw)
        self._grad = grad
        self.last_accuracy = acc
        return float(value)

    def backward(self) -> np.ndarray:
        """The gradient of the last computed value with respect to the output."""
        if self._grad is None:
            raise _core.StateError(f"{type(self).__name__}.backward() needs a preceding call")
        return self._grad

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Loss) and other._spec() == self._spec()

    def __hash__(self) -> int:
        return hash(self._spec())


class MSE(Loss):
    """Mean squared error over all elements (``torch.nn.MSELoss``)."""

    name = "mse"


class CrossEntropy(Loss):
    """Softmax cross-entropy from logits (``torch.nn.CrossEntropyLoss``).

    Targets are integer class labels of shape ``(N,)`` or class
    probabilities of the output's shape ``(N, C)``. The log-softmax is
    fused, so large logits are safe.

    Parameters
    ----------
    weight:
        A weight per class (``C`` non-negative numbers), as torch's: each
        sample's term is multiplied by its class's weight and, for labels,
        the mean divides by the summed weights of the batch's labels (for
        probability targets, by the number of samples).
    label_smoothing:
        ``s`` in ``[0, 1]``: the target becomes ``(1 - s) * target + s / C``
        (labels as one-hot), as torch's.
    """

    name = "cross_entropy"

    def __init__(self, weight: Any = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = _weights("weight", weight, "CrossEntropy")
        if isinstance(label_smoothing, bool) or not isinstance(
            label_smoothing, (int, float, np.number)
        ):
            raise TypeError(
                f"CrossEntropy: label_smoothing must be a number, got {label_smoothing!r}"
            )
        self.label_smoothing = float(label_smoothing)
        _core.check_loss(self._spec())

    def _options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.weight is not None:
            out["weight"] = [_json_float(w) for w in self.weight]
        if self.label_smoothing != 0.0:
            out["label_smoothing"] = _json_float(self.label_smoothing)
        return out


class BinaryCrossEntropy(Loss):
    """Sigmoid binary cross-entropy from logits (``torch.nn.BCEWithLogitsLoss``).

    Targets in ``[0, 1]`` of the output's shape. Mean over all elements.

    Parameters
    ----------
    pos_weight:
        The weight of positive examples, one per output column (torch's
        ``pos_weight``): ``-[p * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x))]``.
    """

    name = "binary_cross_entropy"

    def __init__(self, pos_weight: Any = None) -> None:
        super().__init__()
        self.pos_weight = _weights("pos_weight", pos_weight, "BinaryCrossEntropy")
        _core.check_loss(self._spec())

    def _options(self) -> dict[str, Any]:
        if self.pos_weight is None:
            return {}
        return {"pos_weight": [_json_float(w) for w in self.pos_weight]}


_BY_NAME = {cls.name: cls for cls in (MSE, CrossEntropy, BinaryCrossEntropy)}
_ALIASES = {
    "mean_squared_error": "mse",
    "crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "bce": "binary_cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
}


def get(loss: str | Loss) -> Loss:
    """A loss from an instance, a class, or a name (``"mse"``,
    ``"cross_entropy"``, ``"binary_cross_entropy"``)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss) and loss is not Loss:
        return loss()
    if isinstance(loss, str):
        key = _ALIASES.get(loss.lower(), loss.lower())
        if key in _BY_NAME:
            return _BY_NAME[key]()
        raise ValueError(
            f"unknown loss {loss!r}; expected one of {', '.join(repr(k) for k in _BY_NAME)}"
        )
    raise TypeError(f"loss must be a name or a ferrograd.losses.Loss, got {type(loss).__name__}")

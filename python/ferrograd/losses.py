"""Loss functions (mean reduction), computed in Rust.

Each loss is callable as ``value = loss(output, target)`` and keeps the
gradient of that value with respect to ``output`` for :meth:`Loss.backward`,
so a custom loop reads like PyTorch::

    out = model.forward(x, training=True)
    value = loss_fn(out, y)
    model.backward(loss_fn.backward())
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._data import as_target

__all__ = ["Loss", "MSE", "CrossEntropy", "BinaryCrossEntropy", "get"]


class Loss:
    """Base class: a named loss with value and gradient in one Rust pass."""

    #: The name the engine knows this loss by.
    name: str = ""

    def __init__(self) -> None:
        self._grad: np.ndarray | None = None
        self.last_accuracy: float | None = None

    def __call__(self, output: np.ndarray, target: np.ndarray) -> float:
        """Mean loss of ``output`` (float32/float64 array) against ``target``.

        Also stores ``dloss/doutput`` for :meth:`backward` and the batch
        accuracy (where defined) in :attr:`last_accuracy`.
        """
        if not isinstance(output, np.ndarray) or output.dtype not in (np.float32, np.float64):
            raise TypeError("output must be a float32 or float64 numpy array (a model output)")
        output = np.ascontiguousarray(output)
        y = as_target(target, self.name, output.dtype, len(output))
        value, acc, grad = _core.loss_value(self.name, output, y, True)
        self._grad = grad
        self.last_accuracy = acc
        return float(value)

    def backward(self) -> np.ndarray:
        """The gradient of the last computed value with respect to the output."""
        if self._grad is None:
            raise _core.StateError(f"{type(self).__name__}.backward() needs a preceding call")
        return self._grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Loss) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class MSE(Loss):
    """Mean squared error over all elements (``torch.nn.MSELoss``)."""

    name = "mse"


class CrossEntropy(Loss):
    """Softmax cross-entropy from logits (``torch.nn.CrossEntropyLoss``).

    Targets are integer class labels of shape ``(N,)`` or class
    probabilities of the output's shape ``(N, C)``. Mean over samples. The
    log-softmax is fused, so large logits are safe.
    """

    name = "cross_entropy"


class BinaryCrossEntropy(Loss):
    """Sigmoid binary cross-entropy from logits (``torch.nn.BCEWithLogitsLoss``).

    Targets in ``[0, 1]`` of the output's shape. Mean over all elements.
    """

    name = "binary_cross_entropy"


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

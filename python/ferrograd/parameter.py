"""``Parameter``: a view of one model parameter, the handle optimizers and
``clip_grad_norm_`` take. It sits below the optimizers and the model, and
imports neither (it knows its model only through a weak reference)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import BaseModel

__all__ = ["Parameter"]


class Parameter:
    """A view of one model parameter, named as in ``torch.nn``'s ``state_dict``.

    ``value`` and ``grad`` return numpy copies in ``state_dict`` layout
    (e.g. ``(out_features, in_features)`` for a weight); assigning ``value``
    writes into the model.
    """

    def __init__(self, model: BaseModel, index: int, name: str, shape: tuple[int, ...]):
        # The engine's model strongly, the Sequential weakly: a model and its
        # parameters form no reference cycle, so dropping the model frees it.
        self._core = model._core
        self._ref = weakref.ref(model)
        self._dtype = model.dtype
        self._index = index
        self.name = name
        self.shape = shape

    @property
    def _model(self) -> BaseModel:
        model = self._ref()
        if model is None:
            raise ReferenceError(f"the model of parameter {self.name!r} was freed")
        return model

    @property
    def value(self) -> np.ndarray:
        """A copy of the parameter's values."""
        return self._core.get_param(self._index)

    @value.setter
    def value(self, new: Any) -> None:
        model = self._model
        model.load_state_dict({**model.state_dict(), self.name: new})

    @property
    def grad(self) -> np.ndarray:
        """A copy of the accumulated gradient (zero until a backward pass)."""
        return self._core.get_grad(self._index)

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self._dtype})"

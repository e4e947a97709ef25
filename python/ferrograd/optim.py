"""Optimizers with ``torch.optim``'s update equations, run in Rust.

Build one from a model's parameters, as in PyTorch::

    opt = fg.optim.Adam(model.parameters(), lr=1e-3)

Each optimizer updates all of its parameters in one parallel pass. Its
hyper-parameters are checked on construction; ``lr`` can be changed
between steps (``opt.lr = 0.01``) for schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:
    from .model import Parameter, Sequential

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "get", "lr_scheduler"]


def _num(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a number, got a bool")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {v!r}") from None


class Optimizer:
    """Base class. Subclasses set :attr:`kind` and build the config."""

    kind: str = ""

    def __init__(self, params: Iterable[Any], config: dict[str, Any]) -> None:
        from .model import Parameter

        plist: list[Parameter] = []
        for p in params:
            if isinstance(p, tuple) and len(p) == 2:  # named_parameters()
                p = p[1]
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} expects model.parameters(), got an item of type "
                    f"{type(p).__name__}"
                )
            plist.append(p)
        if not plist:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        model = plist[0]._model
        if any(p._model is not model for p in plist):
            raise ValueError("all parameters of one optimizer must belong to the same model")
        self.params = plist
        self.defaults = dict(config)
        self._model: Sequential = model
        self._core = _core.Optimizer(model._core, self.kind, config, [p._index for p in plist])

    def step(self) -> None:
        """Updates the parameters from their current gradients."""
        self._core.step()

    def zero_grad(self) -> None:
        """Sets the gradients of the model these parameters belong to to zero."""
        self._model.zero_grad()

    @property
    def lr(self) -> float:
        """The learning rate; assign to change it between steps (a schedule
        may set it to 0; negative or non-finite values are refused)."""
        return self._core.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._core.lr = _num("lr", value)
        self.defaults["lr"] = self._core.lr

    @property
    def momentum(self) -> float:
        """The momentum schedules cycle (``OneCycleLR``): SGD's and RMSprop's
        ``momentum``, Adam's and AdamW's ``beta1``; assign to change it."""
        return self._core.momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._core.momentum = _num("momentum", value)
        if "beta1" in self.defaults:
            self.defaults["beta1"] = self._core.momentum
        else:
            self.defaults["momentum"] = self._core.momentum

    @property
    def steps(self) -> int:
        """Number of steps taken."""
        return self._core.steps

    def reset(self) -> None:
        """Forgets the step count and all state (momentum buffers, moments)."""
        self._core.reset()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``::

    g = grad + weight_decay * p
    b = g (first step) | momentum * b + (1 - dampening) * g
    g = g + momentum * b (nesterov) | b (momentum > 0)
    p = p - lr * g
    """

    kind = "SGD"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": _num("lr", lr),
                "momentum": _num("momentum", momentum),
                "dampening": _num("dampening", dampening),
                "nesterov": bool(nesterov),
                "weight_decay": _num("weight_decay", weight_decay),
            },
        )


def _adam_config(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> dict[str, Any]:
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    return {
        "lr": _num("lr", lr),
        "beta1": _num("beta1", b1),
        "beta2": _num("beta2", b2),
        "eps": _num("eps", eps),
        "weight_decay": _num("weight_decay", weight_decay),
    }


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (weight decay as an L2 term)::

    g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    kind = "Adam"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, _adam_config(lr, betas, eps, weight_decay))


class AdamW(Optimizer):
    """AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay
    (``p = p * (1 - lr * weight_decay)`` before the Adam update)."""

    kind = "AdamW"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, _adam_config(lr, betas, eps, weight_decay))


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``::

    g = grad + weight_decay * p
    v = alpha * v + (1 - alpha) * g^2
    avg = sqrt(v - ga^2) + eps (centered, ga = running mean of g) | sqrt(v) + eps
    b = momentum * b + g / avg;  p = p - lr * b   (momentum > 0)
    p = p - lr * g / avg                            (otherwise)
    """

    kind = "RMSprop"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": _num("lr", lr),
                "alpha": _num("alpha", alpha),
                "eps": _num("eps", eps),
                "momentum": _num("momentum", momentum),
                "weight_decay": _num("weight_decay", weight_decay),
                "centered": bool(centered),
            },
        )


_BY_NAME: dict[str, Callable[[Iterable[Any]], Optimizer]] = {
    "sgd": lambda params: SGD(params, lr=0.01),
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def get(optimizer: str | Optimizer, params: Iterable[Parameter]) -> Optimizer:
    """An optimizer instance, or one built by name with default settings
    (``"sgd"`` uses ``lr=0.01``)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        make = _BY_NAME.get(optimizer.lower())
        if make is None:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; expected one of {', '.join(_BY_NAME)}"
            )
        return make(params)
    raise TypeError(
        f"optimizer must be a name or a ferrograd.optim.Optimizer, got {type(optimizer).__name__}"
    )


from . import lr_scheduler  # noqa: E402  (it builds on the classes above)

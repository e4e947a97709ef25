"""Optimizers with ``torch.optim``'s update equations, run in Rust.

Build one from a model's parameters, as in PyTorch::

    opt = fg.optim.Adam(model.parameters(), lr=1e-3)

Each optimizer updates all of its parameters in one parallel pass. Its
hyper-parameters are checked on construction; ``lr`` can be changed
between steps (``opt.lr = 0.01``) for schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import lr_scheduler
from ._optimizer import Optimizer, _num
from ._optimizer import _unpickle as _unpickle  # what pickles made before it moved name
from .parameter import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "get", "lr_scheduler"]


def _key(group: Mapping[str, Any], key: str) -> Any:
    if key not in group:
        raise ValueError(f"the param group lacks {key!r}")
    return group[key]


def _plain(group: Mapping[str, Any]) -> None:
    """Refuses torch options the engine does not have."""
    for key in ("maximize", "capturable", "differentiable"):
        if group.get(key):
            raise ValueError(f"{key}=True is not supported")


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``::

    g = grad + weight_decay * p
    b = g (first step) | momentum * b + (1 - dampening) * g
    g = g + momentum * b (nesterov) | b (momentum > 0)
    p = p - lr * g
    """

    kind = "SGD"
    _SLOTS = ("momentum_buffer",)

    def _slots_used(self, config: Mapping[str, Any]) -> list[str]:
        return ["momentum_buffer"] if config["momentum"] != 0 else []

    def _group(self) -> dict[str, Any]:
        d = self.defaults
        return {
            "lr": d["lr"],
            "momentum": d["momentum"],
            "dampening": d["dampening"],
            "weight_decay": d["weight_decay"],
            "nesterov": d["nesterov"],
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }

    def _config_from_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        _plain(group)
        return {
            "lr": _num("lr", _key(group, "lr")),
            "momentum": _num("momentum", group.get("momentum", 0.0)),
            "dampening": _num("dampening", group.get("dampening", 0.0)),
            "nesterov": bool(group.get("nesterov", False)),
            "weight_decay": _num("weight_decay", group.get("weight_decay", 0.0)),
        }

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


class _AdamBase(Optimizer):
    _SLOTS = ("exp_avg", "exp_avg_sq")

    def _group(self) -> dict[str, Any]:
        d = self.defaults
        return {
            "lr": d["lr"],
            "betas": (d["beta1"], d["beta2"]),
            "eps": d["eps"],
            "weight_decay": d["weight_decay"],
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": self.kind == "AdamW",
        }

    def _config_from_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        _plain(group)
        if group.get("amsgrad"):
            raise ValueError("amsgrad is not supported")
        decoupled = group.get("decoupled_weight_decay", self.kind == "AdamW")
        if bool(decoupled) != (self.kind == "AdamW"):
            other = "AdamW" if decoupled else "Adam"
            raise ValueError(f"the state_dict is an {other} state, this is {self.kind}")
        return _adam_config(
            _key(group, "lr"), group.get("betas", (0.9, 0.999)), group.get("eps", 1e-8),
            group.get("weight_decay", 0.0),
        )  # fmt: skip


class Adam(_AdamBase):
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


class AdamW(_AdamBase):
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
    _SLOTS = ("square_avg", "momentum_buffer", "grad_avg")

    def _slots_used(self, config: Mapping[str, Any]) -> list[str]:
        d = config
        return (
            ["square_avg"]
            + (["momentum_buffer"] if d["momentum"] > 0 else [])
            + (["grad_avg"] if d["centered"] else [])
        )

    def _group(self) -> dict[str, Any]:
        d = self.defaults
        return {
            "lr": d["lr"],
            "momentum": d["momentum"],
            "alpha": d["alpha"],
            "eps": d["eps"],
            "centered": d["centered"],
            "weight_decay": d["weight_decay"],
            "capturable": False,
            "foreach": None,
            "maximize": False,
            "differentiable": False,
        }

    def _config_from_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        _plain(group)
        return {
            "lr": _num("lr", _key(group, "lr")),
            "alpha": _num("alpha", group.get("alpha", 0.99)),
            "eps": _num("eps", group.get("eps", 1e-8)),
            "momentum": _num("momentum", group.get("momentum", 0.0)),
            "weight_decay": _num("weight_decay", group.get("weight_decay", 0.0)),
            "centered": bool(group.get("centered", False)),
        }

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


#: The optimizers a model file may name.
_CLASSES: dict[str, type[Optimizer]] = {c.__name__: c for c in (SGD, Adam, AdamW, RMSprop)}


def _from_checkpoint(
    model: Any, tensors: Mapping[str, Any], data: Mapping[str, Any], where: str
) -> Optimizer:
    """The optimizer a model file's optimizer part describes, bound to
    ``model`` (see :meth:`Optimizer._checkpoint`)."""
    cls = _CLASSES.get(str(data.get("class")))
    if cls is None:
        raise ValueError(f"{where} names an unknown optimizer {data.get('class')!r}")
    return cls._from_checkpoint(model, tensors, data, where)

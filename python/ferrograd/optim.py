"""Optimizers with ``torch.optim``'s update equations, run in Rust.

Build one from a model's parameters, as in PyTorch::

    opt = fg.optim.Adam(model.parameters(), lr=1e-3)

Each optimizer updates all of its parameters in one parallel pass. Its
hyper-parameters are checked on construction; ``lr`` can be changed
between steps (``opt.lr = 0.01``) for schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from ._data import untorch

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


def _key(group: Mapping[str, Any], key: str) -> Any:
    if key not in group:
        raise ValueError(f"the param group lacks {key!r}")
    return group[key]


def _plain(group: Mapping[str, Any]) -> None:
    """Refuses torch options the engine does not have."""
    for key in ("maximize", "capturable", "differentiable"):
        if group.get(key):
            raise ValueError(f"{key}=True is not supported")


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
        core = plist[0]._core
        if any(p._core is not core for p in plist):
            raise ValueError("all parameters of one optimizer must belong to the same model")
        self.params = plist
        self.defaults = dict(config)
        self._bind(plist[0], config)

    def _bind(self, param: Parameter, config: dict[str, Any]) -> None:
        # The engine's model strongly, the Sequential weakly (through the
        # parameter): model.optimizer and the optimizer form no cycle.
        self._mcore = param._core
        self._ref = param._ref
        self._dtype = param._dtype
        self._core = _core.Optimizer(
            self._mcore, self.kind, config, [p._index for p in self.params]
        )

    @property
    def _model(self) -> Sequential:
        model = self._ref()
        if model is None:
            raise ReferenceError("the model this optimizer belongs to was freed")
        return model

    def step(self) -> None:
        """Updates the parameters from their current gradients."""
        self._core.step()

    def zero_grad(self) -> None:
        """Sets the gradients of the model these parameters belong to to zero."""
        self._mcore.zero_grad()

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

    # ------------------------------------------------------------ state_dict

    #: torch's names of the engine's state slots, in the engine's order.
    _SLOTS: tuple[str, ...] = ()

    def _slots_used(self, config: Mapping[str, Any]) -> list[str]:
        """The slots torch keeps for the hyper-parameters ``config``."""
        return list(self._SLOTS)

    def _group(self) -> dict[str, Any]:
        """The param group, torch's keys (without ``params``)."""
        raise NotImplementedError

    def _config_from_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The engine config from a torch param group."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim``'s layout: ``{"state": {i: {...}},
        "param_groups": [{..., "params": [0, 1, ...]}]}``, the state's arrays
        shaped as their parameters and ``"step"`` a float (torch keeps a
        0-d tensor). Nothing is in ``"state"`` before the first step. The
        arrays are copies; ``load_state_dict`` of a torch optimizer takes it
        once they are made tensors (``torch.as_tensor``)."""
        steps, slots = self._core.get_state()
        used = self._slots_used(self.defaults)
        state: dict[int, dict[str, Any]] = {}
        for i, (p, arrays) in enumerate(zip(self.params, slots)):
            if not arrays:
                continue
            entry: dict[str, Any] = {}
            if self.kind != "SGD":
                entry["step"] = float(steps)
            for name, a in zip(self._SLOTS, arrays):
                if name in used:
                    entry[name] = a.reshape(p.shape)
            if entry:  # torch keeps nothing for plain SGD
                state[i] = entry
        group = {**self._group(), **self._sched_values(), "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group], "_steps": steps}

    #: Values schedulers keep in torch's param group (``initial_lr``, and
    #: OneCycleLR's bounds); they travel with the state_dict, as in torch.
    _SCHED_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")

    def _sched_values(self) -> dict[str, float]:
        from .lr_scheduler import _GROUPS

        return dict(_GROUPS.get(self, {}))

    def _set_sched_values(self, values: Mapping[str, Any]) -> None:
        from .lr_scheduler import _group

        group = _group(self)
        group.clear()
        group.update({k: float(v) for k, v in values.items() if k in self._SCHED_KEYS})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads a state from :meth:`state_dict`, or from a torch optimizer of
        the same class over the same parameters (its tensors are converted):
        hyper-parameters from ``param_groups`` (one group), moments and step
        count from ``state``. All or nothing: a mismatch raises
        ``ValueError`` naming it and the optimizer is unchanged."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        groups = state_dict.get("param_groups")
        state = state_dict.get("state")
        if not isinstance(groups, (list, tuple)) or not isinstance(state, Mapping):
            raise ValueError('an optimizer state_dict has "state" and "param_groups"')
        if len(groups) != 1:
            raise ValueError(f"expected one param group, the state_dict has {len(groups)}")
        group = groups[0]
        ids = list(group.get("params", []))
        if len(ids) != len(self.params):
            raise ValueError(
                f"the state_dict's param group has {len(ids)} parameters, "
                f"this optimizer has {len(self.params)}"
            )
        config = self._config_from_group(group)
        core = _core.Optimizer(self._mcore, self.kind, config, [p._index for p in self.params])
        used = self._slots_used(config)
        steps_seen: set[int] = set()
        slots: list[list[Any]] = []
        dtype = self._dtype
        for pid, p in zip(ids, self.params):
            entry = state.get(pid)
            if entry is None:
                slots.append([])
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"state of parameter {pid} must be a mapping")
            if "step" in entry:
                steps_seen.add(_whole("step", untorch(entry["step"])))
            arrays = []
            for name in self._SLOTS:
                if name in used:
                    if entry.get(name) is None:
                        raise ValueError(f"state of parameter {pid} lacks {name!r}")
                    a = np.asarray(untorch(entry[name]))
                    if a.shape != p.shape:
                        raise ValueError(
                            f"state {name!r} of parameter {pid} has shape {a.shape}, "
                            f"the parameter {p.name} has {p.shape}"
                        )
                    arrays.append(np.ascontiguousarray(a.reshape(-1), dtype=dtype))
                else:
                    arrays.append(np.zeros(p.numel, dtype=dtype))
            slots.append(arrays)
        if any(slots) and not all(slots):
            raise ValueError("the state_dict has state for some parameters but not all")
        if "_steps" in state_dict:
            steps_seen.add(_whole("_steps", state_dict["_steps"]))
        if len(steps_seen) > 1:
            raise ValueError(f"parameters were stepped different numbers of times: {steps_seen}")
        steps = steps_seen.pop() if steps_seen else 0
        if any(slots) and steps == 0:
            # torch's SGD state has no step count; momentum buffers mean at
            # least one step was taken (the count only tells the first step).
            if self.kind != "SGD":
                raise ValueError("the state_dict has moments but a step count of 0")
            steps = 1
        extras = {k: _num(k, group[k]) for k in self._SCHED_KEYS if k in group}
        if steps and not any(slots):
            if used:
                raise ValueError(f"the state_dict has a step count of {steps} but no state")
            # Nothing to carry (plain SGD): the engine's unused slot is zeros.
            slots = [[np.zeros(p.numel, dtype=dtype)] * len(self._SLOTS) for p in self.params]
        core.set_state(steps, slots)
        self._core = core
        self.defaults = dict(config)
        self._set_sched_values(extras)

    # ------------------------------------------------------------ pickle

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles (and deep-copies) with the model the optimizer belongs to."""
        steps, slots = self._core.get_state()
        return (
            _unpickle,
            (
                type(self),
                self._model,
                [p._index for p in self.params],
                dict(self.defaults),
                steps,
                slots,
                self._sched_values(),
            ),
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({args})"


def _whole(name: str, v: Any) -> int:
    a = np.asarray(v)
    if a.size != 1 or a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a number, got {v!r}")
    x = float(a.reshape(()))
    if not (x >= 0 and x == int(x)):
        raise ValueError(f"{name} must be a whole number >= 0, got {x}")
    return int(x)


def _unpickle(
    cls: type[Optimizer],
    model: Sequential,
    indices: list[int],
    config: dict[str, Any],
    steps: int,
    slots: list[list[Any]],
    sched_values: dict[str, float] | None = None,
) -> Optimizer:
    opt = cls.__new__(cls)
    params = model.parameters()
    opt.params = [params[i] for i in indices]
    opt.defaults = dict(config)
    opt._bind(opt.params[0], config)
    opt._core.set_state(steps, slots)
    opt._set_sched_values(sched_values or {})
    return opt


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


from . import lr_scheduler  # noqa: E402  (it builds on the classes above)

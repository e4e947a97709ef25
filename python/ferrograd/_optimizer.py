"""The optimizers' base class: parameters, hyper-parameters, the scheduler
values torch keeps in a param group, ``state_dict`` in ``torch.optim``'s
layout, and the optimizer's part of a model file. The optimizers themselves
are in :mod:`ferrograd.optim`; the schedules, which build on this class, in
:mod:`ferrograd.lr_scheduler`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from ._data import untorch
from .parameter import Parameter

if TYPE_CHECKING:
    from .model import BaseModel

#: The names of the optimizer's tensors in a model file: ``{prefix}{i}.{k}``,
#: slot ``k`` of the optimizer's ``i``-th parameter.
CHECKPOINT_PREFIX = "optimizer.state."


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
        self._sched_group: dict[str, float] = {}
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
    def _model(self) -> BaseModel:
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
    #: OneCycleLR's bounds): every scheduler of this optimizer reads and
    #: writes them in :attr:`_sched_group`, and they travel with the
    #: state_dict, pickles and model files, as in torch.
    _SCHED_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")

    def _sched_values(self) -> dict[str, float]:
        return dict(self._sched_group)

    def _set_sched_values(self, values: Mapping[str, Any]) -> None:
        group = self._sched_group
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

    # ------------------------------------------------------------ rebuilding

    @classmethod
    def _rebuild(
        cls,
        params: list[Parameter],
        config: Mapping[str, Any],
        steps: int,
        slots: list[list[Any]],
        sched_values: Any,
    ) -> Optimizer:
        """An optimizer of this class over ``params`` (of one model) with the
        engine config ``config``, step count, state slots (as
        ``_core.Optimizer.get_state`` returns them) and scheduler values: the
        one way back from a pickle and from a model file. Raises
        ``TypeError`` or ``ValueError`` when they do not fit together."""
        if not params:
            raise ValueError("it updates no parameters")
        opt = cls.__new__(cls)
        opt.params = list(params)
        opt.defaults = dict(config)
        opt._sched_group = {}
        opt._bind(opt.params[0], opt.defaults)
        opt._core.set_state(steps, slots)
        if not isinstance(sched_values, dict):
            raise TypeError("the scheduler values must be an object")
        opt._set_sched_values({k: _num(k, v) for k, v in sched_values.items()})
        return opt

    # ------------------------------------------------------------ model files

    def _checkpoint(self) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
        """The optimizer's part of a model file: a JSON-able description
        (class, config, parameter indices, step count, slot count,
        scheduler values) and its state tensors, named
        ``{CHECKPOINT_PREFIX}{i}.{k}``."""
        steps, slots = self._core.get_state()
        info = {
            "class": type(self).__name__,
            "config": self.defaults,
            "params": [p._index for p in self.params],
            "steps": steps,
            "slots": len(slots[0]) if slots else 0,
            "group": self._sched_values(),
        }
        tensors = [
            (f"{CHECKPOINT_PREFIX}{i}.{k}", a)
            for i, arrays in enumerate(slots)
            for k, a in enumerate(arrays)
        ]
        return info, tensors

    @classmethod
    def _from_checkpoint(
        cls,
        model: BaseModel,
        tensors: Mapping[str, np.ndarray],
        data: Mapping[str, Any],
        where: str,
    ) -> Optimizer:
        """The optimizer a model file's part (what :meth:`_checkpoint`
        wrote) describes, bound to ``model``; ``ValueError`` naming ``where``
        for a part that does not match the model."""
        params = data.get("params")
        n = len(model.parameters())
        if not isinstance(params, list) or not all(
            isinstance(i, int) and 0 <= i < n for i in params
        ):
            raise ValueError(f"{where}: the optimizer's parameters do not match the model")
        steps, nslots = data.get("steps", 0), data.get("slots", 0)
        if not isinstance(steps, int) or steps < 0 or not isinstance(nslots, int) or nslots < 0:
            raise ValueError(f"{where}: the optimizer's step count is malformed")
        slots = []
        for i in range(len(params)):
            arrays = []
            for k in range(nslots):
                key = f"{CHECKPOINT_PREFIX}{i}.{k}"
                if key not in tensors:
                    raise ValueError(f"{where}: the optimizer state lacks {key!r}")
                arrays.append(np.ascontiguousarray(tensors[key], dtype=model.dtype))
            slots.append(arrays)
        expected = {
            f"{CHECKPOINT_PREFIX}{i}.{k}" for i in range(len(params)) for k in range(nslots)
        }
        extra = sorted(k for k in tensors if k.startswith(CHECKPOINT_PREFIX) and k not in expected)
        if extra:
            raise ValueError(
                f"{where}: the optimizer state does not match the optimizer; unexpected: "
                + ", ".join(extra[:5])
            )
        config = data.get("config")
        if not isinstance(config, dict):
            raise ValueError(f"{where}: the optimizer's config is malformed")
        plist = model.parameters()
        try:
            return cls._rebuild(
                [plist[i] for i in params], config, steps, slots, data.get("group") or {}
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: the optimizer does not match the model: {e}") from None

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
    model: BaseModel,
    indices: list[int],
    config: dict[str, Any],
    steps: int,
    slots: list[list[Any]],
    sched_values: dict[str, float] | None = None,
) -> Optimizer:
    params = model.parameters()
    return cls._rebuild([params[i] for i in indices], config, steps, slots, sched_values or {})

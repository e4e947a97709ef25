"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s classes,
signatures and learning-rate sequences.

Build one on an optimizer and step it after each optimizer step (or epoch),
as in PyTorch::

    opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = fg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for x, y in batches:
        ...
        opt.step()
        sched.step()

or let :meth:`ferrograd.Sequential.fit` step it: ``fit(...,
scheduler=sched, scheduler_interval="step")`` (after every optimizer step,
inside the Rust loop) or ``"epoch"`` (after every epoch). After a per-step
``fit`` the optimizer holds the learning rate of the last step it took; the
schedule's next use (``step``, ``get_last_lr``, ``state_dict``, another
``fit``) settles the optimizer, and the schedule, at the point the steps
actually taken reach (fewer than planned when an epoch stopped early).

Like torch's, most schedules are *chainable*: each step updates the
optimizer's current ``lr`` recursively (so schedules can be combined with
other changes to it), and the closed forms given below are what that
recursion computes up to float rounding.

Differences from torch, all forced by ferrograd's optimizers having one
parameter group and no ``state_dict``: ``get_last_lr()`` is a list of one
float; a schedule value below 0 (a rounding residue, or ``OneCycleLR``'s
linear extrapolation after its last step) sets the optimizer's ``lr`` to 0,
which is the least the optimizer accepts (likewise a cycled momentum is kept
in the range the optimizer accepts); and :meth:`LRScheduler.load_state_dict`
also puts back the optimizer's ``lr`` (and cycled momentum) as they were when
the state was saved, which torch leaves to the optimizer's own
``load_state_dict``.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from ._optimizer import Optimizer

__all__ = [
    "LRScheduler",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "OneCycleLR",
    "SequentialLR",
    "ReduceLROnPlateau",
]

_EPOCH_DEPRECATION = (
    "The epoch parameter in `scheduler.step()` is deprecated (as in torch): "
    "call `scheduler.step()` without it. With an epoch, the closed form is "
    "used where the scheduler has one."
)


def _group(optimizer: Optimizer) -> dict[str, float]:
    """The optimizer's shared schedule values: torch keeps ``initial_lr`` (and
    OneCycleLR's ``max_lr``, ``min_lr``, ``max_momentum``, ``base_momentum``)
    in the optimizer's param group, where every scheduler of that optimizer
    sees them; a ferrograd optimizer keeps them in its one group's dict."""
    return optimizer._sched_group


# ------------------------------------------------------------------ argument checks


def _check_optimizer(optimizer: Any) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a ferrograd.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _real(name: str, value: Any) -> float:
    """A finite real number as a float (TypeError for other types)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _one(name: str, value: Any) -> Any:
    """torch accepts a value or a list with one value per param group; a
    ferrograd optimizer has one group."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, a ferrograd optimizer has 1 group."
            )
        return value[0]
    return value


def _milestones(name: str, values: Any) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of ints, got {type(values).__name__}")
    out = [_int(f"{name}[{i}]", v, 0) for i, v in enumerate(values)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ValueError(f"{name} must be increasing, got {out}")
    return out


# ------------------------------------------------------------------ optimizer access


def _set_lr(optimizer: Optimizer, value: float) -> None:
    # A value below 0 (rounding, or OneCycleLR extrapolating past its last
    # step) is refused by the optimizer: 0 is the nearest it accepts.
    optimizer.lr = 0.0 if value < 0 else value


def _set_momentum(optimizer: Optimizer, value: float) -> None:
    if value < 0:
        value = 0.0
    elif value >= 1.0 and "beta1" in optimizer.defaults:
        value = math.nextafter(1.0, 0.0)  # Adam's beta1 must stay below 1
    optimizer.momentum = value


# ------------------------------------------------------------------ base class


class LRScheduler:
    """Base class of the learning-rate schedules, as ``torch.optim.lr_scheduler.LRScheduler``.

    On construction with ``last_epoch=-1`` it records the optimizer's ``lr``
    as ``initial_lr`` (unless an earlier scheduler of this optimizer did) and
    ``base_lrs = [initial_lr]``, then takes one :meth:`step`, so
    ``last_epoch`` is 0 afterwards. Each :meth:`step` increments
    ``last_epoch`` and sets the optimizer's ``lr`` to ``get_lr()[0]``.

    Subclasses implement :meth:`get_lr` (the next learning rate from the
    current one, ``last_epoch`` and ``base_lrs``) and, where there is one,
    ``_get_closed_form_lr``.

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
        The optimizer whose ``lr`` the schedule sets.
    last_epoch : int, default -1
        The index of the last step taken; ``-1`` starts the schedule. Another
        value resumes it, and needs a scheduler built on this optimizer before
        (torch needs ``initial_lr`` in the optimizer's param group).
    """

    _is_initial: bool = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        last_epoch = _int("last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        group = _group(optimizer)
        if last_epoch == -1:
            group.setdefault("initial_lr", optimizer.lr)
        elif "initial_lr" not in group:
            raise KeyError(
                "'initial_lr' is not set for this optimizer when resuming a scheduler with "
                "last_epoch >= 0: build the schedule with last_epoch=-1 first, or resume with "
                "load_state_dict"
            )
        self.base_lrs: list[float] = [group["initial_lr"]]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        """Resets the step count and takes the first step (``last_epoch`` -1 -> 0)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        """The learning rate for the current ``last_epoch`` (a list of one
        float), computed from the optimizer's current ``lr``; called by
        :meth:`step`. Use :meth:`get_last_lr` to read the last one set."""
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rate the last step set, as a list of one float (torch
        has one per param group)."""
        return list(self._last_lr)

    def step(self, epoch: int | None = None) -> None:
        """Advances the schedule by one step: ``last_epoch += 1`` and
        ``optimizer.lr = get_lr()[0]``.

        Call it after ``optimizer.step()``. ``epoch`` is deprecated (as in
        torch): it sets ``last_epoch`` and uses the closed form where there is one.
        """
        self._step_count += 1
        if epoch is not None:
            warnings.warn(_EPOCH_DEPRECATION, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = _int("epoch", epoch)
            closed: Callable[[], list[float]] | None = getattr(self, "_get_closed_form_lr", None)
            values = closed() if closed is not None else self.get_lr()
        _set_lr(self.optimizer, float(values[0]))
        self._last_lr = [self.optimizer.lr]

    def _cycles_momentum(self) -> bool:
        return False

    def _momentum_state(self) -> float | None:
        """The optimizer momentum this schedule last set (None if it sets none)."""
        return None

    # -------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: every attribute but the optimizer (a copy)."""
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "optimizer"})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state from :meth:`state_dict`; the schedule then continues
        exactly as the saved one would.

        Unlike torch, this also sets the optimizer's ``lr`` (and the momentum,
        for a schedule that cycles it) back to the value the saved schedule
        had set, so restoring the scheduler alone is enough (restoring the
        optimizer's ``state_dict`` as well, as in torch, gives the same).
        """
        self.__dict__.update(copy.deepcopy(state_dict))
        self._restore_optimizer()

    def _restore_optimizer(self) -> None:
        last = getattr(self, "_last_lr", None)
        if last:
            _set_lr(self.optimizer, float(last[0]))
        m = self._momentum_state()
        if m is not None:
            _set_momentum(self.optimizer, m)

    # -------------------------------------------------- fit's per-step protocol

    def _snapshot(self) -> tuple[dict[str, Any], float, float, dict[str, float]]:
        opt = self.optimizer
        return self.state_dict(), opt.lr, opt.momentum, dict(_group(opt))

    def _restore(self, snap: tuple[dict[str, Any], float, float, dict[str, float]]) -> None:
        state, lr, momentum, group = snap
        self.load_state_dict(state)
        opt = self.optimizer
        opt.lr = lr
        if opt.momentum != momentum:
            opt.momentum = momentum
        g = _group(opt)
        g.clear()
        g.update(group)

    def _rewind(self, snap: tuple[dict[str, Any], float, float, dict[str, float]], k: int) -> None:
        """Puts the schedule where ``k`` calls of :meth:`step` after the
        snapshot ``snap`` leave it (``fit``, after an epoch that stopped
        early: its values were computed for the whole epoch)."""
        self._restore(snap)
        for _ in range(k):
            self.step()

    def _per_step_values(self, steps: int) -> tuple[list[float], list[float] | None]:
        """The learning rates (and, for a schedule cycling momentum, the
        momenta) of the next ``steps`` optimizer steps, advancing the schedule
        as ``steps`` calls of :meth:`step` after them would. On an error the
        scheduler and optimizer are left as they were."""
        steps = _int("steps", steps, 0)
        opt = self.optimizer
        snap = self._snapshot()
        lrs: list[float] = []
        momenta: list[float] | None = [] if self._cycles_momentum() else None
        try:
            for _ in range(steps):
                lrs.append(opt.lr)
                if momenta is not None:
                    momenta.append(opt.momentum)
                self.step()
        except BaseException:
            self._restore(snap)
            raise
        return lrs, momenta

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr[0]!r})"


# ------------------------------------------------------------------ schedules


class StepLR(LRScheduler):
    r"""Decays the learning rate by ``gamma`` every ``step_size`` steps, as
    ``torch.optim.lr_scheduler.StepLR``::

        lr_t = base_lr * gamma ** (t // step_size)

    (chainable: at each non-zero multiple of ``step_size`` the current ``lr``
    is multiplied by ``gamma``).

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    step_size : int
        Period of the decay, >= 1.
    gamma : float, default 0.1
        Multiplicative factor, > 0.
    last_epoch : int, default -1
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        _check_optimizer(optimizer)
        self.step_size = _int("step_size", step_size, 1)
        self.gamma = _real("gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [lr]
        return [lr * self.gamma]

    def _get_closed_form_lr(self) -> list[float]:
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    r"""Decays the learning rate by ``gamma`` at each milestone, as
    ``torch.optim.lr_scheduler.MultiStepLR``::

        lr_t = base_lr * gamma ** bisect_right(milestones, t)

    (chainable: when ``t`` is a milestone the current ``lr`` is multiplied by
    ``gamma``).

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    milestones : list of int
        Step indices, increasing, >= 0.
    gamma : float, default 0.1
        Multiplicative factor, > 0.
    last_epoch : int, default -1
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.milestones = Counter(_milestones("milestones", milestones))
        self.gamma = _real("gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = self.optimizer.lr
        if self.last_epoch not in self.milestones:
            return [lr]
        return [lr * self.gamma ** self.milestones[self.last_epoch]]

    def _get_closed_form_lr(self) -> list[float]:
        ms = sorted(self.milestones.elements())
        return [b * self.gamma ** bisect_right(ms, self.last_epoch) for b in self.base_lrs]


class ExponentialLR(LRScheduler):
    r"""Decays the learning rate by ``gamma`` every step, as
    ``torch.optim.lr_scheduler.ExponentialLR``::

        lr_t = base_lr * gamma ** t

    (chainable: each step multiplies the current ``lr`` by ``gamma``).

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    gamma : float
        Multiplicative factor, > 0.
    last_epoch : int, default -1
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.gamma = _real("gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = self.optimizer.lr
        if self._is_initial:
            return [lr]
        return [lr * self.gamma]

    def _get_closed_form_lr(self) -> list[float]:
        return [b * self.gamma**self.last_epoch for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing (SGDR without restarts), as
    ``torch.optim.lr_scheduler.CosineAnnealingLR``::

        lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    computed recursively, as torch does::

        lr_{t+1} = eta_min + (lr_t - eta_min)
                   * (1 + cos(pi * (t + 1) / T_max)) / (1 + cos(pi * t / T_max))

    with ``lr_{t+1} = lr_t + (base_lr - eta_min) * (1 - cos(pi / T_max)) / 2``
    where the denominator vanishes (``t + 1 = T_max + 1`` modulo ``2 * T_max``).
    Past ``T_max`` the learning rate rises again along the same cosine.

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    T_max : int
        Steps of the half cycle, >= 1.
    eta_min : float, default 0.0
        Minimum learning rate, >= 0.
    last_epoch : int, default -1
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        _check_optimizer(optimizer)
        self.T_max = _int("T_max", T_max, 1)
        self.eta_min = _real("eta_min", eta_min)
        if self.eta_min < 0:
            raise ValueError(f"eta_min must be >= 0, got {self.eta_min}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr, t, T, eta = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
        base = self.base_lrs[0]
        if self._is_initial:
            return [lr]
        if self._step_count == 1 and t > 0:
            return [eta + (base - eta) * (1 + math.cos((t) * math.pi / T)) / 2]
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (base - eta) * (1 - math.cos(math.pi / T)) / 2]
        return [
            (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (lr - eta)
            + eta
        ]

    def _get_closed_form_lr(self) -> list[float]:
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        return [eta + (b - eta) * (1 + math.cos(math.pi * t / T)) / 2 for b in self.base_lrs]


class LinearLR(LRScheduler):
    r"""Scales the learning rate by a factor changing linearly from
    ``start_factor`` to ``end_factor`` over ``total_iters`` steps, as
    ``torch.optim.lr_scheduler.LinearLR``::

        lr_t = base_lr * (start_factor
                          + (end_factor - start_factor) * min(t, total_iters) / total_iters)

    (chainable: step ``t <= total_iters`` multiplies the current ``lr`` by
    ``1 + (end - start) / (total_iters * start + (t - 1) * (end - start))``).

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    start_factor : float, default 1/3
        In ``(0, 1]``.
    end_factor : float, default 1.0
        In ``[0, 1]``.
    total_iters : int, default 5
        Steps of the change, >= 1.
    last_epoch : int, default -1
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        start_factor = _real("start_factor", start_factor)
        end_factor = _real("end_factor", end_factor)
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                f"start_factor (the starting multiplicative factor) must be > 0 and <= 1, "
                f"got {start_factor}"
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(
                f"end_factor (the ending multiplicative factor) must be in [0, 1], got {end_factor}"
            )
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = _int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr, t = self.optimizer.lr, self.last_epoch
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        if t == 0:
            return [lr * s]
        if self._is_initial or t > n:
            return [lr]
        return [lr * (1.0 + (e - s) / (n * s + (t - 1) * (e - s)))]

    def _get_closed_form_lr(self) -> list[float]:
        s, e, n, t = self.start_factor, self.end_factor, self.total_iters, self.last_epoch
        return [b * (s + (e - s) * min(n, t) / n) for b in self.base_lrs]


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin, "Super-Convergence"), as
    ``torch.optim.lr_scheduler.OneCycleLR``; not chainable, stepped after
    every batch.

    With ``initial_lr = max_lr / div_factor``, ``min_lr = initial_lr /
    final_div_factor`` and ``anneal(a, b, p)`` = ``b + (a - b) / 2 * (1 +
    cos(pi * p))`` (``"cos"``) or ``a + (b - a) * p`` (``"linear"``), step
    ``t`` (0-based, ``T = total_steps``) gets

    - two phases (default): ``anneal(initial_lr, max_lr, t / e1)`` for ``t <=
      e1 = pct_start * T - 1``, then ``anneal(max_lr, min_lr, (t - e1) / (T - 1 - e1))``;
    - ``three_phase=True``: up to ``max_lr`` until ``e1``, back to
      ``initial_lr`` until ``e2 = 2 * pct_start * T - 2``, then down to
      ``min_lr`` at ``T - 1``.

    With ``cycle_momentum`` the optimizer's momentum (SGD's and RMSprop's
    ``momentum``, Adam's and AdamW's ``beta1``) follows the inverse cycle:
    ``max_momentum -> base_momentum`` in the first phase, back to
    ``max_momentum`` in the second (and held there in the third).

    The schedule takes ``total_steps`` optimizer steps; stepping it more than
    ``total_steps`` times raises ``ValueError("Tried to step {} times. The
    specified number of total steps is {}")``.

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    max_lr : float
        Peak learning rate (or a list of one).
    total_steps : int, optional
        Steps of the cycle; otherwise ``epochs * steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
    pct_start : float, default 0.3
        Fraction of the cycle spent increasing the learning rate, in ``[0, 1]``.
    anneal_strategy : {"cos", "linear"}, default "cos"
    cycle_momentum : bool, default True
    base_momentum, max_momentum : float, default 0.85, 0.95
        Momentum bounds (>= 0; below 1 for Adam's beta1).
    div_factor : float, default 25.0
        ``initial_lr = max_lr / div_factor`` (> 0).
    final_div_factor : float, default 1e4
        ``min_lr = initial_lr / final_div_factor`` (> 0).
    three_phase : bool, default False
    last_epoch : int, default -1
        The number of batches taken, to resume a schedule.
    """

    total_steps: int
    cycle_momentum: bool
    use_beta1: bool
    _anneal_func_type: str

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if total_steps is not None:
            if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            if total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            total = int(total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            for name, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                    raise ValueError(f"Expected positive integer {name}, but got {v}")
            total = int(epochs) * int(steps_per_epoch)
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        self.total_steps = total
        if isinstance(pct_start, bool) or not isinstance(pct_start, numbers.Real):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        pct_start = float(pct_start)
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        max_lr_v = _real("max_lr", _one("max_lr", max_lr))
        if max_lr_v < 0:
            raise ValueError(f"max_lr must be >= 0, got {max_lr_v}")
        div_factor = _real("div_factor", div_factor)
        final_div_factor = _real("final_div_factor", final_div_factor)
        for name, v in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"cycle_momentum must be a bool, got {type(cycle_momentum).__name__}")
        if not isinstance(three_phase, bool):
            raise TypeError(f"three_phase must be a bool, got {type(three_phase).__name__}")
        last_epoch = _int("last_epoch", last_epoch, -1)
        use_beta1 = "beta1" in optimizer.defaults
        moms: dict[str, float] = {}
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and not use_beta1:
                raise ValueError(
                    "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
                )
            for name, v in (("max_momentum", max_momentum), ("base_momentum", base_momentum)):
                m = _real(name, _one(name, v))
                if m < 0 or (use_beta1 and m >= 1):
                    bound = "in [0, 1) (Adam's beta1)" if use_beta1 else ">= 0"
                    raise ValueError(f"{name} must be {bound}, got {m}")
                moms[name] = m

        T = self.total_steps
        self._schedule_phases: list[dict[str, Any]]
        if three_phase:
            self._schedule_phases = [
                {
                    "end_step": float(pct_start * T) - 1,
                    "start_lr": "initial_lr",
                    "end_lr": "max_lr",
                    "start_momentum": "max_momentum",
                    "end_momentum": "base_momentum",
                },
                {
                    "end_step": float(2 * pct_start * T) - 2,
                    "start_lr": "max_lr",
                    "end_lr": "initial_lr",
                    "start_momentum": "base_momentum",
                    "end_momentum": "max_momentum",
                },
                {
                    "end_step": T - 1,
                    "start_lr": "initial_lr",
                    "end_lr": "min_lr",
                    "start_momentum": "max_momentum",
                    "end_momentum": "max_momentum",
                },
            ]
        else:
            self._schedule_phases = [
                {
                    "end_step": float(pct_start * T) - 1,
                    "start_lr": "initial_lr",
                    "end_lr": "max_lr",
                    "start_momentum": "max_momentum",
                    "end_momentum": "base_momentum",
                },
                {
                    "end_step": T - 1,
                    "start_lr": "max_lr",
                    "end_lr": "min_lr",
                    "start_momentum": "base_momentum",
                    "end_momentum": "max_momentum",
                },
            ]
        self._anneal_func_type = anneal_strategy
        self.cycle_momentum = cycle_momentum
        group = _group(optimizer)
        if last_epoch == -1:
            group["initial_lr"] = max_lr_v / div_factor
            group["max_lr"] = max_lr_v
            group["min_lr"] = group["initial_lr"] / final_div_factor
        if cycle_momentum:
            self.use_beta1 = use_beta1
            if last_epoch == -1:
                optimizer.momentum = moms["max_momentum"]
                group["max_momentum"] = moms["max_momentum"]
                group["base_momentum"] = moms["base_momentum"]
        self._last_momentum: float | None = None
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return _anneal_cos(start, end, pct)
        return _anneal_linear(start, end, pct)

    def get_lr(self) -> list[float]:
        """The learning rate of step ``last_epoch``; with ``cycle_momentum``
        it also sets the optimizer's momentum (as torch's does)."""
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        group = _group(self.optimizer)
        phases = self._schedule_phases
        start_step = 0.0
        for i, phase in enumerate(phases):
            end_step = phase["end_step"]
            if step_num <= end_step or i == len(phases) - 1:
                pct = (step_num - start_step) / (end_step - start_step)
                lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                if self.cycle_momentum:
                    m = self._anneal(
                        group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                    )
                    _set_momentum(self.optimizer, m)
                    self._last_momentum = self.optimizer.momentum
                break
            start_step = phase["end_step"]
        return [lr]

    def _cycles_momentum(self) -> bool:
        return self.cycle_momentum

    def _momentum_state(self) -> float | None:
        return self._last_momentum if self.cycle_momentum else None

    def _check_steps(self, n: int) -> None:
        """Raises torch's ValueError if the schedule cannot take ``n`` more
        optimizer steps (each followed by :meth:`step`)."""
        n = _int("steps", n, 0)
        if self.last_epoch + n > self.total_steps:
            raise ValueError(
                f"Tried to step {self.total_steps + 1} times. The specified number of total "
                f"steps is {self.total_steps} (the schedule is at step {self.last_epoch} and "
                f"{n} more were asked for)"
            )


class SequentialLR(LRScheduler):
    r"""Runs ``schedulers`` one after another, switching at ``milestones``,
    as ``torch.optim.lr_scheduler.SequentialLR``.

    On construction the optimizer's ``lr`` goes back to ``initial_lr``, the
    initial steps the schedulers took are undone and the first scheduler
    takes its initial step again. Step ``t`` then steps
    ``schedulers[bisect_right(milestones, t)]``; at a milestone, that
    scheduler restarts at its step 0 from its closed form (``base_lr``-based,
    where it has one).

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    schedulers : list of LRScheduler
        Built on ``optimizer``; not ``ReduceLROnPlateau``.
    milestones : list of int
        Increasing, one fewer than ``schedulers``.
    last_epoch : int, default -1
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if isinstance(schedulers, (str, bytes)) or not isinstance(schedulers, Iterable):
            raise TypeError(
                f"schedulers must be a list of schedulers, got {type(schedulers).__name__}"
            )
        schedulers = list(schedulers)
        name = type(self).__name__
        if len(schedulers) < 1:
            raise ValueError(f"{name} expects at least one scheduler, but got no scheduler.")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(
                    f"{name}: schedulers[{i}] is a {type(s).__name__}, expected a "
                    "ferrograd.optim.lr_scheduler scheduler"
                )
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(
                    f"{name} does not support `ReduceLROnPlateau` scheduler as it requires "
                    "additional kwargs to be specified when calling `step`, but got one at "
                    f"index {i} in the given schedulers sequence."
                )
            if s.optimizer is not optimizer:
                raise ValueError(
                    f"{name} expects all schedulers to belong to the same optimizer, but got "
                    f"scheduler {type(s).__name__} at index {i} built on another optimizer."
                )
        milestones = _milestones("milestones", milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers "
                f"{len(schedulers)} and the number of milestones to be equal to {len(milestones)}"
            )
        last_epoch = _int("last_epoch", last_epoch, -1)
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        _set_lr(optimizer, _group(optimizer)["initial_lr"])
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def get_lr(self) -> list[float]:
        """Not available (as in torch): a ``SequentialLR`` has no learning rate
        of its own, so one nested in another cannot restart at a milestone."""
        raise NotImplementedError(
            "a SequentialLR has no get_lr of its own: one nested in another SequentialLR "
            "cannot be restarted at a milestone (torch raises NotImplementedError too)"
        )

    def recursive_undo(self, sched: LRScheduler | None = None) -> None:
        """Undoes the initial step of the schedulers (recursively into nested
        ``SequentialLR``\\ s) by decrementing their ``last_epoch``."""
        s = self if sched is None else sched
        if isinstance(s, SequentialLR):
            for child in s._schedulers:
                self.recursive_undo(child)
        else:
            s.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        """Steps the scheduler in charge of the next step (restarting it at a milestone)."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        s = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            s._update_lr(0)
        else:
            s.step()
        self._last_lr = s.get_last_lr()

    def _cycles_momentum(self) -> bool:
        return any(s._cycles_momentum() for s in self._schedulers)

    def _check_steps(self, n: int) -> None:
        """Raises the error stepping ``n`` more times would raise (a
        ``OneCycleLR`` stepped past its ``total_steps``), by a dry run that
        leaves everything as it was."""
        n = _int("steps", n, 0)
        if not any(hasattr(s, "_check_steps") for s in self._schedulers):
            return
        snap = self._snapshot()
        try:
            for _ in range(n):
                self.step()
        finally:
            self._restore(snap)

    def state_dict(self) -> dict[str, Any]:
        """The state, with each scheduler's state in ``"_schedulers"``."""
        state = copy.deepcopy(
            {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        )
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state from :meth:`state_dict` (the schedulers' too)."""
        state = dict(state_dict)
        children = state.pop("_schedulers")
        self.__dict__.update(copy.deepcopy(state))
        for s, child in zip(self._schedulers, children):
            s.load_state_dict(child)
        self._schedulers[bisect_right(self._milestones, self.last_epoch)]._restore_optimizer()
        self._restore_optimizer()


class ReduceLROnPlateau(LRScheduler):
    r"""Reduces the learning rate when a metric stops improving, as
    ``torch.optim.lr_scheduler.ReduceLROnPlateau``; stepped with the metric,
    ``step(metrics)``, once per epoch (``fit`` passes ``val_loss``, or
    ``loss`` without validation data).

    A value ``a`` improves on the best ``best`` when (``mode``, ``threshold_mode``):

    - ``min, rel``: ``a < best * (1 - threshold)``;  ``min, abs``: ``a < best - threshold``
    - ``max, rel``: ``a > best * (1 + threshold)``;  ``max, abs``: ``a > best + threshold``

    Every other value is a bad epoch (none count during the ``cooldown``
    epochs after a reduction). After more than ``patience`` bad epochs in a
    row, ``new_lr = max(lr * factor, min_lr)``, applied only if ``lr - new_lr
    > eps``; the count restarts and the cooldown begins.

    Parameters
    ----------
    optimizer : ferrograd.optim.Optimizer
    mode : {"min", "max"}, default "min"
    factor : float, default 0.1
        In ``[0, 1)``.
    patience : int, default 10
    threshold : float, default 1e-4
    threshold_mode : {"rel", "abs"}, default "rel"
    cooldown : int, default 0
    min_lr : float, default 0
        (or a list of one)
    eps : float, default 1e-8
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        _check_optimizer(optimizer)
        factor = _real("factor", factor)
        if factor >= 1.0:
            raise ValueError(f"factor should be < 1.0, got {factor}")
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        self.factor = factor
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            m = _real("min_lr", _one("min_lr", min_lr))
            self.default_min_lr: float | None = None
        else:
            m = _real("min_lr", min_lr)
            self.default_min_lr = m
        if m < 0:
            raise ValueError(f"min_lr must be >= 0, got {m}")
        self.min_lrs = [m]
        self.patience = _int("patience", patience, 0)
        self.cooldown = _int("cooldown", cooldown, 0)
        self.eps = _real("eps", eps)
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        threshold = _real("threshold", threshold)
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.last_epoch = 0
        self._last_lr = [optimizer.lr]
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _init_is_better(self, mode: Any, threshold: float, threshold_mode: Any) -> None:
        for name, v, options in (
            ("mode", mode, ("min", "max")),
            ("threshold_mode", threshold_mode, ("rel", "abs")),
        ):
            if not isinstance(v, str):
                raise TypeError(f"{name} must be a str, got {type(v).__name__}")
            if v not in options:
                raise ValueError(
                    f"{name.replace('_', ' ')} {v} is unknown! Expected one of "
                    f"{', '.join(map(repr, options))}"
                )
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    @property
    def in_cooldown(self) -> bool:
        """Whether the schedule is in its cooldown after a reduction."""
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """Records one epoch's metric and reduces the learning rate when the
        metric has not improved for more than ``patience`` epochs."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics must be a number, got {metrics!r}") from None
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(_EPOCH_DEPRECATION, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [self.optimizer.lr]

    def _reduce_lr(self) -> None:
        old = float(self.optimizer.lr)
        new = max(old * self.factor, self.min_lrs[0])
        if old - new > self.eps:
            _set_lr(self.optimizer, new)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state from :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self._init_is_better(
            mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode
        )


# ------------------------------------------------------------------ model files


def _checkpoint(s: LRScheduler) -> dict[str, Any]:
    """A scheduler's part of a model file (JSON-able): its class and state,
    and for a :class:`SequentialLR` its children's parts."""
    state = s.state_dict()
    out: dict[str, Any] = {"class": type(s).__name__}
    if isinstance(s, SequentialLR):
        out["children"] = [_checkpoint(c) for c in s._schedulers]
        state.pop("_schedulers", None)
    out["state"] = state
    return out


def _from_checkpoint(data: Any, optimizer: Optimizer, depth: int = 0) -> LRScheduler:
    """The scheduler of ``optimizer`` a model file's part (what
    :func:`_checkpoint` wrote) describes; ``ValueError`` for a malformed one."""
    if not isinstance(data, dict) or not isinstance(data.get("class"), str) or depth > 8:
        raise ValueError("the file's scheduler entry is malformed")
    cls = globals().get(data["class"])
    if not (isinstance(cls, type) and issubclass(cls, LRScheduler)):
        raise ValueError(f"the file names an unknown scheduler {data['class']!r}")
    state = data.get("state")
    if not isinstance(state, dict):
        raise ValueError(f"the file's {data['class']} state is malformed")
    state = {k: v for k, v in state.items() if k != "optimizer" and not k.startswith("__")}
    sched = cls.__new__(cls)
    sched.optimizer = optimizer
    if isinstance(sched, SequentialLR):
        kids = data.get("children")
        milestones = state.get("_milestones")
        if (
            not isinstance(kids, list)
            or not isinstance(milestones, list)
            or len(kids) != len(milestones) + 1
        ):
            raise ValueError("the file's SequentialLR needs one more child than milestones")
        children = [_from_checkpoint(c, optimizer, depth + 1) for c in kids]
        sched._schedulers = children
        state["_schedulers"] = [c.state_dict() for c in children]
    try:
        sched.load_state_dict(state)
        last = sched.get_last_lr()
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in last):
            raise ValueError(f"learning rates {last!r}")
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise ValueError(f"the file's {data['class']} state is malformed: {e}") from None
    return sched

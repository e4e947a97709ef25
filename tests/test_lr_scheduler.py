"""Tests for ferrograd.optim.lr_scheduler: each schedule against its documented
formula, against torch.optim.lr_scheduler itself (when torch imports), state
round trips, argument checks, and the schedules inside ``Sequential.fit``.

The formulas are those of the PyTorch documentation
(https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate and the
class pages linked below); they are coded here independently of the module.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

S = fg.optim.lr_scheduler


# ------------------------------------------------------------------ helpers


def tiny_model(seed: int = 0) -> fg.Sequential:
    return fg.Sequential([L.Dense(2, 1)], seed=seed)


def make_opt(kind: str = "sgd", lr: float = 0.1, **kw: Any) -> fg.optim.Optimizer:
    cls = {
        "sgd": fg.optim.SGD,
        "adam": fg.optim.Adam,
        "adamw": fg.optim.AdamW,
        "rmsprop": fg.optim.RMSprop,
    }[kind]
    return cls(tiny_model().parameters(), lr=lr, **kw)


def run(sched: Any, n: int) -> tuple[list[float], list[float]]:
    """The lr (and momentum) in effect for each of n steps, stepping after each."""
    lrs, moms = [], []
    for _ in range(n):
        lrs.append(sched.optimizer.lr)
        moms.append(sched.optimizer.momentum)
        sched.step()
    return lrs, moms


def close(a: list[float], b: list[float], rel: float = 1e-12, abs_: float = 1e-15) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == pytest.approx(y, rel=rel, abs=abs_), f"step {i}: {x} != {y}"


def blobs(n: int = 70, d: int = 5, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, d))
    return x.astype(np.float32), y


def mlp(seed: int = 0) -> fg.Sequential:
    return fg.Sequential([L.Dense(5, 16), L.ReLU(), L.Dense(16, 3)], seed=seed)


# ------------------------------------------------------------------ basics


FACTORIES: dict[str, Callable[[Any], Any]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=7, eta_min=0.01),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.25, end_factor=0.8, total_iters=6),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=30),
    "OneCycleLR3": lambda o: S.OneCycleLR(
        o, max_lr=0.5, total_steps=30, three_phase=True, anneal_strategy="linear"
    ),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=4), S.ExponentialLR(o, gamma=0.8)], [4]
    ),
    "SequentialLR1cycle": lambda o: S.SequentialLR(
        o, [S.StepLR(o, 2), S.OneCycleLR(o, 1.0, total_steps=20)], [5]
    ),
}


def test_exposed_as_optim_lr_scheduler():
    import ferrograd.lr_scheduler as mod

    assert fg.optim.lr_scheduler is mod
    assert "lr_scheduler" in fg.optim.__all__
    for name in mod.__all__:
        assert getattr(mod, name).__doc__, name
    assert issubclass(S.ReduceLROnPlateau, S.LRScheduler)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_construction_takes_the_initial_step(name):
    opt = make_opt("sgd", lr=0.1, momentum=0.9)
    sched = FACTORIES[name](opt)
    last = sched.get_last_lr()
    assert type(last) is list and len(last) == 1 and isinstance(last[0], float)
    assert last == [opt.lr]
    assert sched.last_epoch == 0
    last.append(1.0)  # a copy: changing it changes nothing
    assert len(sched.get_last_lr()) == 1
    sched.step()
    assert sched.last_epoch == 1
    assert sched.get_last_lr() == [opt.lr]


def test_base_lrs_and_initial_lr_shared_like_torch():
    opt = make_opt(lr=0.2)
    a = S.StepLR(opt, 1, gamma=0.5)
    a.step()
    assert opt.lr == 0.1
    # a second scheduler of the same optimizer keeps the first one's initial_lr (torch's
    # group.setdefault("initial_lr", ...)), but chains from the current lr
    b = S.ExponentialLR(opt, gamma=0.5)
    assert a.base_lrs == b.base_lrs == [0.2]
    assert opt.lr == 0.1
    b.step()
    assert opt.lr == 0.05


# ------------------------------------------------------------------ formulas


def test_steplr_formula():
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.StepLR.html
    # lr_t = base_lr * gamma ** (t // step_size)
    opt = make_opt(lr=0.3)
    lrs, _ = run(S.StepLR(opt, step_size=4, gamma=0.25), 30)
    close(lrs, [0.3 * 0.25 ** (t // 4) for t in range(30)])
    assert lrs[3] == 0.3 and lrs[4] < lrs[3]


def test_multisteplr_formula():
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.MultiStepLR.html
    # lr_t = base_lr * gamma ** (number of milestones <= t)
    opt = make_opt(lr=0.5)
    ms = [3, 4, 11]
    lrs, _ = run(S.MultiStepLR(opt, milestones=ms, gamma=0.1), 20)
    close(lrs, [0.5 * 0.1 ** sum(m <= t for m in ms) for t in range(20)])


def test_exponentiallr_formula():
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ExponentialLR.html
    # lr_t = base_lr * gamma ** t
    opt = make_opt(lr=0.05)
    lrs, _ = run(S.ExponentialLR(opt, gamma=0.95), 60)
    close(lrs, [0.05 * 0.95**t for t in range(60)], rel=1e-11)


@pytest.mark.parametrize("eta_min", [0.0, 0.02])
def test_cosine_annealing_formula_including_past_t_max(eta_min):
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.CosineAnnealingLR.html
    # eta_t = eta_min + (eta_max - eta_min) * (1 + cos(pi * T_cur / T_max)) / 2, which the
    # recursive update tracks for every t (it rises again after T_max).
    opt = make_opt(lr=0.1)
    T = 10
    lrs, _ = run(S.CosineAnnealingLR(opt, T_max=T, eta_min=eta_min), 3 * T + 3)
    want = [
        eta_min + (0.1 - eta_min) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(3 * T + 3)
    ]
    close(lrs, want, rel=1e-9, abs_=1e-14)
    assert lrs[T] == pytest.approx(eta_min, abs=1e-15)
    assert lrs[2 * T] == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize(("start", "end", "n"), [(1 / 3, 1.0, 5), (0.5, 0.1, 8), (1.0, 0.0, 4)])
def test_linearlr_formula(start, end, n):
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.LinearLR.html
    # lr_t = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)
    opt = make_opt(lr=0.2)
    sched = (
        S.LinearLR(opt)
        if n == 5
        else S.LinearLR(opt, start_factor=start, end_factor=end, total_iters=n)
    )
    lrs, _ = run(sched, n + 6)
    close(lrs, [0.2 * (start + (end - start) * min(t, n) / n) for t in range(n + 6)], abs_=1e-15)


def onecycle_reference(
    t, total, max_lr, pct=0.3, div=25.0, final_div=1e4, cos=True, three=False, mmin=0.85, mmax=0.95
):
    """torch's OneCycleLR docs / Smith & Topin (arXiv:1708.07120): phases end at steps
    pct*T - 1 (peak), [2*pct*T - 2 (back to initial), three phase] and T - 1 (min_lr)."""
    init = max_lr / div
    low = init / final_div

    def ann(a, b, p):
        return b + (a - b) * (1 + math.cos(math.pi * p)) / 2 if cos else a + (b - a) * p

    e1 = pct * total - 1
    if three:
        e2 = 2 * pct * total - 2
        if t <= e1:
            return ann(init, max_lr, t / e1), ann(mmax, mmin, t / e1)
        if t <= e2:
            p = (t - e1) / (e2 - e1)
            return ann(max_lr, init, p), ann(mmin, mmax, p)
        p = (t - e2) / (total - 1 - e2)
        return ann(init, low, p), mmax
    if t <= e1:
        return ann(init, max_lr, t / e1), ann(mmax, mmin, t / e1)
    p = (t - e1) / (total - 1 - e1)
    return ann(max_lr, low, p), ann(mmin, mmax, p)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize(
    ("cos", "three"), [(True, False), (False, False), (True, True), (False, True)]
)
def test_onecycle_formula_and_momentum(kind, cos, three):
    total = 40
    opt = make_opt(kind, lr=0.123)
    sched = S.OneCycleLR(
        opt,
        max_lr=2.0,
        total_steps=total,
        pct_start=0.25,
        anneal_strategy="cos" if cos else "linear",
        three_phase=three,
        base_momentum=0.8,
        max_momentum=0.9,
    )
    lrs, moms = run(sched, total)
    ref = [
        onecycle_reference(t, total, 2.0, pct=0.25, cos=cos, three=three, mmin=0.8, mmax=0.9)
        for t in range(total)
    ]
    close(lrs, [r[0] for r in ref], rel=1e-12, abs_=1e-12)
    close(moms, [r[1] for r in ref], rel=1e-12, abs_=1e-12)
    assert lrs[0] == pytest.approx(2.0 / 25) and max(lrs) == pytest.approx(2.0)
    assert lrs[-1] == pytest.approx(2.0 / 25 / 1e4)
    # momentum is cycled inversely: the lowest momentum at the peak of the learning rate
    assert moms[int(np.argmax(lrs))] == pytest.approx(0.8)
    assert moms[0] == 0.9
    if kind in ("adam", "adamw"):
        assert opt.defaults["beta1"] == opt.momentum  # beta1 is what is cycled
    else:
        assert opt.defaults["momentum"] == opt.momentum


def test_onecycle_epochs_times_steps_and_no_momentum_cycling():
    opt = make_opt("sgd", lr=0.1, momentum=0.5)
    sched = S.OneCycleLR(opt, max_lr=0.4, epochs=3, steps_per_epoch=7, cycle_momentum=False)
    assert sched.total_steps == 21
    lrs, moms = run(sched, 21)
    close(lrs, [onecycle_reference(t, 21, 0.4)[0] for t in range(21)])
    assert set(moms) == {0.5}
    assert sched._per_step_values(0) == ([], None)


def test_onecycle_stepping_past_total_steps_raises_torch_message():
    opt = make_opt("sgd", momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=5)
    for _ in range(5):  # 5 optimizer steps, each followed by sched.step()
        sched.step()
    with pytest.raises(
        ValueError, match=r"^Tried to step 6 times\. The specified number of total steps is 5$"
    ):
        sched.step()


def test_sequentiallr_formula_warmup_then_cosine():
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.SequentialLR.html
    # steps t < milestone follow the first schedule; from the milestone, the second one
    # restarts from its step 0 (closed form from base_lr): cosine of t - milestone.
    opt = make_opt(lr=0.4)
    warm = S.LinearLR(opt, start_factor=0.1, total_iters=5)
    cos = S.CosineAnnealingLR(opt, T_max=12)
    sched = S.SequentialLR(opt, [warm, cos], milestones=[5])
    assert sched.last_epoch == 0 and opt.lr == pytest.approx(0.04)
    lrs, _ = run(sched, 25)
    want = [
        0.4 * (0.1 + 0.9 * t / 5) if t < 5 else 0.4 * (1 + math.cos(math.pi * (t - 5) / 12)) / 2
        for t in range(25)
    ]
    close(lrs, want, rel=1e-9, abs_=1e-14)


def test_sequentiallr_three_schedulers():
    opt = make_opt(lr=1.0)
    sched = S.SequentialLR(
        opt,
        [S.ExponentialLR(opt, 0.5), S.StepLR(opt, 2, gamma=0.1), S.MultiStepLR(opt, [1], 0.5)],
        milestones=[3, 7],
    )
    lrs, _ = run(sched, 10)
    # 0..2: 0.5**t; 3..6: StepLR from base: 1, 1, 0.1, 0.1; 7..: MultiStepLR from base: 1, 0.5, 0.5
    close(lrs, [1, 0.5, 0.25, 1, 1, 0.1, 0.1, 1, 0.5, 0.5])


# ------------------------------------------------------------------ ReduceLROnPlateau


def plateau_lrs(metrics, **kw):
    opt = make_opt(lr=0.1)
    sched = S.ReduceLROnPlateau(opt, **kw)
    out = []
    for m in metrics:
        sched.step(m)
        out.append(opt.lr)
        assert sched.get_last_lr() == [opt.lr]
    return out, sched


def test_plateau_patience():
    # https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html
    # reduce after more than `patience` epochs without improvement
    lrs, sched = plateau_lrs([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95], patience=2, factor=0.5)
    close(lrs, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    assert sched.best == 0.9 and sched.last_epoch == 8


def test_plateau_cooldown():
    lrs, _ = plateau_lrs([1.0] * 9, patience=0, cooldown=2, factor=0.5)
    # bad epochs in the 2-epoch cooldown do not count: reductions at epochs 2, 5, 8
    close(lrs, [0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125])


def test_plateau_min_lr_and_eps():
    lrs, _ = plateau_lrs([1.0] * 6, patience=0, factor=0.1, min_lr=0.003)
    close(lrs, [0.1, 0.01, 0.003, 0.003, 0.003, 0.003])
    # an update smaller than eps is skipped: 0.025 -> 0.0125 changes by less than 0.02
    lrs, _ = plateau_lrs([1.0] * 6, patience=0, factor=0.5, eps=0.02)
    close(lrs, [0.1, 0.05, 0.025, 0.025, 0.025, 0.025])


def test_plateau_mode_max_and_threshold_modes():
    # max, rel: better means a > best * (1 + threshold): 1.31 is not above 1.2 * 1.1
    lrs, s = plateau_lrs([1.0, 1.05, 1.2, 1.31], mode="max", patience=0, threshold=0.1)
    close(lrs, [0.1, 0.01, 0.01, 0.001])
    assert s.best == 1.2
    # max, abs: better means a > best + threshold: 1.31 is above 1.2 + 0.1
    lrs, s = plateau_lrs(
        [1.0, 1.05, 1.2, 1.31], mode="max", patience=0, threshold=0.1, threshold_mode="abs"
    )
    close(lrs, [0.1, 0.01, 0.01, 0.01])
    assert s.best == 1.31
    # min, abs: better means a < best - threshold
    lrs, s = plateau_lrs([1.0, 0.95, 0.85], patience=0, threshold=0.1, threshold_mode="abs")
    close(lrs, [0.1, 0.01, 0.01])
    assert s.best == 0.85
    # min, rel (default): 0.99995 is not below 1 * (1 - 1e-4)
    lrs, s = plateau_lrs([1.0, 0.99995, 0.99], patience=0)
    close(lrs, [0.1, 0.01, 0.01])
    assert s.best == 0.99


def test_plateau_refuses_per_step_fit_and_sequential():
    model = tiny_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    sched = S.ReduceLROnPlateau(opt)
    assert not hasattr(sched, "_check_steps")
    x = np.zeros((8, 4))
    y = np.zeros(8, dtype=np.int64)
    with pytest.raises(ValueError, match="ReduceLROnPlateau is stepped once per epoch"):
        model.fit(x, y, "cross_entropy", opt, verbose=0, scheduler=sched,
                       scheduler_interval="step")  # fmt: skip
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        S.SequentialLR(opt, [S.StepLR(opt, 2), sched], [3])


# ------------------------------------------------------------------ torch itself


def torch_sequence(make, kind, n, lr, opt_kw):
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    cls = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
    }[kind]
    kw = dict(opt_kw)
    if kind in ("adam", "adamw"):
        kw.pop("momentum", None)
    opt = cls([p], lr=lr, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(torch.optim.lr_scheduler, opt)
        lrs, moms = [], []
        g = opt.param_groups[0]
        for _ in range(n):
            lrs.append(g["lr"])
            moms.append(g["betas"][0] if "betas" in g else g["momentum"])
            opt.step()
            sched.step()
    return lrs, moms, sched.get_last_lr()


TORCH_CASES: dict[str, tuple[Callable[[Any, Any], Any], int]] = {
    "StepLR": (lambda M, o: M.StepLR(o, step_size=3, gamma=0.7), 40),
    "MultiStepLR": (lambda M, o: M.MultiStepLR(o, milestones=[0, 2, 9, 10], gamma=0.3), 20),
    "ExponentialLR": (lambda M, o: M.ExponentialLR(o, gamma=0.91), 80),
    "CosineAnnealingLR": (lambda M, o: M.CosineAnnealingLR(o, T_max=9, eta_min=0.003), 50),
    "LinearLR-default": (lambda M, o: M.LinearLR(o), 12),
    "LinearLR-down": (lambda M, o: M.LinearLR(o, 0.9, 0.0, 7), 12),
    "OneCycleLR": (lambda M, o: M.OneCycleLR(o, max_lr=0.8, total_steps=50), 50),
    "OneCycleLR-linear": (
        lambda M, o: M.OneCycleLR(o, 0.8, epochs=4, steps_per_epoch=9, anneal_strategy="linear"),
        36,
    ),
    "OneCycleLR-3phase": (
        lambda M, o: M.OneCycleLR(
            o,
            0.8,
            total_steps=45,
            pct_start=0.4,
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
            base_momentum=0.7,
            max_momentum=0.98,
        ),
        45,
    ),
    "OneCycleLR-nomomentum": (
        lambda M, o: M.OneCycleLR(o, 0.8, total_steps=20, cycle_momentum=False, pct_start=0.0),
        20,
    ),
    "SequentialLR": (
        lambda M, o: M.SequentialLR(
            o, [M.LinearLR(o, 0.1, total_iters=5), M.CosineAnnealingLR(o, T_max=15)], [5]
        ),
        40,
    ),
    "SequentialLR-3": (
        lambda M, o: M.SequentialLR(
            o,
            [M.ExponentialLR(o, 0.9), M.StepLR(o, 3), M.MultiStepLR(o, [2, 4]), M.LinearLR(o)],
            [4, 11, 16],
        ),
        30,
    ),
    "SequentialLR-onecycle": (
        lambda M, o: M.SequentialLR(
            o, [M.LinearLR(o, 0.2, total_iters=4), M.OneCycleLR(o, 1.0, total_steps=30)], [6]
        ),
        36,
    ),
    "SequentialLR-nested": (
        lambda M, o: M.SequentialLR(
            o,
            [
                M.SequentialLR(o, [M.ExponentialLR(o, 0.8), M.CosineAnnealingLR(o, 6)], [3]),
                M.StepLR(o, 2, 0.5),
            ],
            [9],
        ),
        20,
    ),
}


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_equals_torch(case, kind):
    make, n = TORCH_CASES[case]
    opt_kw = {"momentum": 0.9}
    t_lrs, t_moms, t_last = torch_sequence(make, kind, n, 0.1, opt_kw)
    opt = make_opt(kind, lr=0.1, **({} if kind == "adam" else opt_kw))
    sched = make(S, opt)
    lrs, moms = run(sched, n)
    # the same float operations in the same order: equal to the last bit, except that a
    # value below 0 (LinearLR's rounding residue with end_factor=0, OneCycleLR's linear
    # extrapolation after its last step) is 0 here: ferrograd's optimizers refuse lr < 0
    assert lrs == [max(v, 0.0) for v in t_lrs]
    assert moms == t_moms
    assert sched.get_last_lr() == [max(v, 0.0) for v in t_last]


def test_plateau_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    metrics = list(rng.random(120) - np.linspace(0, 0.5, 120))
    configs = [
        {},
        {"mode": "max", "patience": 2, "cooldown": 3, "threshold": 0.05, "threshold_mode": "abs"},
        {"patience": 0, "eps": 0.02, "factor": 0.5, "min_lr": 0.001},
        {"mode": "max", "patience": 1, "threshold": 0.1, "factor": 0.3},
    ]
    for kw in configs:
        t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        t = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, **kw)
        opt = make_opt(lr=0.1)
        s = S.ReduceLROnPlateau(opt, **kw)
        for m in metrics:
            t.step(m)
            s.step(m)
            assert opt.lr == t_opt.param_groups[0]["lr"], kw
            assert (s.best, s.num_bad_epochs, s.cooldown_counter) == (
                t.best,
                t.num_bad_epochs,
                t.cooldown_counter,
            )
        assert opt.lr < 0.1, kw  # the schedule did reduce


def test_state_dict_keys_cover_torch():
    torch = pytest.importorskip("torch")
    opt = make_opt(momentum=0.9)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    for make, _ in TORCH_CASES.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_keys = set(make(torch.optim.lr_scheduler, t_opt).state_dict())
        keys = set(make(S, opt).state_dict())
        assert t_keys - keys <= {"_get_lr_called_within_step"}


# ------------------------------------------------------------------ state round trip


ROUND_TRIP = {
    **FACTORIES,
    "Plateau": lambda o: S.ReduceLROnPlateau(o, patience=1, cooldown=1, factor=0.5),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_state_dict_round_trip_mid_schedule(name, kind):
    make = ROUND_TRIP[name]

    def advance(s, k, offset=0):
        out = []
        for i in range(k):
            if isinstance(s, S.ReduceLROnPlateau):
                s.step([1.0, 0.8, 0.9, 0.9, 0.9, 0.7][(i + offset) % 6])
            else:
                s.step()
            out.append((s.optimizer.lr, s.optimizer.momentum, s.get_last_lr()))
        return out

    kw = {} if kind == "adam" else {"momentum": 0.9}
    a = make_opt(kind, lr=0.1, **kw)
    sa = make(a)
    advance(sa, 7)
    state = sa.state_dict()
    saved = (a.lr, a.momentum)
    assert "optimizer" not in state and state["last_epoch"] == 7
    want = advance(sa, 12, offset=7)

    b = make_opt(kind, lr=0.1, **kw)
    sb = make(b)
    sb.load_state_dict(state)
    assert (b.lr, b.momentum) == saved  # the optimizer is as the schedule had left it
    got = advance(sb, 12, offset=7)
    assert got == want
    assert sb.state_dict().keys() == sa.state_dict().keys()
    # the saved state was not aliased: stepping sa did not change it
    assert state["last_epoch"] == 7


def test_state_dict_is_a_copy():
    opt = make_opt()
    s = S.MultiStepLR(opt, [2, 4])
    st = s.state_dict()
    st["milestones"][3] = 1
    st["base_lrs"][0] = 9.0
    assert 3 not in s.milestones and s.base_lrs == [0.1]


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda o: S.StepLR("sgd", 2), TypeError, "optimizer"),
        (lambda o: S.StepLR(o, 0), ValueError, "step_size"),
        (lambda o: S.StepLR(o, 2.5), TypeError, "step_size"),
        (lambda o: S.StepLR(o, 2, gamma=0.0), ValueError, "gamma"),
        (lambda o: S.StepLR(o, 2, gamma="x"), TypeError, "gamma"),
        (lambda o: S.StepLR(o, 2, last_epoch=-2), ValueError, "last_epoch"),
        (lambda o: S.StepLR(o, 2, last_epoch=3), KeyError, "initial_lr"),
        (lambda o: S.MultiStepLR(o, [3, 2]), ValueError, "milestones"),
        (lambda o: S.MultiStepLR(o, [2, 2]), ValueError, "milestones"),
        (lambda o: S.MultiStepLR(o, [-1, 2]), ValueError, "milestones"),
        (lambda o: S.MultiStepLR(o, 3), TypeError, "milestones"),
        (lambda o: S.MultiStepLR(o, [1.5]), TypeError, "milestones"),
        (lambda o: S.MultiStepLR(o, [1], gamma=-1), ValueError, "gamma"),
        (lambda o: S.ExponentialLR(o, 0), ValueError, "gamma"),
        (lambda o: S.ExponentialLR(o, float("nan")), ValueError, "gamma"),
        (lambda o: S.CosineAnnealingLR(o, 0), ValueError, "T_max"),
        (lambda o: S.CosineAnnealingLR(o, 5, eta_min=-0.1), ValueError, "eta_min"),
        (lambda o: S.LinearLR(o, start_factor=0.0), ValueError, "start_factor"),
        (lambda o: S.LinearLR(o, start_factor=1.5), ValueError, "start_factor"),
        (lambda o: S.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
        (lambda o: S.LinearLR(o, end_factor=-0.1), ValueError, "end_factor"),
        (lambda o: S.LinearLR(o, total_iters=0), ValueError, "total_iters"),
        (lambda o: S.OneCycleLR(o, 0.1), ValueError, "total_steps OR"),
        (lambda o: S.OneCycleLR(o, 0.1, total_steps=0), ValueError, "total_steps"),
        (lambda o: S.OneCycleLR(o, 0.1, total_steps=2.0), ValueError, "total_steps"),
        (lambda o: S.OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=3), ValueError, "epochs"),
        (
            lambda o: S.OneCycleLR(o, 0.1, epochs=2, steps_per_epoch=-1),
            ValueError,
            "steps_per_epoch",
        ),
        (lambda o: S.OneCycleLR(o, 0.1, 10, pct_start=1.2), ValueError, "pct_start"),
        (lambda o: S.OneCycleLR(o, 0.1, 10, pct_start=-0.1), ValueError, "pct_start"),
        (lambda o: S.OneCycleLR(o, 0.1, 10, anneal_strategy="exp"), ValueError, "anneal_strategy"),
        (lambda o: S.OneCycleLR(o, [0.1, 0.2], 10), ValueError, "max_lr"),
        (lambda o: S.OneCycleLR(o, -0.1, 10), ValueError, "max_lr"),
        (lambda o: S.OneCycleLR(o, 0.1, 10, div_factor=0), ValueError, "div_factor"),
        (lambda o: S.OneCycleLR(o, 0.1, 10, final_div_factor=-1), ValueError, "final_div_factor"),
        (lambda o: S.OneCycleLR(o, 0.1, 10, base_momentum=-0.1), ValueError, "base_momentum"),
        (lambda o: S.OneCycleLR(o, 0.1, 10, cycle_momentum=1), TypeError, "cycle_momentum"),
        (lambda o: S.SequentialLR(o, [], []), ValueError, "at least one"),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), "x"], [3]), TypeError, r"schedulers\[1\]"),
        (
            lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], []),
            ValueError,
            "milestone",
        ),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2)] * 3, [5, 4]), ValueError, "milestones"),
        (lambda o: S.SequentialLR(o, [S.StepLR(make_opt(), 2)], []), ValueError, "same optimizer"),
        (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor"),
        (lambda o: S.ReduceLROnPlateau(o, factor=-0.5), ValueError, "factor"),
        (lambda o: S.ReduceLROnPlateau(o, mode="avg"), ValueError, "mode avg is unknown"),
        (
            lambda o: S.ReduceLROnPlateau(o, threshold_mode="x"),
            ValueError,
            "threshold mode x is unknown",
        ),
        (lambda o: S.ReduceLROnPlateau(o, mode=1), TypeError, "mode"),
        (lambda o: S.ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
        (lambda o: S.ReduceLROnPlateau(o, cooldown=1.5), TypeError, "cooldown"),
        (lambda o: S.ReduceLROnPlateau(o, min_lr=-1.0), ValueError, "min_lr"),
        (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1, 0.2]), ValueError, "min_lr"),
        (lambda o: S.ReduceLROnPlateau(o, eps=-1.0), ValueError, "eps"),
        (lambda o: S.ReduceLROnPlateau(o, threshold=-1.0), ValueError, "threshold"),
        (lambda o: S.ReduceLROnPlateau(None), TypeError, "optimizer"),
    ],
)
def test_argument_checks(make, exc, match):
    opt = make_opt(lr=0.1, momentum=0.9)
    with pytest.raises(exc, match=match):
        make(opt)
    assert opt.lr == 0.1 and opt.momentum == 0.9  # a refused schedule changed nothing


def test_onecycle_beta1_bounds_and_plateau_metric_type():
    opt = make_opt("adam")
    with pytest.raises(ValueError, match="max_momentum"):
        S.OneCycleLR(opt, 0.1, 10, max_momentum=1.0)
    assert opt.momentum == 0.9
    s = S.ReduceLROnPlateau(opt)
    with pytest.raises(TypeError, match="metrics"):
        s.step("low")


def test_resume_with_last_epoch_like_torch():
    opt = make_opt(lr=0.1)
    S.StepLR(opt, 3, gamma=0.5)  # records initial_lr for this optimizer
    opt.lr = 0.05  # as after 3 steps
    s = S.StepLR(opt, 3, gamma=0.5, last_epoch=3)
    assert s.last_epoch == 4 and s.base_lrs == [0.1]


def test_step_with_epoch_uses_closed_form_and_warns():
    opt = make_opt(lr=1.0)
    s = S.StepLR(opt, 2, gamma=0.5)
    with pytest.warns(UserWarning, match="deprecated"):
        s.step(5)
    assert s.last_epoch == 5 and opt.lr == 0.25


# ------------------------------------------------------------------ fit's protocol


def fake_epoch(opt, lrs, moms):
    """What fit's Rust epoch does with the values: step i runs at lrs[i] (and
    moms[i]); afterwards the optimizer's own values are put back."""
    saved = (opt.lr, opt.momentum)
    for i, lr in enumerate(lrs):
        opt.lr = lr
        if moms is not None:
            opt.momentum = moms[i]
        opt.zero_grad()
        opt.step()
    opt.lr = saved[0]
    if opt.momentum != saved[1]:
        opt.momentum = saved[1]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_per_step_values_equal_stepping_by_hand(name):
    a, b = make_opt("adam", lr=0.1), make_opt("adam", lr=0.1)
    sa, sb = FACTORIES[name](a), FACTORIES[name](b)
    lrs1, moms1 = sa._per_step_values(6)
    # right after the call the optimizer is as 6 calls of step() leave it
    want_lrs, want_moms = run(sb, 6)
    assert (a.lr, a.momentum, sa.last_epoch) == (b.lr, b.momentum, sb.last_epoch)
    fake_epoch(a, lrs1, moms1)
    lrs2, moms2 = sa._per_step_values(5)
    fake_epoch(a, lrs2, moms2)
    more_lrs, more_moms = run(sb, 5)
    assert lrs1 + lrs2 == want_lrs + more_lrs
    cycles = "OneCycle" in name or "1cycle" in name
    if cycles:
        assert moms1 is not None and moms2 is not None
        assert moms1 + moms2 == want_moms + more_moms
    else:
        assert moms1 is None and moms2 is None
    assert sa.get_last_lr() == sb.get_last_lr()
    assert (a.lr, a.momentum, sa.last_epoch) == (b.lr, b.momentum, sb.last_epoch)


def test_rewind_puts_the_schedule_where_the_steps_taken_leave_it():
    # an epoch that stopped after 2 of its 6 steps (stop_training, Ctrl-C, an error)
    a, b = make_opt("sgd", momentum=0.9), make_opt("sgd", momentum=0.9)
    sa, sb = S.OneCycleLR(a, 1.0, total_steps=20), S.OneCycleLR(b, 1.0, total_steps=20)
    snap = sa._snapshot()
    lrs, moms = sa._per_step_values(6)
    assert sa.last_epoch == 6
    fake_epoch(a, lrs[:2], moms[:2])
    sa._rewind(snap, 2)
    run(sb, 2)
    assert sa.state_dict() == sb.state_dict() and sa.last_epoch == 2
    assert (a.lr, a.momentum) == (b.lr, b.momentum)
    # no step at all: back to the start
    snap = sa._snapshot()
    sa._per_step_values(6)
    sa._rewind(snap, 0)
    assert sa.state_dict() == sb.state_dict() and (a.lr, a.momentum) == (b.lr, b.momentum)


def test_per_step_values_failure_leaves_everything_unchanged():
    opt = make_opt("sgd", momentum=0.9)
    s = S.OneCycleLR(opt, 0.5, total_steps=8)
    s.step()
    before = (s.state_dict(), opt.lr, opt.momentum)
    with pytest.raises(ValueError, match="Tried to step 9 times"):
        s._per_step_values(10)
    assert (s.state_dict(), opt.lr, opt.momentum) == before


def test_check_steps():
    opt = make_opt("sgd", momentum=0.9)
    s = S.OneCycleLR(opt, 0.5, total_steps=8)
    s._check_steps(8)
    s.step()
    s._check_steps(7)
    with pytest.raises(
        ValueError, match=r"^Tried to step 9 times\. The specified number of total steps is 8"
    ):
        s._check_steps(8)
    seq = S.SequentialLR(opt, [S.StepLR(opt, 2), S.OneCycleLR(opt, 0.5, total_steps=6)], [4])
    before = (seq.state_dict(), opt.lr, opt.momentum)
    seq._check_steps(10)  # 4 steps of StepLR, then 6 of OneCycleLR
    with pytest.raises(
        ValueError, match="Tried to step 7 times. The specified number of total steps is 6"
    ):
        seq._check_steps(11)
    assert (seq.state_dict(), opt.lr, opt.momentum) == before
    assert not hasattr(S.StepLR(opt, 2), "_check_steps")


def hand_loop(model, opt, sched, x, y, epochs, bs):
    """The PyTorch-style loop fit's per-step schedule must equal."""
    loss_fn = fg.losses.CrossEntropy()
    epoch_lrs = []
    for _ in range(epochs):
        epoch_lrs.append(opt.lr)
        for i in range(0, len(x), bs):
            out = model.forward(x[i : i + bs], training=True)
            loss_fn(out, y[i : i + bs])
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            sched.step()
    return epoch_lrs


FIT_CASES = {
    "sgd-momentum-onecycle": (
        lambda m: fg.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        lambda o: S.OneCycleLR(o, max_lr=0.3, total_steps=15),
    ),
    "adam-onecycle-beta1": (
        lambda m: fg.optim.Adam(m.parameters(), lr=0.01),
        lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=16, three_phase=True, pct_start=0.4),
    ),
    "sgd-cosine": (
        lambda m: fg.optim.SGD(m.parameters(), lr=0.2, momentum=0.5),
        lambda o: S.CosineAnnealingLR(o, T_max=6, eta_min=0.01),
    ),
    "adamw-sequential": (
        lambda m: fg.optim.AdamW(m.parameters(), lr=0.02),
        lambda o: S.SequentialLR(
            o, [S.LinearLR(o, 0.2, total_iters=4), S.ExponentialLR(o, 0.9)], [4]
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(FIT_CASES))
def test_fit_per_step_schedule_equals_custom_loop_bitwise(case):
    make_opt_, make_sched = FIT_CASES[case]
    x, y = blobs(n=70)  # 5 batches of 16 (the last one 6)
    bs, epochs = 16, 3
    m_fit = mlp(seed=5)
    o_fit = make_opt_(m_fit)
    s_fit = make_sched(o_fit)
    hist = m_fit.fit(
        x,
        y,
        "cross_entropy",
        o_fit,
        epochs=epochs,
        batch_size=bs,
        shuffle=False,
        verbose=0,
        scheduler=s_fit,
        scheduler_interval="step",
    )
    m_loop = mlp(seed=5)
    o_loop = make_opt_(m_loop)
    s_loop = make_sched(o_loop)
    epoch_lrs = hand_loop(m_loop, o_loop, s_loop, x, y, epochs, bs)

    assert o_fit.steps == o_loop.steps == 15
    a, b, init = m_fit.state_dict(), m_loop.state_dict(), mlp(seed=5).state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].tobytes() != init[k].tobytes(), k  # training moved every parameter
        assert a[k].tobytes() == b[k].tobytes(), k
    assert hist.history["learning_rate"] == epoch_lrs
    assert len(set(epoch_lrs)) == epochs  # the schedule really changed the lr
    assert s_fit.last_epoch == s_loop.last_epoch
    assert s_fit.get_last_lr() == s_loop.get_last_lr()
    # stepping on by hand after fit continues the same schedule
    if not isinstance(s_fit, S.OneCycleLR):
        s_fit.step()
        s_loop.step()
        assert (o_fit.lr, o_fit.momentum) == (o_loop.lr, o_loop.momentum)


def test_two_fits_continue_one_per_step_schedule():
    x, y = blobs(n=48)
    m_fit, m_loop = mlp(seed=2), mlp(seed=2)
    o_fit = fg.optim.SGD(m_fit.parameters(), lr=0.1, momentum=0.9)
    o_loop = fg.optim.SGD(m_loop.parameters(), lr=0.1, momentum=0.9)
    s_fit, s_loop = S.ExponentialLR(o_fit, 0.8), S.ExponentialLR(o_loop, 0.8)
    for _ in range(2):
        m_fit.fit(
            x,
            y,
            "cross_entropy",
            o_fit,
            epochs=1,
            batch_size=16,
            shuffle=False,
            verbose=0,
            scheduler=s_fit,
            scheduler_interval="step",
        )
    hand_loop(m_loop, o_loop, s_loop, x, y, 2, 16)
    for k, v in m_fit.state_dict().items():
        assert v.tobytes() == m_loop.state_dict()[k].tobytes(), k
    assert s_fit.get_last_lr() == s_loop.get_last_lr() == [0.1 * 0.8**6]


class StopAfter(fg.callbacks.Callback):
    """Stops training after n batches (fit's per-batch callback protocol)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.n:
            self.model.stop_training = True


def hand_steps(model, opt, sched, x, y, bs, starts):
    loss_fn = fg.losses.CrossEntropy()
    for i in starts:
        out = model.forward(x[i : i + bs], training=True)
        loss_fn(out, y[i : i + bs])
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        sched.step()


@pytest.mark.parametrize(
    "make",
    [lambda o: S.CosineAnnealingLR(o, T_max=5), lambda o: S.OneCycleLR(o, 0.5, total_steps=15)],
)
def test_fit_stopped_mid_epoch_rewinds_the_schedule_to_the_steps_taken(make):
    x, y = blobs(n=40)  # 5 batches of 8
    m_fit, m_loop = mlp(seed=4), mlp(seed=4)
    o_fit = fg.optim.SGD(m_fit.parameters(), lr=0.1, momentum=0.9)
    o_loop = fg.optim.SGD(m_loop.parameters(), lr=0.1, momentum=0.9)
    s_fit, s_loop = make(o_fit), make(o_loop)
    kw = dict(batch_size=8, shuffle=False, verbose=0, scheduler=s_fit, scheduler_interval="step")
    m_fit.fit(x, y, "cross_entropy", o_fit, epochs=3, callbacks=[StopAfter(7)], **kw)
    assert o_fit.steps == 7
    hand_steps(m_loop, o_loop, s_loop, x, y, 8, [0, 8, 16, 24, 32, 0, 8])
    # the schedule was advanced for a whole second epoch; asking for it settles it at 7 steps
    assert s_fit.get_last_lr() == s_loop.get_last_lr()
    assert s_fit.last_epoch == s_loop.last_epoch == 7
    assert (o_fit.lr, o_fit.momentum) == (o_loop.lr, o_loop.momentum)
    # and training on continues the same schedule
    m_fit.fit(x, y, "cross_entropy", o_fit, epochs=1, **kw)
    hand_steps(m_loop, o_loop, s_loop, x, y, 8, [0, 8, 16, 24, 32])
    for k, v in m_fit.state_dict().items():
        assert v.tobytes() == m_loop.state_dict()[k].tobytes(), k
    assert s_fit.state_dict() == s_loop.state_dict()


def test_fit_epoch_interval_lr_per_epoch():
    x, y = blobs(n=40)
    m = mlp(seed=1)
    opt = fg.optim.SGD(m.parameters(), lr=0.2)
    sched = S.StepLR(opt, step_size=2, gamma=0.5)
    hist = m.fit(
        x,
        y,
        "cross_entropy",
        opt,
        epochs=5,
        batch_size=8,
        shuffle=False,
        verbose=0,
        scheduler=sched,
        scheduler_interval="epoch",
    )
    assert hist.history["learning_rate"] == [0.2, 0.2, 0.1, 0.1, 0.05]
    assert sched.last_epoch == 5 and opt.lr == 0.05 and opt.steps == 25


def test_fit_epoch_interval_reduce_on_plateau_uses_val_loss():
    x, y = blobs(n=90)
    x, y, xv, yv = x[:60], y[:60], x[60:], y[60:]
    m = mlp(seed=3)
    opt = fg.optim.SGD(m.parameters(), lr=0.05)
    kw = {"mode": "max", "patience": 0, "factor": 0.5}  # max mode on a falling loss: reductions
    sched = S.ReduceLROnPlateau(opt, **kw)
    hist = m.fit(
        x,
        y,
        "cross_entropy",
        opt,
        epochs=5,
        batch_size=10,
        shuffle=False,
        verbose=0,
        validation_data=(xv, yv),
        scheduler=sched,
    )
    replay_opt = make_opt(lr=0.05)
    replay = S.ReduceLROnPlateau(replay_opt, **kw)
    lrs = []
    for v in hist.history["val_loss"]:
        lrs.append(replay_opt.lr)
        replay.step(v)
    assert hist.history["learning_rate"] == lrs
    assert opt.lr == replay_opt.lr < 0.05


def fit_refuses(m, opt, sched, interval, match, exc=ValueError):
    x, y = blobs(n=40)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    state = sched.state_dict()
    lr, mom = opt.lr, opt.momentum
    with pytest.raises(exc, match=match):
        m.fit(
            x,
            y,
            "cross_entropy",
            opt,
            epochs=3,
            batch_size=8,
            shuffle=False,
            verbose=0,
            scheduler=sched,
            scheduler_interval=interval,
        )
    for k, v in m.state_dict().items():
        assert v.tobytes() == before[k].tobytes(), k
    assert opt.steps == 0 and (opt.lr, opt.momentum) == (lr, mom)
    assert sched.state_dict() == state


def test_fit_refuses_scheduler_of_another_optimizer():
    m = mlp()
    opt = fg.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    other = fg.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    fit_refuses(m, opt, S.CosineAnnealingLR(other, 10), "step", "another optimizer")


def test_fit_refuses_unknown_interval_and_plateau_per_step():
    m = mlp()
    opt = fg.optim.SGD(m.parameters(), lr=0.1)
    fit_refuses(m, opt, S.StepLR(opt, 2), "batch", "scheduler_interval")
    fit_refuses(m, opt, S.ReduceLROnPlateau(opt), "step", "stepped once per epoch")


def test_fit_refuses_onecycle_too_short_before_training():
    m = mlp()
    opt = fg.optim.Adam(m.parameters(), lr=0.01)
    # 3 epochs of 5 steps = 15 steps, but the cycle has 14
    fit_refuses(
        m,
        opt,
        S.OneCycleLR(opt, 0.1, total_steps=14),
        "step",
        r"Tried to step 15 times\. The specified number of total steps is 14",
    )
    seq = S.SequentialLR(opt, [S.LinearLR(opt), S.OneCycleLR(opt, 0.1, total_steps=9)], [5])
    fit_refuses(
        m, opt, seq, "step", "Tried to step 10 times. The specified number of total steps is 9"
    )
    # exactly long enough: trains
    ok = S.OneCycleLR(opt, 0.1, total_steps=15)
    x, y = blobs(n=40)
    m.fit(
        x,
        y,
        "cross_entropy",
        opt,
        epochs=3,
        batch_size=8,
        shuffle=False,
        verbose=0,
        scheduler=ok,
        scheduler_interval="step",
    )
    assert opt.steps == 15 and ok.last_epoch == 15

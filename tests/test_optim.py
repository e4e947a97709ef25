"""Optimizers against a numpy transcription of torch.optim's documented
algorithms (https://pytorch.org/docs/stable/optim.html: SGD, Adam, AdamW,
RMSprop), driven with real gradients from the step API, plus gradient
accumulation, learning-rate changes and argument checking."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L
from ferrograd import optim

STEPS = 6  # steps per trajectory (>= 5, so momentum / moment buffers build up)

# torch.optim's default hyper-parameters (from the constructor signatures in
# the torch docs; SGD's lr has no default in ferrograd, so every case sets it).
TORCH_DEFAULTS = {
    "SGD": {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    "Adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "AdamW": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    "RMSprop": {
        "lr": 1e-2,
        "alpha": 0.99,
        "eps": 1e-8,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "centered": False,
    },
}

# Hyper-parameters: arbitrary non-default values, chosen so that every term
# of each update is of a visible size (a large eps, e.g. 1e-3 against
# sqrt(v) ~ 1e-2, makes where eps enters the denominator matter).
CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-3}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "betas": (0.85, 0.99), "eps": 1e-3, "weight_decay": 0.1}),
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "weight_decay": 0.1}),
    (
        "RMSprop",
        {
            "lr": 0.01,
            "alpha": 0.9,
            "eps": 1e-3,
            "momentum": 0.5,
            "centered": True,
            "weight_decay": 0.05,
        },
    ),
]


def case_id(case: tuple) -> str:
    kind, kw = case
    return kind + "".join(f"-{k}={v}" for k, v in kw.items())


# ------------------------------------------------------------------ reference


class Reference:
    """torch.optim's update equations in float64 numpy, one state per parameter name."""

    def __init__(self, kind: str, kwargs: dict) -> None:
        self.kind = kind
        self.hp = {**TORCH_DEFAULTS[kind], **kwargs}
        self.state: dict[str, dict] = {}
        self.t = 0

    def step(self, params: dict, grads: dict) -> dict:
        """New values of ``params`` (float64 copies) after one step."""
        self.t += 1
        return {
            name: self._update(p.astype(np.float64), grads[name].astype(np.float64), name)
            for name, p in params.items()
        }

    def _update(self, p: np.ndarray, g: np.ndarray, name: str) -> np.ndarray:
        hp, t = self.hp, self.t
        st = self.state.setdefault(name, {})
        lr, wd = hp["lr"], hp["weight_decay"]
        if self.kind == "SGD":
            mom, damp = hp["momentum"], hp["dampening"]
            d = g + wd * p
            if mom != 0:
                # torch: the buffer starts as the first gradient, undampened.
                st["b"] = d.copy() if t == 1 else mom * st["b"] + (1 - damp) * d
                d = d + mom * st["b"] if hp["nesterov"] else st["b"]
            return p - lr * d
        if self.kind in ("Adam", "AdamW"):
            b1, b2 = hp["betas"]
            eps = hp["eps"]
            if self.kind == "AdamW":
                p = p * (1 - lr * wd)  # decoupled weight decay
                d = g
            else:
                d = g + wd * p  # L2 penalty
            st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * d
            st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * d * d
            step_size = lr / (1 - b1**t)
            denom = np.sqrt(st["v"]) / math.sqrt(1 - b2**t) + eps
            return p - step_size * st["m"] / denom
        # RMSprop
        alpha, eps, mom = hp["alpha"], hp["eps"], hp["momentum"]
        d = g + wd * p
        st["v"] = alpha * st.get("v", 0.0) + (1 - alpha) * d * d
        if hp["centered"]:
            st["ga"] = alpha * st.get("ga", 0.0) + (1 - alpha) * d
            avg = np.sqrt(st["v"] - st["ga"] ** 2) + eps
        else:
            avg = np.sqrt(st["v"]) + eps
        if mom > 0:
            st["b"] = mom * st.get("b", 0.0) + d / avg
            return p - lr * st["b"]
        return p - lr * d / avg


def make_optimizer(kind: str, params: list, kwargs: dict) -> optim.Optimizer:
    return getattr(optim, kind)(params, **kwargs)


# ------------------------------------------------------------------ helpers


def small_model(dtype: str = "float64", seed: int = 0) -> fg.Sequential:
    return fg.Sequential([L.Dense(5, 4), L.Tanh(), L.Dense(4, 3)], seed=seed, dtype=dtype)


def data(dtype: str = "float64", n: int = 8, d: int = 5, c: int = 3):
    rng = np.random.default_rng(42)
    return rng.normal(size=(n, d)).astype(dtype), rng.normal(size=(n, c)).astype(dtype)


def compute_grads(model: fg.Sequential, x: np.ndarray, y: np.ndarray) -> dict:
    """Zeroes, then fills the model's gradients of the MSE on (x, y); returns them."""
    model.zero_grad()
    loss_fn = fg.losses.MSE()
    loss_fn(model.forward(x, training=True), y)
    model.backward(loss_fn.backward())
    return {p.name: p.grad for p in model.parameters()}


# Tolerances. float64: a step is a handful of float64 operations on O(1)
# values, so rtol 1e-12; atol 2e-15 (~10 ulp of 1.0, ulp = 2.2e-16) covers
# elements that pass near 0. Updates (after - before) are compared with rtol
# 1e-9: they are ~1e-3 and carry the ~1e-16 rounding of the parameters.
# float32: machine epsilon 1.2e-7, a few operations per step, 6 steps: rtol
# 1e-5, atol 1e-6.
TOL = {"float64": {"rtol": 1e-12, "atol": 2e-15}, "float32": {"rtol": 1e-5, "atol": 1e-6}}


def check_trajectory(
    model: fg.Sequential,
    opt: optim.Optimizer,
    ref: Reference,
    x: np.ndarray,
    y: np.ndarray,
    names: list | None = None,
) -> None:
    """STEPS steps of ``opt`` against ``ref`` on the parameters ``names``
    (default: all); the other parameters must not move."""
    dtype = model.dtype.name
    names = names if names is not None else list(model.state_dict())
    for step in range(1, STEPS + 1):
        grads = compute_grads(model, x, y)
        before = model.state_dict()
        want = ref.step({n: before[n] for n in names}, grads)
        opt.step()
        after = model.state_dict()
        assert opt.steps == step
        for name, v in after.items():
            assert v.dtype == model.dtype
            if name not in names:
                np.testing.assert_array_equal(v, before[name], err_msg=name)
                continue
            msg = f"{name}, step {step}"
            np.testing.assert_allclose(v, want[name], **TOL[dtype], err_msg=msg)
            if dtype == "float64":
                np.testing.assert_allclose(
                    v - before[name], want[name] - before[name], rtol=1e-9, atol=2e-15, err_msg=msg
                )
            assert not np.array_equal(v, before[name]), msg  # it did move
        # The optimizer leaves gradients alone.
        for p in model.parameters():
            np.testing.assert_array_equal(p.grad, grads[p.name])


# ------------------------------------------------------------------ update equations


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_update_matches_torch_equations(case: tuple, dtype: str) -> None:
    kind, kwargs = case
    model = small_model(dtype)
    x, y = data(dtype)
    opt = make_optimizer(kind, model.parameters(), kwargs)
    check_trajectory(model, opt, Reference(kind, kwargs), x, y)


@pytest.mark.parametrize(
    "case",
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
        ("AdamW", {"lr": 0.01}),
        ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ],
    ids=case_id,
)
def test_update_parallel_path(case: tuple) -> None:
    """A 200 x 100 weight (20000 elements): the engine updates in parallel
    from 8192 elements (8 * len >= 2**16) in chunks of 2**14 = 16384, so the
    state of the second chunk must line up with its elements."""
    fg.set_num_threads(2)
    kind, kwargs = case
    model = fg.Sequential([L.Dense(200, 100)], seed=0, dtype="float64")
    x, y = data(n=16, d=200, c=100)
    opt = make_optimizer(kind, model.parameters(), kwargs)
    check_trajectory(model, opt, Reference(kind, kwargs), x, y)


def test_subset_of_parameters_only_changes_those() -> None:
    model = small_model()
    x, y = data()
    params = model.parameters()
    subset = [params[0], params[2]]  # 0.weight and 2.weight, not the biases
    kwargs = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    opt = optim.SGD(subset, **kwargs)
    assert opt.params == subset
    check_trajectory(model, opt, Reference("SGD", kwargs), x, y, names=["0.weight", "2.weight"])


def test_subset_with_adam_and_named_parameters() -> None:
    model = small_model()
    x, y = data()
    opt = optim.Adam([("2.bias", model.parameters()[3])], lr=0.01)  # a (name, param) pair
    check_trajectory(model, opt, Reference("Adam", {"lr": 0.01}), x, y, names=["2.bias"])


def test_fit_with_subset_optimizer_only_trains_those() -> None:
    model = small_model()
    x, y = data()
    before = model.state_dict()
    opt = optim.SGD([model.parameters()[1]], lr=0.1)  # 0.bias only
    model.fit(x, y, "mse", opt, epochs=2, batch_size=4, verbose=0)
    after = model.state_dict()
    assert not np.array_equal(after["0.bias"], before["0.bias"])
    for name in ("0.weight", "2.weight", "2.bias"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_reset_forgets_state() -> None:
    """After reset() the step count and moments start over: the next step is
    a first step (bias corrections with t = 1)."""
    model = small_model()
    x, y = data()
    opt = optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        compute_grads(model, x, y)
        opt.step()
    assert opt.steps == 3
    opt.reset()
    assert opt.steps == 0
    check_trajectory(model, opt, Reference("Adam", {"lr": 0.01}), x, y)


# ------------------------------------------------------------------ gradients and lr


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backward_twice_doubles_gradient_and_zero_grad_clears(dtype: str) -> None:
    model = small_model(dtype)
    x, y = data(dtype)
    loss_fn = fg.losses.MSE()
    loss_fn(model.forward(x, training=True), y)
    g = loss_fn.backward()
    model.backward(g)
    once = {p.name: p.grad for p in model.parameters()}
    assert all(np.any(v != 0) for v in once.values())
    model.backward(g)  # same forward pass, no zero_grad: gradients add up
    rtol = TOL[dtype]["rtol"]
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, 2 * once[p.name], rtol=rtol, err_msg=p.name)

    # A step uses the accumulated (doubled) gradient: p - lr * 2g.
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    opt.step()
    for name, v in model.state_dict().items():
        want = before[name].astype(np.float64) - 0.1 * 2 * once[name].astype(np.float64)
        np.testing.assert_allclose(v, want, **TOL[dtype], err_msg=name)

    opt.zero_grad()
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape, dtype=dtype))
    model.backward(g)
    model.zero_grad()
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape, dtype=dtype))


def test_lr_change_applies_to_next_step() -> None:
    model = small_model()
    x, y = data()
    opt = optim.SGD(model.parameters(), lr=0.1)
    assert opt.lr == 0.1
    grads = compute_grads(model, x, y)
    p0 = model.state_dict()
    opt.step()
    p1 = model.state_dict()
    opt.lr = 0.02
    assert opt.lr == 0.02
    assert opt.defaults["lr"] == 0.02
    opt.step()  # same gradients (step does not touch them)
    p2 = model.state_dict()
    for name in p0:
        np.testing.assert_allclose(p1[name], p0[name] - 0.1 * grads[name], **TOL["float64"])
        np.testing.assert_allclose(p2[name], p1[name] - 0.02 * grads[name], **TOL["float64"])


def test_lr_change_in_adam_keeps_moments() -> None:
    model = small_model()
    x, y = data()
    opt = optim.Adam(model.parameters(), lr=0.01)
    ref = Reference("Adam", {"lr": 0.01})
    for step in range(4):
        if step == 2:
            opt.lr = ref.hp["lr"] = 0.003
        grads = compute_grads(model, x, y)
        want = ref.step(model.state_dict(), grads)
        opt.step()
        for name, v in model.state_dict().items():
            np.testing.assert_allclose(v, want[name], **TOL["float64"], err_msg=name)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_lr_assignment_raises_and_keeps_lr(bad: float) -> None:
    opt = optim.SGD(small_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        opt.lr = bad
    assert opt.lr == 0.1


def test_non_numeric_lr_assignment_raises_type_error() -> None:
    opt = optim.SGD(small_model().parameters(), lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        opt.lr = "fast"
    assert opt.lr == 0.1


# ------------------------------------------------------------------ argument checks

NAN = float("nan")
BAD_HYPERPARAMETERS = [
    ("SGD", {"lr": 0.0}, "learning rate"),
    ("SGD", {"lr": -0.1}, "learning rate"),
    ("SGD", {"lr": NAN}, "learning rate"),
    ("SGD", {"lr": float("inf")}, "learning rate"),
    ("SGD", {"lr": 0.1, "momentum": -0.1}, "momentum"),
    ("SGD", {"lr": 0.1, "momentum": NAN}, "momentum"),
    ("SGD", {"lr": 0.1, "dampening": -0.1}, "dampening"),
    ("SGD", {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
    ("SGD", {"lr": 0.1, "nesterov": True}, "(?i)nesterov"),  # no momentum
    ("SGD", {"lr": 0.1, "nesterov": True, "momentum": 0.9, "dampening": 0.1}, "(?i)nesterov"),
    ("Adam", {"lr": 0.0}, "learning rate"),
    ("Adam", {"lr": NAN}, "learning rate"),
    ("Adam", {"betas": (1.0, 0.999)}, "beta1"),
    ("Adam", {"betas": (-0.1, 0.999)}, "beta1"),
    ("Adam", {"betas": (0.9, 1.0)}, "beta2"),
    ("Adam", {"betas": (0.9, -0.5)}, "beta2"),
    ("Adam", {"betas": (0.9, NAN)}, "beta2"),
    ("Adam", {"eps": -1e-8}, "eps"),
    ("Adam", {"weight_decay": -0.01}, "weight_decay"),
    ("AdamW", {"lr": -1.0}, "learning rate"),
    ("AdamW", {"betas": (1.5, 0.999)}, "beta1"),
    ("AdamW", {"eps": -1.0}, "eps"),
    ("AdamW", {"weight_decay": -0.01}, "weight_decay"),
    ("RMSprop", {"lr": 0.0}, "learning rate"),
    ("RMSprop", {"alpha": 1.5}, "alpha"),
    ("RMSprop", {"alpha": -0.1}, "alpha"),
    ("RMSprop", {"eps": -1e-8}, "eps"),
    ("RMSprop", {"momentum": -0.5}, "momentum"),
    ("RMSprop", {"weight_decay": -0.1}, "weight_decay"),
]


@pytest.mark.parametrize(
    "kind,kwargs,match",
    BAD_HYPERPARAMETERS,
    ids=[case_id((k, kw)) for k, kw, _ in BAD_HYPERPARAMETERS],
)
def test_bad_hyperparameters_raise_value_error(kind: str, kwargs: dict, match: str) -> None:
    model = small_model()
    with pytest.raises(ValueError, match=match):
        make_optimizer(kind, model.parameters(), kwargs)


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("SGD", {"lr": True}),
        ("SGD", {"lr": None}),
        ("Adam", {"betas": 0.9}),
        ("RMSprop", {"momentum": [0.9]}),
    ],
    ids=["lr-bool", "lr-None", "betas-scalar", "momentum-list"],
)
def test_non_numeric_hyperparameters_raise_type_error(kind: str, kwargs: dict) -> None:
    with pytest.raises(TypeError):
        make_optimizer(kind, small_model().parameters(), kwargs)


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_empty_parameter_list_raises(kind: str) -> None:
    kwargs = {"lr": 0.1} if kind == "SGD" else {}
    with pytest.raises(ValueError, match="empty"):
        make_optimizer(kind, [], kwargs)
    with pytest.raises(ValueError, match="empty"):
        make_optimizer(kind, iter(()), kwargs)


def test_non_parameter_items_raise_type_error() -> None:
    model = small_model()
    with pytest.raises(TypeError, match="parameters"):
        optim.Adam([model.state_dict()["0.weight"]])


def test_parameters_of_two_models_raise() -> None:
    a, b = small_model(seed=0), small_model(seed=1)
    with pytest.raises(ValueError, match="same model"):
        optim.SGD([a.parameters()[0], b.parameters()[0]], lr=0.1)


def test_same_parameter_twice_raises() -> None:
    model = small_model()
    p = model.parameters()[0]
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([p, p], lr=0.1)


def test_fit_with_other_models_optimizer_raises_and_changes_nothing() -> None:
    model, other = small_model(seed=0), small_model(seed=1)
    x, y = data()
    opt = optim.SGD(other.parameters(), lr=0.1)
    before, other_before = model.state_dict(), other.state_dict()
    with pytest.raises(ValueError, match="another model"):
        model.fit(x, y, "mse", opt, epochs=1, verbose=0)
    for name in before:
        np.testing.assert_array_equal(model.state_dict()[name], before[name])
        np.testing.assert_array_equal(other.state_dict()[name], other_before[name])
    assert opt.steps == 0


def test_get_by_name_uses_torch_defaults() -> None:
    model = small_model()
    sgd = optim.get("sgd", model.parameters())
    assert isinstance(sgd, optim.SGD) and sgd.lr == 0.01  # documented: "sgd" uses lr=0.01
    for name, cls in (("adam", optim.Adam), ("AdamW", optim.AdamW), ("rmsprop", optim.RMSprop)):
        opt = optim.get(name, model.parameters())
        assert type(opt) is cls
        assert opt.lr == TORCH_DEFAULTS[cls.__name__]["lr"]
    existing = optim.Adam(model.parameters())
    assert optim.get(existing, model.parameters()) is existing
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.get("adagrad", model.parameters())

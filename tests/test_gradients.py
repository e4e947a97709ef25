"""Backpropagation against finite differences.

Every layer and every loss goes through ``fg.gradcheck`` in float64; layers
without parameters sit between two Dense layers so that their input gradient
reaches the first Dense's weights. Independently of ``gradcheck``, the step
API (``forward`` / ``loss.backward`` / ``model.backward`` / ``p.grad``) is
checked against a numpy forward pass, numpy central differences taken through
``load_state_dict``, and a numpy backward pass.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

# Bound on fg.gradcheck's worst relative error in float64 (the project's
# acceptance bound for backprop; a wrong term typically gives 1e-2 or more).
GRAD_TOL = 1e-6
# Batch, input features, hidden width and outputs of the small test models:
# small, because gradcheck costs two forward passes per parameter element.
N, D, H, C = 4, 5, 6, 3
# Finite-difference step passed to fg.gradcheck (its default is 1e-6). The
# numeric gradient's error is round-off ~1e-16 * |loss| / eps plus truncation
# ~eps^2 * f''' / 6; over 1152 model/loss draws of these tests, the worst
# absolute error per parameter was (50th / 99th / max percentile):
#   eps=1e-6: 2.5e-10 / 6.6e-9 / 3.3e-8;  eps=1e-5: 3.0e-11 / 6.3e-10 / 3.6e-9;
#   eps=1e-4: 8.6e-10 / 2.9e-8 / 7.6e-8.
# 1e-5 is the sweet spot. gradcheck divides by the element's own gradient
# (skipping only elements below 1e-7), so see MIN_GRAD.
GRADCHECK_EPS = 1e-5
# Every non-zero gradient element must be at least this large, or the
# relative error above is noise: 6.3e-10 / 1e-3 = 6.3e-7 < GRAD_TOL. Drawn
# models/data that have smaller elements are redrawn (see draw()), just as
# draws with a pre-activation too close to a ReLU kink are. (Measured on the
# draws these tests use: worst relative error 1.1e-7.)
MIN_GRAD = 1e-3
# Pre-activations of ReLU/LeakyReLU must stay this far from the kink at 0:
# gradcheck moves a weight by GRADCHECK_EPS, which moves a pre-activation by
# |x| * 1e-5 <~ 1e-4 for inputs |x| <~ 10, so 1e-3 leaves a 10x margin.
KINK_MARGIN = 1e-3
# Std of the random parameters loaded into each model: O(1) weights keep
# activations away from saturation and make biases non-zero (the inits leave
# them at 0), so every term of the gradient matters.
PARAM_STD = 0.7
SEED = 1234  # first seed draw() tries; any fixed value works
MAX_DRAWS = 1000  # draw() gives up after this many seeds (measured: <= 163 needed)
# Dropout cases: the precondition is checked under this many masks, since
# gradcheck's own (fixed) mask is not visible through the public API.
MASK_DRAWS = 4
LOSSES = ("mse", "cross_entropy_labels", "cross_entropy_probs", "binary_cross_entropy")


# ------------------------------------------------------------------ helpers


def loss_name(kind: str) -> str:
    """The ferrograd loss name for one of LOSSES (the two CE kinds share one)."""
    return "cross_entropy" if kind.startswith("cross_entropy") else kind


def make_target(kind: str, rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Random targets of the right kind for an output of shape (n, c)."""
    if kind == "mse":
        return rng.normal(size=(n, c))
    if kind == "cross_entropy_labels":
        return rng.integers(0, c, size=n)  # int64 class labels
    if kind == "cross_entropy_probs":
        z = rng.normal(size=(n, c))
        return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # rows sum to 1
    t = rng.uniform(size=(n, c))
    t[0, 0], t[-1, -1] = 0.0, 1.0  # the interval's ends are valid BCE targets
    return t


def randomize(model: fg.Sequential, rng: np.random.Generator) -> None:
    """Loads N(0, PARAM_STD^2) values into every parameter."""
    model.load_state_dict(
        {name: rng.normal(0.0, PARAM_STD, size=v.shape) for name, v in model.state_dict().items()}
    )


def step_grads(model: fg.Sequential, kind: str, x: np.ndarray, y: np.ndarray) -> dict:
    """Gradients from the step API (zeroed before and after)."""
    loss_fn = fg.losses.get(loss_name(kind))
    model.zero_grad()
    loss_fn(model.forward(x, training=True), y)
    model.backward(loss_fn.backward())
    grads = {p.name: p.grad for p in model.parameters()}
    model.zero_grad()
    return grads


def well_sized(grads: dict) -> bool:
    """Every parameter has a non-zero gradient, and no element is non-zero
    but below MIN_GRAD (exact zeros, e.g. dead ReLUs or dropped units, are
    exactly zero numerically too, and gradcheck skips them)."""
    return all(
        np.any(g != 0) and np.all((g == 0) | (np.abs(g) >= MIN_GRAD)) for g in grads.values()
    )


class Case(NamedTuple):
    """A model to check: its layers, the per-sample input shape, and for
    models with a ReLU-type kink, the affine map (scale, offset) from the
    first Dense output to the kinked activation's input."""

    layers: Callable[[], list]
    in_shape: tuple
    kink: tuple | None = None


def mid(*layers: L.Layer) -> Callable[[], list]:
    """``layers`` between Dense(D, H) and Dense(H, C)."""
    return lambda: [L.Dense(D, H), *layers, L.Dense(H, C)]


def rescaled(act: L.Layer) -> Callable[[], list]:
    """``act`` after Dense(D, H) -> Rescaling(1.5, 0.1), which keeps the
    activation its own layer instead of fused into the Dense (the engine fuses
    ReLU/LeakyReLU(slope > 0)/Sigmoid/Tanh that directly follow a Dense)."""
    return lambda: [L.Dense(D, H), L.Rescaling(1.5, 0.1), act, L.Dense(H, C)]


RESCALED = (1.5, 0.1)  # the (scale, offset) of rescaled()
NO_AFFINE = (1.0, 0.0)

CASES = {
    "dense_dense": Case(lambda: [L.Dense(D, H), L.Dense(H, C)], (D,)),
    "relu_fused": Case(mid(L.ReLU()), (D,), NO_AFFINE),
    "relu_fused_nobias": Case(
        lambda: [L.Dense(D, H, bias=False), L.ReLU(), L.Dense(H, C, bias=False)], (D,), NO_AFFINE
    ),
    "relu_standalone": Case(rescaled(L.ReLU()), (D,), RESCALED),
    "leaky_relu_fused": Case(mid(L.LeakyReLU()), (D,), NO_AFFINE),
    "leaky_relu_0.2_fused": Case(mid(L.LeakyReLU(0.2)), (D,), NO_AFFINE),
    "leaky_relu_standalone": Case(rescaled(L.LeakyReLU(0.2)), (D,), RESCALED),
    # A negative slope cannot be fused (its derivative is not a function of the output).
    "leaky_relu_negative_slope": Case(mid(L.LeakyReLU(-0.5)), (D,), NO_AFFINE),
    "sigmoid_fused": Case(mid(L.Sigmoid()), (D,)),
    "sigmoid_standalone": Case(rescaled(L.Sigmoid()), (D,)),
    "tanh_fused": Case(mid(L.Tanh()), (D,)),
    "tanh_standalone": Case(rescaled(L.Tanh()), (D,)),
    "gelu": Case(mid(L.GELU()), (D,)),
    "gelu_standalone": Case(rescaled(L.GELU()), (D,)),
    "softmax": Case(mid(L.Softmax()), (D,)),
    "dropout_0.5": Case(mid(L.Dropout(0.5)), (D,)),
    "relu_dropout_0.3": Case(mid(L.ReLU(), L.Dropout(0.3)), (D,), NO_AFFINE),
    "dropout_0": Case(mid(L.Dropout(0.0)), (D,)),
    "rescaling": Case(mid(L.Rescaling(0.5, 0.25)), (D,)),
    "rescaling_negative": Case(mid(L.Rescaling(-2.0)), (D,)),
    # (N, 3, 4) inputs: Dense acts on the last axis, Flatten joins the rest.
    "dense3d_flatten": Case(lambda: [L.Dense(4, H), L.Flatten(), L.Dense(3 * H, C)], (3, 4)),
    "dense3d_tanh_flatten": Case(
        lambda: [L.Dense(4, H), L.Tanh(), L.Flatten(), L.Dense(3 * H, C)], (3, 4)
    ),
    "flatten_first": Case(lambda: [L.Flatten(), L.Dense(12, H), L.Tanh(), L.Dense(H, C)], (3, 4)),
    # Rescaling(4.0) after the Softmax: softmax outputs are < 1 and its
    # Jacobian small, so without it the first layers' gradients fall below
    # MIN_GRAD. No Dropout here: requiring MIN_GRAD under MASK_DRAWS masks of a
    # 4-Dense stack rejects thousands of seeds (Dropout has its own cases).
    "deep_mixed": Case(
        lambda: [
            L.Dense(D, H),
            L.GELU(),
            L.Dense(H, H),
            L.Tanh(),
            L.Dense(H, H),
            L.Softmax(),
            L.Rescaling(4.0),
            L.Dense(H, C),
        ],
        (D,),
    ),
}


def away_from_kink(model: fg.Sequential, x: np.ndarray, affine: tuple) -> bool:
    """The kinked activation's inputs are >= KINK_MARGIN from 0 and of both
    signs (so both branches are exercised)."""
    sd = model.state_dict()
    pre = x @ sd["0.weight"].T + sd.get("0.bias", 0.0)
    pre = pre * affine[0] + affine[1]
    return bool(np.min(np.abs(pre)) > KINK_MARGIN and (pre > 0).any() and (pre < 0).any())


def draw(
    layers: Callable[[], list],
    in_shape: tuple,
    kind: str,
    kink: tuple | None = None,
    make_x: Callable | None = None,
    keep_init: bool = False,
) -> tuple[fg.Sequential, np.ndarray, np.ndarray]:
    """A float64 model (random parameters unless ``keep_init``), inputs and
    targets from the first seed from SEED on whose draw is well conditioned
    for finite differences: away from kinks, gradients well_sized()."""
    has_dropout = any(isinstance(ly, L.Dropout) and ly.p > 0 for ly in layers())
    for seed in range(SEED, SEED + MAX_DRAWS):
        rng = np.random.default_rng(seed)
        model = fg.Sequential(layers(), seed=seed, dtype="float64")
        if not keep_init:
            randomize(model, rng)
        x = make_x(rng) if make_x else rng.normal(size=(N, *in_shape))
        y = make_target(kind, rng, N, C)
        if kink is not None and not away_from_kink(model, x, kink):
            continue
        masks = MASK_DRAWS if has_dropout else 1
        if all(well_sized(step_grads(model, kind, x, y)) for _ in range(masks)):
            return model, x, y
    raise AssertionError(f"no well-conditioned draw in {MAX_DRAWS} seeds")


# ------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("case_id", list(CASES))
def test_gradcheck_layers_and_losses(case_id: str, kind: str) -> None:
    case = CASES[case_id]
    model, x, y = draw(case.layers, case.in_shape, kind, case.kink)

    report = fg.gradcheck(model, loss_name(kind), x, y, eps=GRADCHECK_EPS)

    assert list(report) == list(model.state_dict())  # every parameter, in order
    bad = {k: v for k, v in report.items() if not v < GRAD_TOL}
    assert not bad, f"relative errors above {GRAD_TOL}: {bad}"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("init", ["he", "xavier", "lecun", "zeros"])
def test_gradcheck_dense_inits(init: str, bias: bool) -> None:
    """Dense with each init, as initialised (parameters not overwritten)."""

    def layers() -> list:
        # One layer: with zero weights in front of a Tanh, the next layer's
        # weight gradient would be exactly 0 and the check vacuous.
        return [L.Dense(D, C, bias=bias, init=init)]

    model, x, y = draw(layers, (D,), "mse", keep_init=True)
    sd = model.state_dict()
    assert list(sd) == (["0.weight", "0.bias"] if bias else ["0.weight"])
    assert sd["0.weight"].shape == (C, D)
    assert np.all(sd["0.weight"] == 0.0) == (init == "zeros")
    if bias:
        np.testing.assert_array_equal(sd["0.bias"], np.zeros(C))  # biases start at zero

    report = fg.gradcheck(model, "mse", x, y, eps=GRADCHECK_EPS)

    assert list(report) == list(sd)
    assert all(v < GRAD_TOL for v in report.values()), report


def test_gradcheck_uint8_input_through_rescaling() -> None:
    """Raw uint8 pixels, rescaled inside the model, as in the MNIST example."""

    def layers() -> list:
        return [L.Flatten(), L.Rescaling(1 / 255), L.Dense(12, H), L.Tanh(), L.Dense(H, C)]

    def make_x(rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 256, size=(N, 3, 4), dtype=np.uint8)

    model, x, y = draw(layers, (3, 4), "cross_entropy_labels", make_x=make_x)
    assert x.dtype == np.uint8
    report = fg.gradcheck(model, "cross_entropy", x, y, eps=GRADCHECK_EPS)
    assert list(report) == ["2.weight", "2.bias", "4.weight", "4.bias"]
    assert all(v < GRAD_TOL for v in report.values()), report


def test_gradcheck_rejects_float32_model() -> None:
    model = fg.Sequential([L.Dense(D, C)], seed=0)  # float32 by default
    x = np.zeros((N, D), dtype=np.float32)
    y = np.zeros((N, C), dtype=np.float32)
    with pytest.raises(ValueError, match="float64"):
        fg.gradcheck(model, "mse", x, y)


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan")])
def test_gradcheck_rejects_bad_eps(eps: float) -> None:
    model = fg.Sequential([L.Dense(D, C)], seed=0, dtype="float64")
    with pytest.raises(ValueError, match="eps"):
        fg.gradcheck(model, "mse", np.ones((N, D)), np.ones((N, C)), eps=eps)


def test_gradcheck_leaves_model_unchanged() -> None:
    """Parameters, accumulated gradients and the random stream (dropout
    masks) are as before the check."""

    def make() -> fg.Sequential:
        m = fg.Sequential(
            [L.Dense(D, H), L.Tanh(), L.Dropout(0.5), L.Dense(H, C)], seed=7, dtype="float64"
        )
        randomize(m, np.random.default_rng(7))
        return m

    rng = np.random.default_rng(SEED)
    x, y = rng.normal(size=(N, D)), rng.normal(size=(N, C))
    model, twin = make(), make()
    loss_fn = fg.losses.MSE()
    for m in (model, twin):
        loss_fn(m.forward(x, training=True), y)
        m.backward(loss_fn.backward())
    params = model.state_dict()
    grads = {p.name: p.grad for p in model.parameters()}
    assert any(np.any(g != 0) for g in grads.values())

    fg.gradcheck(model, "mse", x, y)

    for name, v in model.state_dict().items():
        np.testing.assert_array_equal(v, params[name])
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, grads[p.name])
    # Same random stream as the twin that ran no check: same dropout masks.
    np.testing.assert_array_equal(model.forward(x, training=True), twin.forward(x, training=True))


# ------------------------------------------------------------------ numpy reference


def np_loss(kind: str, out: np.ndarray, y: np.ndarray) -> float:
    """Mean losses as torch defines them (MSELoss, CrossEntropyLoss, BCEWithLogitsLoss)."""
    if kind == "mse":
        return float(np.mean((out - y) ** 2))
    m = out.max(axis=1, keepdims=True)
    logp = out - m - np.log(np.exp(out - m).sum(axis=1, keepdims=True))  # log_softmax
    if kind == "cross_entropy_labels":
        return float(-np.mean(logp[np.arange(len(y)), y]))
    if kind == "cross_entropy_probs":
        return float(-np.mean(np.sum(y * logp, axis=1)))
    return float(np.mean(np.maximum(out, 0) - out * y + np.log1p(np.exp(-np.abs(out)))))


def np_loss_grad(kind: str, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(mean loss)/d(out) in closed form."""
    n = len(out)
    if kind == "mse":
        return 2 * (out - y) / out.size
    if kind == "binary_cross_entropy":
        return (1 / (1 + np.exp(-out)) - y) / out.size
    sm = np.exp(out - out.max(axis=1, keepdims=True))
    sm /= sm.sum(axis=1, keepdims=True)
    t = np.eye(out.shape[1])[y] if kind == "cross_entropy_labels" else y
    return (sm * t.sum(axis=1, keepdims=True) - t) / n


_erf = np.vectorize(math.erf)

# act(z) and d act / dz, for the numpy two-layer network below.
ACTS = {
    "tanh": (L.Tanh, np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (L.ReLU, lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
    "sigmoid": (
        L.Sigmoid,
        lambda z: 1 / (1 + np.exp(-z)),
        lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2,
    ),
    # GELU(z) = z * Phi(z); GELU'(z) = Phi(z) + z * phi(z)
    "gelu": (
        L.GELU,
        lambda z: 0.5 * z * (1 + _erf(z / np.sqrt(2))),
        lambda z: 0.5 * (1 + _erf(z / np.sqrt(2))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi),
    ),
}


def np_forward(sd: dict, x: np.ndarray, act: str = "tanh") -> np.ndarray:
    """Dense -> act -> Dense with torch.nn.Linear's y = x W^T + b."""
    f = ACTS[act][1]
    h = f(x @ sd["0.weight"].T + sd["0.bias"])
    return h @ sd["2.weight"].T + sd["2.bias"]


def np_backward(sd: dict, x: np.ndarray, dout: np.ndarray, act: str = "tanh") -> dict:
    """Parameter gradients of Dense -> act -> Dense given dL/d(output)."""
    f, df = ACTS[act][1], ACTS[act][2]
    z = x @ sd["0.weight"].T + sd["0.bias"]
    h = f(z)
    dz = (dout @ sd["2.weight"]) * df(z)
    return {
        "0.weight": dz.T @ x,
        "0.bias": dz.sum(axis=0),
        "2.weight": dout.T @ h,
        "2.bias": dout.sum(axis=0),
    }


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Worst |a - b| / max(|a|, |b|) over elements where either exceeds 1e-7
    (the same definition as fg.gradcheck's, so the same bound applies)."""
    scale = np.maximum(np.abs(a), np.abs(b))
    mask = scale > 1e-7
    return float(np.max(np.abs(a - b)[mask] / scale[mask])) if mask.any() else 0.0


@pytest.mark.parametrize("kind", LOSSES)
def test_step_api_matches_numpy_finite_differences(kind: str) -> None:
    # A draw whose gradient elements are all >= MIN_GRAD (see draw()).
    model, x, y = draw(lambda: [L.Dense(4, 5), L.Tanh(), L.Dense(5, C)], (4,), kind)
    sd0 = model.state_dict()

    # Forward and loss value against numpy (float64 round-off only: rtol 1e-12).
    loss_fn = fg.losses.get(loss_name(kind))
    model.zero_grad()
    out = model.forward(x, training=True)
    np.testing.assert_allclose(out, np_forward(sd0, x), rtol=1e-12, atol=1e-14)
    value = loss_fn(out, y)
    assert value == pytest.approx(np_loss(kind, np_forward(sd0, x), y), rel=1e-12)
    model.backward(loss_fn.backward())
    analytic = {p.name: p.grad for p in model.parameters()}

    # Central differences in numpy, each parameter moved through load_state_dict
    # and read back through state_dict, with the step chosen for gradcheck
    # (GRADCHECK_EPS: the 99th-percentile absolute error measured above,
    # 6.3e-10, is below GRAD_TOL * MIN_GRAD = 1e-9).
    h = GRADCHECK_EPS
    numeric = {}
    for name, v0 in sd0.items():
        g = np.zeros_like(v0)
        for idx in np.ndindex(v0.shape):
            vals = []
            for sign in (1.0, -1.0):
                sd = {k: a.copy() for k, a in sd0.items()}
                sd[name][idx] += sign * h
                model.load_state_dict(sd)
                vals.append(np_loss(kind, np_forward(model.state_dict(), x), y))
            g[idx] = (vals[0] - vals[1]) / (2 * h)
        numeric[name] = g
    model.load_state_dict(sd0)

    assert list(analytic) == list(numeric)
    for name in numeric:
        assert np.max(np.abs(numeric[name])) > MIN_GRAD, name  # a real gradient
        assert max_rel_err(analytic[name], numeric[name]) < GRAD_TOL, name
    # And the closed-form numpy backward pass agrees to round-off.
    closed = np_backward(sd0, x, np_loss_grad(kind, np_forward(sd0, x), y))
    for name, g in closed.items():
        np.testing.assert_allclose(analytic[name], g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", list(ACTS))
def test_backward_large_batch_matches_numpy(act: str, threads: int) -> None:
    """A batch big enough for the parallel kernels (the engine goes parallel
    from 2**16 scalar operations: here 600 x 128 = 76800 hidden activations)."""
    fg.set_num_threads(threads)
    rng = np.random.default_rng(SEED)
    n, d, h, c = 600, 20, 128, 10
    model = fg.Sequential([L.Dense(d, h), ACTS[act][0](), L.Dense(h, c)], seed=1, dtype="float64")
    randomize(model, rng)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, c, size=n)
    sd = model.state_dict()
    want = np_backward(sd, x, np_loss_grad("cross_entropy_labels", np_forward(sd, x, act), y), act)

    got = step_grads(model, "cross_entropy_labels", x, y)

    for name, g in want.items():
        # Round-off of sums over 600 rows, relative to the gradient's size.
        np.testing.assert_allclose(got[name], g, rtol=1e-10, atol=1e-12 * np.abs(g).max())


@pytest.mark.parametrize(("dtype", "width"), [("float64", 128), ("float64", 256), ("float32", 512)])
def test_padded_weight_rows_match_numpy(dtype: str, width: int) -> None:
    """Dense copies a weight whose rows lie a multiple of 1 KiB apart (128 or
    256 float64, 512 float32 inputs) into padded rows before the forward
    product of a batch of 32 or more: outputs and gradients must not change."""
    rng = np.random.default_rng(SEED)
    n, c = 64, 10
    model = fg.Sequential([L.Dense(width, width), L.ReLU(), L.Dense(width, c)], seed=1, dtype=dtype)
    randomize(model, rng)
    x = rng.normal(size=(n, width)).astype(dtype)
    y = rng.integers(0, c, size=n)
    sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    x64 = x.astype(np.float64)
    out = np_forward(sd, x64, "relu")
    rtol = 1e-12 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(model.predict(x), out, rtol=rtol, atol=rtol * np.abs(out).max())
    want = np_backward(sd, x64, np_loss_grad("cross_entropy_labels", out, y), "relu")
    got = step_grads(model, "cross_entropy_labels", x, y)
    for name, g in want.items():
        np.testing.assert_allclose(got[name], g, rtol=rtol, atol=rtol * np.abs(g).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [300, 600])
def test_gradients_independent_of_thread_count(rows: int, dtype: str) -> None:
    """README: "results are identical for a fixed seed whatever the thread
    count" / "every reduction has a fixed order". Dense(20, 128): the weight
    gradient is a 128 x 20 product reduced over the batch rows."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(rows, 20)).astype(dtype)
    dout = rng.normal(size=(rows, 128)).astype(dtype)
    got = {}
    for threads in (1, 2):
        fg.set_num_threads(threads)
        model = fg.Sequential([L.Dense(20, 128)], seed=1, dtype=dtype)
        model.forward(x, training=True)
        model.backward(dout)
        got[threads] = {p.name: p.grad for p in model.parameters()}
    for name in got[1]:
        np.testing.assert_array_equal(got[2][name], got[1][name], err_msg=name)


def test_backward_accumulates_and_zero_grad_resets() -> None:
    rng = np.random.default_rng(SEED)
    model = fg.Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, C)], seed=3, dtype="float64")
    randomize(model, rng)
    xa, xb = rng.normal(size=(N, 4)), rng.normal(size=(N, 4))
    ya, yb = rng.normal(size=(N, C)), rng.normal(size=(N, C))
    ga = step_grads(model, "mse", xa, ya)
    gb = step_grads(model, "mse", xb, yb)

    loss_fn = fg.losses.MSE()
    for x, y in ((xa, ya), (xb, yb)):
        loss_fn(model.forward(x, training=True), y)
        model.backward(loss_fn.backward())
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ga[p.name] + gb[p.name], rtol=1e-12, atol=1e-15)

    model.zero_grad()
    for p in model.parameters():
        assert p.grad.shape == p.shape
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape))

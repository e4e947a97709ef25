"""Gradient clipping: fg.clip_grad_norm_ against hand-computed norms (and
torch when it imports), fit(clip_grad_norm=) against the custom loop bit for
bit, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ferrograd as fg


def blobs(n=96, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.8)
    return x, y


def mlp(seed=0, dtype="float64"):
    L = fg.layers
    return fg.Sequential(
        [L.Dense(6, 16), L.Tanh(), L.Dense(16, 8), L.ReLU(), L.Dense(8, 3)], seed=seed, dtype=dtype
    )


def grads_after_backward(model, x, y):
    loss = fg.losses.CrossEntropy()
    model.zero_grad()
    loss(model.forward(x, training=True), y)
    model.backward(loss.backward() * 50.0)  # large gradients: clipping bites
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm_matches_hand_computed_norms(norm_type):
    x, y = blobs()
    model = mlp()
    grads = grads_after_backward(model, x, y)
    flat = np.concatenate([g.ravel() for g in grads])
    if norm_type == math.inf:
        want = np.abs(flat).max()
    else:
        want = (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    max_norm = want / 4
    total = fg.clip_grad_norm_(model.parameters(), max_norm, norm_type=norm_type)
    assert total == pytest.approx(want, rel=1e-12)
    coef = max_norm / (want + 1e-6)
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.grad, g * coef, rtol=1e-14, err_msg=p.name)
    # After clipping the total norm is max_norm (up to the 1e-6 guard).
    again = fg.clip_grad_norm_(model.parameters(), 1e9, norm_type=norm_type)
    assert again == pytest.approx(max_norm, rel=1e-6)


def test_clip_grad_norm_below_max_leaves_gradients_and_takes_subsets():
    x, y = blobs()
    model = mlp()
    grads = grads_after_backward(model, x, y)
    total = fg.clip_grad_norm_(model.parameters(), 1e9)
    assert total == pytest.approx(np.sqrt(sum((g**2).sum() for g in grads)), rel=1e-12)
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)
    # One parameter, or a subset: only those are measured and scaled.
    first = model.parameters()[0]
    t = fg.clip_grad_norm_(first, 1e-3)
    assert t == pytest.approx(np.sqrt((grads[0] ** 2).sum()), rel=1e-12)
    assert np.sqrt((first.grad**2).sum()) == pytest.approx(1e-3, rel=1e-5)
    np.testing.assert_array_equal(model.parameters()[1].grad, grads[1])


def test_clip_grad_norm_across_two_models():
    x, y = blobs()
    a, b = mlp(seed=1), mlp(seed=2)
    ga, gb = grads_after_backward(a, x, y), grads_after_backward(b, x, y)
    want = np.sqrt(sum((g**2).sum() for g in ga + gb))
    total = fg.clip_grad_norm_(a.parameters() + b.parameters(), want / 2)
    assert total == pytest.approx(want, rel=1e-12)
    for p, g in zip(a.parameters() + b.parameters(), ga + gb):
        np.testing.assert_allclose(p.grad, g * (want / 2) / (want + 1e-6), rtol=1e-14)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    x, y = blobs()
    model = mlp()
    grads = grads_after_backward(model, x, y)
    for norm_type in (2.0, 1.0, math.inf):
        tensors = [torch.zeros(g.shape, dtype=torch.float64) for g in grads]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        want = float(torch.nn.utils.clip_grad_norm_(tensors, 0.5, norm_type=norm_type))
        ours = mlp()
        grads_after_backward(ours, x, y)
        got = fg.clip_grad_norm_(ours.parameters(), 0.5, norm_type=norm_type)
        assert got == pytest.approx(want, rel=1e-12)
        for p, t in zip(ours.parameters(), tensors):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


def test_nonfinite_total():
    x, y = blobs()
    model = mlp()
    grads_after_backward(model, x, y)
    with pytest.raises(fg.NonFiniteError, match="error_if_nonfinite"):
        # An infinite norm: float64 squares overflow past 1e155.
        model._core.scale_grads([0], 1e300)
        fg.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_clip_grad_norm_equals_the_custom_loop(dtype):
    x, y = blobs(n=70)
    bs, max_norm = 16, 0.05
    m_fit = mlp(seed=5, dtype=dtype)
    opt_fit = fg.optim.SGD(m_fit.parameters(), lr=0.5, momentum=0.9)
    m_fit.fit(
        x, y, "cross_entropy", opt_fit, epochs=2, batch_size=bs, shuffle=False, verbose=0,
        clip_grad_norm=max_norm,
    )  # fmt: skip
    m_loop = mlp(seed=5, dtype=dtype)
    opt = fg.optim.SGD(m_loop.parameters(), lr=0.5, momentum=0.9)
    loss_fn = fg.losses.CrossEntropy()
    totals = []
    for _ in range(2):
        for i in range(0, len(x), bs):
            opt.zero_grad()
            loss_fn(m_loop.forward(x[i : i + bs], training=True), y[i : i + bs])
            m_loop.backward(loss_fn.backward())
            totals.append(fg.clip_grad_norm_(m_loop.parameters(), max_norm))
            opt.step()
    assert max(totals) > max_norm  # clipping really happened
    a, b = m_fit.state_dict(), m_loop.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # And clipping changed the result.
    m_free = mlp(seed=5, dtype=dtype)
    m_free.fit(
        x, y, "cross_entropy", fg.optim.SGD(m_free.parameters(), lr=0.5, momentum=0.9),
        epochs=2, batch_size=bs, shuffle=False, verbose=0,
    )  # fmt: skip
    assert not np.array_equal(m_free.state_dict()["0.weight"], a["0.weight"])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_max_norm(bad):
    x, y = blobs()
    model = mlp()
    before = model.state_dict()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="max_norm"):
        model.fit(x, y, "cross_entropy", opt, verbose=0, clip_grad_norm=bad)
    with pytest.raises(ValueError, match="max_norm"):
        fg.clip_grad_norm_(model.parameters(), bad)
    assert opt.steps == 0
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_bad_types_and_norm_type():
    model = mlp()
    with pytest.raises(TypeError, match="clip_grad_norm must be a number"):
        model.fit(*blobs(), "cross_entropy", "sgd", verbose=0, clip_grad_norm="1")
    with pytest.raises(ValueError, match="norm_type"):
        fg.clip_grad_norm_(model.parameters(), 1.0, norm_type=0)
    with pytest.raises(ValueError, match="norm_type"):
        fg.clip_grad_norm_(model.parameters(), 1.0, norm_type=-math.inf)
    with pytest.raises(TypeError, match="Parameter"):
        fg.clip_grad_norm_([np.zeros(3)], 1.0)

"""Tests for ferrograd.Sequential: learning, the Keras-style fit/evaluate/predict
API, the PyTorch-style step API, state_dict I/O, parameters and layer behaviour.

Everything here runs on small synthetic data, so the whole file takes seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0])


# ------------------------------------------------------------------ helpers


def blobs(n: int = 240, d: int = 5, classes: int = 3, seed: int = 0):
    """A small, mostly separable classification problem: Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, d))
    return x.astype(np.float32), y


def mlp(d: int = 5, hidden: int = 16, classes: int = 3, seed: int = 0, dtype="float32"):
    return fg.Sequential(
        [L.Dense(d, hidden), L.ReLU(), L.Dense(hidden, classes)], seed=seed, dtype=dtype
    )


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def assert_state_equal(a, b) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xor_reaches_full_accuracy(dtype):
    model = fg.Sequential([L.Dense(2, 8), L.Tanh(), L.Dense(8, 2)], seed=0, dtype=dtype)
    x = XOR_X.astype(dtype)
    opt = fg.optim.Adam(model.parameters(), lr=0.05)
    hist = model.fit(x, XOR_Y, "cross_entropy", opt, epochs=300, batch_size=4, verbose=0)

    assert model.dtype == np.dtype(dtype)
    for p in model.parameters():
        assert p.value.dtype == np.dtype(dtype)
    out = model.predict(x)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.argmax(axis=1), XOR_Y)
    res = model.evaluate(x, XOR_Y, "cross_entropy")
    assert res["accuracy"] == 1.0
    assert res["loss"] < 0.05
    assert hist["accuracy"][-1] == 1.0
    assert hist["loss"][-1] < hist["loss"][0]


def test_regression_sin_reaches_low_mse():
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, size=(512, 1)).astype(np.float32)
    y = np.sin(x)
    model = fg.Sequential([L.Dense(1, 32), L.Tanh(), L.Dense(32, 1)], seed=0)
    opt = fg.optim.Adam(model.parameters(), lr=0.01)
    hist = model.fit(x, y, "mse", opt, epochs=200, batch_size=32, verbose=0)

    # sin(x) on U(-pi, pi) has variance 1/2, so predicting the mean gives
    # MSE 0.5; a 32-unit tanh net fits this smooth curve almost exactly
    # (it gets to ~7e-4), so < 5e-3 means > 99% of the variance is explained.
    mse = model.evaluate(x, y, "mse")["loss"]
    assert mse < 5e-3
    assert hist["loss"][0] > 0.05
    # MSE has no accuracy metric
    assert set(hist.history) == {"loss"}
    assert set(model.evaluate(x, y, "mse")) == {"loss"}
    # the value agrees with numpy on the predictions
    pred = model.predict(x)
    np.testing.assert_allclose(mse, np.mean((pred.astype(np.float64) - y) ** 2), rtol=1e-4)


def test_linear_regression_with_noise_reaches_noise_floor():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    w_true = np.array([1.5, -2.0, 0.5])
    b_true = 0.7
    sigma = 0.1
    y = (x @ w_true + b_true + rng.normal(0.0, sigma, size=1000)).astype(np.float32)
    model = fg.Sequential([L.Dense(3, 1)], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.05)
    model.fit(x, y, "mse", opt, epochs=30, batch_size=32, verbose=0)

    # The irreducible error is the noise variance sigma^2 = 0.01: a linear
    # model that found (w_true, b_true) has MSE ~0.01, and no model can do
    # much better on fresh noise. 1000 samples give the least-squares fit a
    # training MSE within a few percent of sigma^2, so [0.008, 0.012] is
    # "at the noise floor" and excludes both under- and absurd over-fitting.
    mse = model.evaluate(x, y, "mse")["loss"]
    assert 0.8 * sigma**2 < mse < 1.2 * sigma**2
    sd = model.state_dict()
    np.testing.assert_allclose(sd["0.weight"][0], w_true, atol=0.03)
    np.testing.assert_allclose(sd["0.bias"][0], b_true, atol=0.03)


# ------------------------------------------------------------------ fit / History


def test_fit_history_keys_and_lengths():
    x, y = blobs()
    model = mlp()
    hist = model.fit(
        x, y, "cross_entropy", "adam", epochs=3, batch_size=32, validation_split=0.2, verbose=0
    )
    assert isinstance(hist, fg.History)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in hist.history:
        assert len(hist[key]) == 3
        assert all(isinstance(v, float) and np.isfinite(v) for v in hist[key])
    assert hist.epoch == [0, 1, 2]
    for key in ("accuracy", "val_accuracy"):
        assert all(0.0 <= v <= 1.0 for v in hist[key])
    # no validation -> only training keys
    hist2 = mlp().fit(x, y, "cross_entropy", "adam", epochs=2, verbose=0)
    assert set(hist2.history) == {"loss", "accuracy"}
    assert len(hist2["loss"]) == 2


def test_validation_split_takes_the_last_fraction():
    x, y = blobs(n=200)
    split = 150  # int(200 * (1 - 0.25))

    m1 = mlp(seed=3)
    h1 = m1.fit(
        x,
        y,
        "cross_entropy",
        fg.optim.SGD(m1.parameters(), lr=0.05),
        epochs=2,
        batch_size=16,
        validation_split=0.25,
        verbose=0,
    )
    m2 = mlp(seed=3)
    h2 = m2.fit(
        x[:split],
        y[:split],
        "cross_entropy",
        fg.optim.SGD(m2.parameters(), lr=0.05),
        epochs=2,
        batch_size=16,
        validation_data=(x[split:], y[split:]),
        verbose=0,
    )
    assert h1.history == h2.history
    assert_state_equal(m1.state_dict(), m2.state_dict())
    # and the validation loss really is the tail's loss, not the head's
    tail = m1.evaluate(x[split:], y[split:], "cross_entropy")
    head = m1.evaluate(x[: 200 - split], y[: 200 - split], "cross_entropy")
    assert h1["val_loss"][-1] == pytest.approx(tail["loss"], rel=1e-9)
    assert h1["val_accuracy"][-1] == pytest.approx(tail["accuracy"], rel=1e-9)
    assert h1["val_loss"][-1] != pytest.approx(head["loss"], rel=1e-6)


def test_validation_data_matches_evaluate():
    x_all, y_all = blobs(n=260)
    x, y, xv, yv = x_all[:200], y_all[:200], x_all[200:], y_all[200:]
    model = mlp()
    hist = model.fit(x, y, "cross_entropy", "adam", epochs=1, validation_data=(xv, yv), verbose=0)
    res = model.evaluate(xv, yv, "cross_entropy")
    assert hist["val_loss"] == [pytest.approx(res["loss"], rel=1e-9)]
    assert hist["val_accuracy"] == [pytest.approx(res["accuracy"], rel=1e-9)]
    # validation data does not count as training data
    res_train = model.evaluate(x, y, "cross_entropy")
    assert hist["val_loss"][0] != pytest.approx(res_train["loss"], rel=1e-6)


def test_fit_zero_epochs_changes_nothing():
    x, y = blobs()
    model = mlp()
    before = model.state_dict()
    opt = fg.optim.Adam(model.parameters(), lr=0.1)
    hist = model.fit(x, y, "cross_entropy", opt, epochs=0, validation_split=0.2, verbose=0)
    assert hist.history == {}
    assert hist.epoch == []
    assert opt.steps == 0
    assert_state_equal(model.state_dict(), before)


def test_fit_is_silent_with_verbose_0(capsys):
    x, y = blobs()
    mlp().fit(x, y, "cross_entropy", "adam", epochs=1, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# ------------------------------------------------------------------ evaluate / predict


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_evaluate_matches_numpy_from_predict(dtype):
    x, y = blobs(n=300)
    model = mlp(dtype=dtype)
    model.fit(x, y, "cross_entropy", "sgd", epochs=1, verbose=0)
    res = model.evaluate(x, y, "cross_entropy", batch_size=64)
    assert set(res) == {"loss", "accuracy"}

    logits = model.predict(x.astype(dtype))
    ce = -np_log_softmax(logits)[np.arange(len(y)), y].mean()
    acc = np.mean(logits.argmax(axis=1) == y)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(res["loss"], ce, rtol=rtol)
    assert res["accuracy"] == pytest.approx(acc, abs=1e-12)
    # not a degenerate case: after one SGD epoch some, not all, samples are right
    assert 0.0 < res["accuracy"] < 1.0


@pytest.mark.parametrize("batch_size", [1, 7, 64, 100, 203, 4096])
def test_predict_batch_size_does_not_change_outputs(batch_size):
    x, _ = blobs(n=203)
    model = mlp()
    ref = model.predict(x)  # default batch size 1024: one batch
    assert ref.shape == (203, 3)
    assert ref.dtype == np.float32
    out = model.predict(x, batch_size=batch_size)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    # Rows are where they belong (a batching mix-up would be far off). Across
    # batch sizes results agree to float rounding only: the gemm crate picks
    # its blocking (and so the summation order) from the matrix shape. The
    # documented contract is bitwise equality for a fixed batch size.
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x, batch_size=batch_size), out)


def test_predict_equals_forward_in_inference_mode():
    x, _ = blobs(n=203)
    model = mlp()
    ref = model.predict(x)
    np.testing.assert_array_equal(model.forward(x, training=False), ref)
    np.testing.assert_array_equal(model.forward(x), ref)
    np.testing.assert_array_equal(model(x), ref)


def test_uint8_with_rescaling_equals_float_input():
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, size=(50, 4, 4), dtype=np.uint8)
    scaled = fg.Sequential(
        [L.Flatten(), L.Rescaling(1 / 255), L.Dense(16, 8), L.ReLU(), L.Dense(8, 3)], seed=1
    )
    plain = fg.Sequential([L.Flatten(), L.Dense(16, 8), L.ReLU(), L.Dense(8, 3)], seed=2)
    sd = scaled.state_dict()
    plain.load_state_dict(
        {
            "1.weight": sd["2.weight"],
            "1.bias": sd["2.bias"],
            "3.weight": sd["4.weight"],
            "3.bias": sd["4.bias"],
        }
    )
    x8_before = x8.copy()
    a = scaled.predict(x8)
    b = plain.predict(x8.astype(np.float32) / 255)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(a).max() > 0.1  # not trivially all zero
    # and the uint8 array is read, not modified
    np.testing.assert_array_equal(x8, x8_before)


def test_float64_input_to_float32_model():
    x, y = blobs()
    model = mlp()
    x64 = x.astype(np.float64)
    out32 = model.predict(x)
    out64 = model.predict(x64)
    assert out64.dtype == np.float32
    # x64 holds exactly the float32 values, so the results must be identical
    np.testing.assert_array_equal(out64, out32)
    before = model.evaluate(x64, y, "cross_entropy")["loss"]
    model.fit(x64, y, "cross_entropy", fg.optim.Adam(model.parameters(), 0.01), epochs=5, verbose=0)
    after = model.evaluate(x64, y, "cross_entropy")["loss"]
    assert after < 0.5 * before


# ------------------------------------------------------------------ step API


def test_step_api_trains():
    x, y = blobs()
    model = mlp()
    loss_fn = fg.losses.CrossEntropy()
    opt = fg.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        out = model.forward(x, training=True)
        value = loss_fn(out, y)
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(value)
    assert opt.steps == 60
    assert losses[-1] < 0.2 * losses[0]
    assert loss_fn.last_accuracy is not None and loss_fn.last_accuracy > 0.9
    assert model.evaluate(x, y, "cross_entropy")["accuracy"] > 0.9


def test_custom_loop_equals_fit_one_epoch_sgd():
    x, y = blobs(n=70)
    bs = 16  # 70 = 4 * 16 + 6: includes a partial last batch
    m_fit = mlp(seed=5)
    m_fit.fit(
        x,
        y,
        "cross_entropy",
        fg.optim.SGD(m_fit.parameters(), lr=0.1),
        epochs=1,
        batch_size=bs,
        shuffle=False,
        verbose=0,
    )

    m_loop = mlp(seed=5)
    opt = fg.optim.SGD(m_loop.parameters(), lr=0.1)
    loss_fn = fg.losses.CrossEntropy()
    for i in range(0, len(x), bs):
        opt.zero_grad()
        out = m_loop.forward(x[i : i + bs], training=True)
        loss_fn(out, y[i : i + bs])
        m_loop.backward(loss_fn.backward())
        opt.step()
    assert opt.steps == 5

    a, b = m_fit.state_dict(), m_loop.state_dict()
    init = mlp(seed=5).state_dict()
    assert list(a) == list(b)
    for k in a:
        assert not np.array_equal(a[k], init[k]), k  # training really moved every parameter
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_custom_full_batch_step_equals_fit_bitwise():
    x, y = blobs(n=64)
    m_fit = mlp(seed=7)
    m_fit.fit(
        x,
        y,
        "cross_entropy",
        fg.optim.SGD(m_fit.parameters(), lr=0.1),
        epochs=1,
        batch_size=len(x),
        shuffle=False,
        verbose=0,
    )
    m_loop = mlp(seed=7)
    opt = fg.optim.SGD(m_loop.parameters(), lr=0.1)
    loss_fn = fg.losses.CrossEntropy()
    opt.zero_grad()
    loss_fn(m_loop.forward(x, training=True), y)
    m_loop.backward(loss_fn.backward())
    opt.step()
    assert_state_equal(m_fit.state_dict(), m_loop.state_dict())


def test_gradients_accumulate_until_zeroed():
    x, y = blobs(n=32)
    model = mlp()
    loss_fn = fg.losses.CrossEntropy()
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape))

    def backward_once():
        loss_fn(model.forward(x, training=True), y)
        model.backward(loss_fn.backward())

    backward_once()
    g1 = {p.name: p.grad for p in model.parameters()}
    assert any(np.abs(g).max() > 0 for g in g1.values())
    backward_once()
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, 2 * g1[p.name], rtol=1e-6, atol=1e-9, err_msg=p.name)
    model.zero_grad()
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape))
    backward_once()
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, g1[p.name], rtol=1e-6, atol=1e-9, err_msg=p.name)
    # optimizer.zero_grad clears the same gradients
    fg.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, np.zeros(p.shape))


# ------------------------------------------------------------------ state_dict


def test_state_dict_keys_shapes_follow_torch_sequential():
    model = fg.Sequential(
        [
            L.Dense(4, 8),
            L.ReLU(),
            L.Dense(8, 6, bias=False),
            L.Tanh(),
            L.Dropout(0.2),
            L.Dense(6, 3),
        ],
        seed=0,
    )
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "5.weight", "5.bias"]
    assert {k: v.shape for k, v in sd.items()} == {
        "0.weight": (8, 4),
        "0.bias": (8,),
        "2.weight": (6, 8),
        "5.weight": (3, 6),
        "5.bias": (3,),
    }
    assert all(v.dtype == np.float32 for v in sd.values())
    assert model.num_params() == 8 * 4 + 8 + 6 * 8 + 3 * 6 + 3
    # biases start at zero, weights do not
    np.testing.assert_array_equal(sd["0.bias"], 0)
    assert np.abs(sd["0.weight"]).max() > 0


def test_numpy_forward_from_state_dict_matches_predict():
    x, y = blobs(n=100)
    model = fg.Sequential(
        [L.Dense(5, 16), L.ReLU(), L.Dense(16, 8), L.Tanh(), L.Dense(8, 3)], seed=0, dtype="float64"
    )
    model.fit(x, y, "cross_entropy", "adam", epochs=2, verbose=0)
    sd = model.state_dict()
    h = x.astype(np.float64)
    h = np.maximum(h @ sd["0.weight"].T + sd["0.bias"], 0)
    h = np.tanh(h @ sd["2.weight"].T + sd["2.bias"])
    h = h @ sd["4.weight"].T + sd["4.bias"]
    np.testing.assert_allclose(model.predict(x), h, rtol=1e-10, atol=1e-12)


def test_numpy_forward_float32():
    x, _ = blobs(n=100)
    model = mlp()
    sd = model.state_dict()
    ref = np.maximum(x @ sd["0.weight"].T + sd["0.bias"], 0) @ sd["2.weight"].T + sd["2.bias"]
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-5, atol=1e-5)


def test_load_state_dict_round_trip():
    x, y = blobs()
    a = mlp(seed=1)
    a.fit(x, y, "cross_entropy", "adam", epochs=2, verbose=0)
    b = mlp(seed=2)
    assert not np.array_equal(a.predict(x), b.predict(x))
    sd = a.state_dict()
    b.load_state_dict(sd)
    assert_state_equal(b.state_dict(), sd)
    np.testing.assert_array_equal(b.predict(x), a.predict(x))
    # state_dict returns copies: mutating one does not touch the model
    sd["0.weight"][:] = 0
    assert np.abs(a.state_dict()["0.weight"]).max() > 0


def test_load_state_dict_accepts_float64_and_nested_lists():
    x, _ = blobs()
    src = mlp(seed=1, dtype="float64")
    dst = mlp(seed=2)
    sd64 = src.state_dict()
    assert sd64["0.weight"].dtype == np.float64
    dst.load_state_dict(sd64)
    for k, v in dst.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, sd64[k].astype(np.float32))

    dst2 = mlp(seed=3)
    dst2.load_state_dict({k: v.tolist() for k, v in dst.state_dict().items()})
    assert_state_equal(dst2.state_dict(), dst.state_dict())
    np.testing.assert_array_equal(dst2.predict(x), dst.predict(x))


# ------------------------------------------------------------------ parameters


def test_parameters_and_named_parameters():
    model = fg.Sequential([L.Dense(3, 4), L.Sigmoid(), L.Dense(4, 2)], seed=0)
    params = model.parameters()
    named = list(model.named_parameters())
    assert [n for n, _ in named] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p.name for p in params] == [n for n, _ in named]
    assert all(p is q for p, (_, q) in zip(params, named))
    assert list(model.state_dict()) == [p.name for p in params]
    expected = [(4, 3), (4,), (2, 4), (2,)]
    assert [p.shape for p in params] == expected
    assert [p.value.shape for p in params] == expected
    assert [p.grad.shape for p in params] == expected
    assert sum(p.numel for p in params) == model.num_params() == 12 + 4 + 8 + 2
    sd = model.state_dict()
    for p in params:
        np.testing.assert_array_equal(p.value, sd[p.name])
    assert "0.weight" in repr(params[0])


def test_parameter_value_setter_writes_into_model():
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    model = fg.Sequential([L.Dense(3, 2)], seed=0)
    w, b = model.parameters()
    new_w = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    w.value = new_w
    b.value = [0.25, -0.5]
    np.testing.assert_array_equal(w.value, new_w.astype(np.float32))
    np.testing.assert_array_equal(model.state_dict()["0.bias"], np.float32([0.25, -0.5]))
    np.testing.assert_allclose(model.predict(x), x @ new_w.T + [0.25, -0.5], rtol=1e-5, atol=1e-6)
    # value is a copy: mutating it does not change the model
    v = w.value
    v[:] = 7
    np.testing.assert_array_equal(w.value, new_w.astype(np.float32))


# ------------------------------------------------------------------ layers


def test_dropout_inactive_in_evaluation():
    x, _ = blobs(n=50)
    with_do = fg.Sequential([L.Dense(5, 32), L.ReLU(), L.Dropout(0.5), L.Dense(32, 3)], seed=0)
    without = fg.Sequential([L.Dense(5, 32), L.ReLU(), L.Dense(32, 3)], seed=1)
    sd = with_do.state_dict()
    without.load_state_dict(
        {
            "0.weight": sd["0.weight"],
            "0.bias": sd["0.bias"],
            "2.weight": sd["3.weight"],
            "2.bias": sd["3.bias"],
        }
    )
    ref = without.predict(x)
    np.testing.assert_array_equal(with_do.forward(x, training=False), ref)
    np.testing.assert_array_equal(with_do.forward(x, training=False), ref)
    np.testing.assert_array_equal(with_do.predict(x), ref)
    # in training mode dropout changes the output
    assert not np.array_equal(with_do.forward(x, training=True), ref)


def test_train_and_eval_set_the_default_mode_of_forward():
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=(40, 50)).astype(np.float32)
    model = fg.Sequential([L.Dropout(0.5)], seed=0)
    # Evaluation until train() is called (as before: forward(x) is inference).
    assert model.training is False
    np.testing.assert_array_equal(model.forward(x), x)
    assert model.train() is model and model.training is True
    out = model(x)
    assert (out == 0).any()  # dropout active by default now
    np.testing.assert_array_equal(model.forward(x, training=False), x)  # explicit wins
    assert model.eval() is model and model.training is False
    np.testing.assert_array_equal(model(x), x)
    assert (model.forward(x, training=True) == 0).any()
    # A training-mode default pass is kept for backward, an evaluation one is not.
    net = fg.Sequential([L.Dense(50, 3)], seed=0).train()
    net.forward(x)
    net.backward(np.ones((40, 3), np.float32))
    net.eval().forward(x)
    with pytest.raises(fg.StateError):
        net.backward(np.ones((40, 3), np.float32))
    # fit, predict and evaluate leave the mode as it was.
    for mode in (True, False):
        net.train(mode)
        net.fit(x, np.zeros(40, np.int64), "cross_entropy", "sgd", verbose=0)
        net.predict(x)
        net.evaluate(x, np.zeros(40, np.int64), "cross_entropy")
        assert net.training is mode


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_training_mask_and_scaling(p):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, size=(200, 500)).astype(np.float32)  # no zeros in the input
    model = fg.Sequential([L.Dropout(p)], seed=0)
    assert model.num_params() == 0
    np.testing.assert_array_equal(model.forward(x, training=False), x)

    out = model.forward(x, training=True)
    assert out.shape == x.shape
    dropped = out == 0
    # 100,000 Bernoulli(p) draws: std of the fraction is <= 0.0016
    assert abs(dropped.mean() - p) < 0.01
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - p), rtol=1e-6)
    # each training pass draws a new mask
    out2 = model.forward(x, training=True)
    assert not np.array_equal(out2 == 0, dropped)


def test_softmax_rows_sum_to_one():
    x, _ = blobs(n=64)
    x = x * 10  # large logits: must still be stable
    model = fg.Sequential([L.Dense(5, 4), L.Softmax()], seed=0)
    logits = fg.Sequential([L.Dense(5, 4)], seed=0).predict(x)
    probs = model.predict(x)
    assert probs.shape == (64, 4)
    assert np.all(np.isfinite(probs))
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, np.exp(np_log_softmax(logits)), rtol=1e-5, atol=1e-7)


def test_repr_and_summary_mention_layers_shapes_and_total(capsys):
    layers = [
        L.Flatten(),
        L.Rescaling(1 / 255),
        L.Dense(784, 128),
        L.ReLU(),
        L.Dropout(0.2),
        L.Dense(128, 10),
    ]
    model = fg.Sequential(layers, seed=0)
    total = 784 * 128 + 128 + 128 * 10 + 10
    assert model.num_params() == total

    text = model.summary(input_shape=(28, 28), print_fn=None)
    assert capsys.readouterr().out == ""
    for layer in layers:
        assert repr(layer) in text
    for name in ("Flatten", "Rescaling", "Dense", "ReLU", "Dropout"):
        assert name in text
    for shape in ("(N, 784)", "(N, 128)", "(N, 10)"):
        assert shape in text
    assert f"{total:,}" in text  # 101,770
    assert f"{784 * 128 + 128:,}" in text

    printed = model.summary(input_shape=(28, 28))
    assert capsys.readouterr().out == printed + "\n"

    # before any input, a model starting with Flatten cannot know its shapes
    assert "(N, 784)" not in repr(model)
    model.forward(np.zeros((2, 28, 28), dtype=np.uint8))  # the repr uses the last input shape
    r = repr(model)
    for layer in layers:
        assert repr(layer) in r
    for shape in ("(N, 784)", "(N, 128)", "(N, 10)"):
        assert shape in r
    assert f"{total:,}" in r


def test_summary_defaults_to_first_dense_in_features():
    model = fg.Sequential([L.Dense(3, 5), L.GELU(), L.Dense(5, 2)], seed=0)
    text = model.summary(print_fn=None)
    assert "(N, 5)" in text and "(N, 2)" in text
    assert "GELU()" in text
    assert f"Total params: {3 * 5 + 5 + 5 * 2 + 2}" in text


def test_binary_cross_entropy_one_output_1d_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)).astype(np.float32)
    y = (x[:, 0] + 2 * x[:, 1] > 0).astype(np.float32)  # 1-d targets in {0, 1}
    model = fg.Sequential([L.Dense(2, 8), L.Tanh(), L.Dense(8, 1)], seed=0)
    hist = model.fit(
        x,
        y,
        fg.losses.BinaryCrossEntropy(),
        fg.optim.Adam(model.parameters(), lr=0.05),
        epochs=30,
        batch_size=32,
        verbose=0,
    )
    assert set(hist.history) == {"loss", "accuracy"}
    assert hist["loss"][-1] < hist["loss"][0]
    res = model.evaluate(x, y, "binary_cross_entropy")
    assert res["accuracy"] > 0.95

    z = model.predict(x).astype(np.float64)
    assert z.shape == (300, 1)
    z = z[:, 0]
    bce = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    np.testing.assert_allclose(res["loss"], bce, rtol=1e-5)
    assert res["accuracy"] == pytest.approx(np.mean((z > 0) == (y == 1)), abs=1e-12)

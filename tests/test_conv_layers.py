"""Convolution, pooling and BatchNorm: forward passes against numpy written
from torch's definitions, BatchNorm against hand-computed values, the
train/eval modes, shapes, state_dict layout, and every bad input the layers
must refuse with the model left as it was."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

# ---------------------------------------------------------------- numpy references


def np_conv(x, w, b, stride, pads, dilation):
    """torch.nn.functional.conv2d by its definition; pads = (top, left, bottom, right)."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, _, h, wd = xp.shape
    o, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow)) + (0 if b is None else b[None, :, None, None])
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :,
                :,
                i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                j * dw : j * dw + sw * (ow - 1) + 1 : sw,
            ]
            out = out + np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def np_pool(x, kind, kernel, stride, padding):
    """max_pool2d / avg_pool2d(count_include_pad=True) by their definitions."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    out = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


def pads_of(layer: L.Conv2D) -> tuple[int, int, int, int]:
    if layer.padding == "valid":
        return (0, 0, 0, 0)
    if layer.padding == "same":
        th = layer.dilation[0] * (layer.kernel_size[0] - 1)
        tw = layer.dilation[1] * (layer.kernel_size[1] - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    return (layer.padding[0], layer.padding[1], layer.padding[0], layer.padding[1])


@contextlib.contextmanager
def unchanged(model: fg.Sequential):
    """Asserts the model's state_dict and gradients are as before the block."""
    state = model.state_dict()
    grads = [p.grad for p in model.parameters()]
    training = model.training
    yield
    after = model.state_dict()
    assert list(after) == list(state)
    for k in state:
        np.testing.assert_array_equal(after[k], state[k], err_msg=k)
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_array_equal(p.grad, g)
    assert model.training is training


# ---------------------------------------------------------------- forward vs numpy

CONVS = [
    (L.Conv2D(1, 8, 5, padding="same"), (1, 12, 12)),
    (L.Conv2D(3, 5, 3, stride=2, padding=1), (3, 9, 8)),
    (L.Conv2D(2, 3, (3, 2), stride=(1, 2), padding=(0, 1), dilation=(2, 1)), (2, 7, 5)),
    (L.Conv2D(4, 6, 4, padding="same", bias=False), (4, 6, 5)),
    (L.Conv2D(17, 40, 1), (17, 3, 4)),
    (L.Conv2D(2, 33, 3, padding=3), (2, 4, 4)),
    (L.Conv2D(3, 4, 3, stride=(2, 3), padding=(2, 0), dilation=2), (3, 11, 13)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("i", range(len(CONVS)))
def test_conv2d_forward_matches_numpy(i: int, dtype: str) -> None:
    layer, shape = CONVS[i]
    model = fg.Sequential([layer], seed=i, dtype=dtype)
    x = np.random.default_rng(i).normal(size=(3, *shape))
    sd = model.state_dict()
    want = np_conv(
        x,
        sd["0.weight"].astype(np.float64),
        sd.get("0.bias"),
        layer.stride,
        pads_of(layer),
        layer.dilation,
    )
    got = model.predict(x.astype(dtype))
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(
        got,
        want,
        rtol=1e-4 if dtype == "float32" else 1e-12,
        atol=1e-5 if dtype == "float32" else 1e-12,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cnn_forward_matches_numpy(dtype: str) -> None:
    """A whole CNN (its pooling and ReLU run on channels-last buffers inside
    the model) against numpy's planar forward pass."""
    layers = [
        L.Conv2D(2, 6, 3, padding="same"),
        L.ReLU(),
        L.MaxPool2D(2),
        L.Conv2D(6, 5, 3, padding=1),
        L.ReLU(),
        L.AvgPool2D(2),
        L.Flatten(),
        L.Dense(5 * 3 * 2, 4),
    ]
    model = fg.Sequential(layers, seed=3, dtype=dtype)
    x = np.random.default_rng(4).normal(size=(5, 2, 12, 9))
    sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    a = np.maximum(np_conv(x, sd["0.weight"], sd["0.bias"], (1, 1), (1, 1, 1, 1), (1, 1)), 0)
    a = np_pool(a, "max", (2, 2), (2, 2), (0, 0))
    a = np.maximum(np_conv(a, sd["3.weight"], sd["3.bias"], (1, 1), (1, 1, 1, 1), (1, 1)), 0)
    a = np_pool(a, "avg", (2, 2), (2, 2), (0, 0)).reshape(5, -1)
    want = a @ sd["7.weight"].T + sd["7.bias"]
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(model.predict(x.astype(dtype)), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv1d_is_a_conv2d_of_height_one(dtype: str) -> None:
    c1 = fg.Sequential([L.Conv1D(3, 4, 5, stride=2, padding=2, dilation=1)], seed=1, dtype=dtype)
    c2 = fg.Sequential([L.Conv2D(3, 4, (1, 5), stride=(1, 2), padding=(0, 2))], seed=1, dtype=dtype)
    sd = c1.state_dict()
    assert sd["0.weight"].shape == (4, 3, 5)  # torch's Conv1d layout
    c2.load_state_dict({"0.weight": sd["0.weight"][:, :, None, :], "0.bias": sd["0.bias"]})
    x = np.random.default_rng(0).normal(size=(5, 3, 17)).astype(dtype)
    out = c1.predict(x)
    assert out.shape == (5, 4, 9)
    np.testing.assert_array_equal(out, c2.predict(x[:, :, None, :])[:, :, 0, :])


@pytest.mark.parametrize(
    ("layer", "kind"),
    [
        (L.MaxPool2D(2), "max"),
        (L.MaxPool2D(3, stride=2, padding=1), "max"),
        (L.MaxPool2D((2, 3), stride=(1, 2)), "max"),
        (L.AvgPool2D(2), "avg"),
        (L.AvgPool2D(3, stride=1, padding=1), "avg"),
        (L.AvgPool2D((3, 2), padding=(1, 1)), "avg"),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pooling_forward_matches_numpy(layer, kind, dtype) -> None:
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 9)).astype(dtype)
    got = fg.Sequential([layer], dtype=dtype).predict(x)
    want = np_pool(x.astype(np.float64), kind, layer.kernel_size, layer.stride, layer.padding)
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_pooling_1d_and_global() -> None:
    x = np.random.default_rng(2).normal(size=(2, 3, 10))
    out = fg.Sequential([L.MaxPool1D(3, stride=2, padding=1)], dtype="float64").predict(x)
    np.testing.assert_array_equal(
        out, np_pool(x[:, :, None, :], "max", (1, 3), (1, 2), (0, 1))[:, :, 0, :]
    )
    out = fg.Sequential([L.AvgPool1D(2)], dtype="float64").predict(x)
    np.testing.assert_allclose(out, x.reshape(2, 3, 5, 2).mean(axis=-1), rtol=1e-15)
    img = np.random.default_rng(3).normal(size=(4, 5, 3, 2))
    out = fg.Sequential([L.GlobalAvgPool2D()], dtype="float64").predict(img)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out, img.mean(axis=(2, 3)), rtol=1e-14)


def test_max_pool_gradient_goes_to_the_first_maximum() -> None:
    """With ties, torch sends the gradient to the first maximum in scan
    order; so does ferrograd (both the 2x2 fast path and the general one)."""
    x = np.array([[[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 1.0, 3.0]]]])
    for layer in (L.MaxPool2D(2), L.MaxPool2D(2, stride=2, padding=1)):
        model = fg.Sequential(
            [L.Rescaling(1.0), L.Conv2D(1, 1, 1, bias=False), layer], dtype="float64"
        )
        model.load_state_dict({"1.weight": np.ones((1, 1, 1, 1))})
        out = model.forward(x, training=True)
        model.backward(np.ones_like(out))
        # d out / d w = sum of the selected inputs; the first maximum of
        # each window is picked, and each is counted once.
        assert model.parameters()[0].grad.item() == out.sum()
    dx_model = fg.Sequential([L.Conv2D(1, 1, 1, bias=False), L.MaxPool2D(2)], dtype="float64")
    dx_model.load_state_dict({"0.weight": np.ones((1, 1, 1, 1))})
    assert dx_model.predict(x).ravel().tolist() == [3.0, 3.0]


# ---------------------------------------------------------------- BatchNorm


def test_batchnorm1d_training_and_running_statistics_by_hand() -> None:
    # Channel 0: 1, 3 -> mean 2, biased var 1, unbiased 2.
    # Channel 1: 2, 6 -> mean 4, biased var 4, unbiased 8.
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    model = fg.Sequential([L.BatchNorm1D(2)], dtype="float64")
    out = model.forward(x, training=True)
    eps = 1e-5
    want = np.array(
        [
            [-1 / np.sqrt(1 + eps), -2 / np.sqrt(4 + eps)],
            [1 / np.sqrt(1 + eps), 2 / np.sqrt(4 + eps)],
        ]
    )
    np.testing.assert_allclose(out, want, rtol=1e-14)
    sd = model.state_dict()
    assert list(sd) == [
        "0.weight",
        "0.bias",
        "0.running_mean",
        "0.running_var",
        "0.num_batches_tracked",
    ]
    # momentum 0.1: 0.9 * initial + 0.1 * batch (the variance's unbiased estimate)
    np.testing.assert_allclose(sd["0.running_mean"], [0.2, 0.4], rtol=1e-14)
    np.testing.assert_allclose(sd["0.running_var"], [0.9 + 0.2, 0.9 + 0.8], rtol=1e-14)
    assert sd["0.num_batches_tracked"].dtype == np.int64 and sd["0.num_batches_tracked"].shape == ()
    assert sd["0.num_batches_tracked"] == 1
    # Evaluation uses the running statistics, with weight and bias.
    model.load_state_dict({**sd, "0.weight": np.array([2.0, 0.5]), "0.bias": np.array([1.0, -1.0])})
    ev = model.predict(np.array([[1.2, 0.4]]))
    want = (np.array([1.2, 0.4]) - [0.2, 0.4]) / np.sqrt(np.array([1.1, 1.7]) + eps) * [
        2.0,
        0.5,
    ] + [1.0, -1.0]
    np.testing.assert_allclose(ev[0], want, rtol=1e-14)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_batchnorm2d_matches_numpy_over_several_batches(momentum) -> None:
    rng = np.random.default_rng(5)
    model = fg.Sequential([L.BatchNorm2D(3, eps=1e-3, momentum=momentum)], dtype="float64")
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    sd = model.state_dict()
    model.load_state_dict({**sd, "0.weight": gamma, "0.bias": beta})
    rm, rv = np.zeros(3), np.ones(3)
    for t in range(1, 5):
        x = rng.normal(2.0, 3.0, size=(4, 3, 5, 6))
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        want = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3)
        want = want * gamma[None, :, None, None] + beta[None, :, None, None]
        np.testing.assert_allclose(model.forward(x, training=True), want, rtol=1e-12, atol=1e-12)
        m = 1.0 / t if momentum is None else momentum
        count = x.size / 3
        rm = (1 - m) * rm + m * mean
        rv = (1 - m) * rv + m * var * count / (count - 1)
        sd = model.state_dict()
        np.testing.assert_allclose(sd["0.running_mean"], rm, rtol=1e-12)
        np.testing.assert_allclose(sd["0.running_var"], rv, rtol=1e-12)
        assert sd["0.num_batches_tracked"] == t
    x = rng.normal(size=(2, 3, 5, 6))
    want = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-3)
    want = want * gamma[None, :, None, None] + beta[None, :, None, None]
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-12, atol=1e-12)


def test_batchnorm1d_on_sequences_normalizes_over_batch_and_length() -> None:
    x = np.random.default_rng(6).normal(1.0, 2.0, size=(3, 4, 7)).astype(np.float32)
    out = fg.Sequential([L.BatchNorm1D(4)]).forward(x, training=True)
    np.testing.assert_allclose(out.mean(axis=(0, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 2)), 1.0, rtol=1e-3)


def test_modes_predict_and_evaluate_never_change_state() -> None:
    rng = np.random.default_rng(7)
    model = fg.Sequential(
        [
            L.Conv2D(1, 4, 3, padding=1),
            L.BatchNorm2D(4),
            L.ReLU(),
            L.Dropout(0.5),
            L.GlobalAvgPool2D(),
            L.Dense(4, 2),
        ],
        seed=3,
    )
    x = rng.normal(size=(8, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 2, size=8)
    with unchanged(model):
        model.predict(x)
        model.evaluate(x, y, "cross_entropy")
        model.forward(x)  # evaluation mode by default
        model(x, training=False)
    # Evaluation outputs are deterministic; training ones are not (dropout).
    np.testing.assert_array_equal(model.predict(x), model.forward(x, training=False))
    before = model.state_dict()["1.running_mean"]
    model.train()
    model(x)  # a training pass moves the running statistics
    assert not np.array_equal(model.state_dict()["1.running_mean"], before)
    assert model.state_dict()["1.num_batches_tracked"] == 1
    model.eval()
    n0 = model.state_dict()["1.num_batches_tracked"]
    model.fit(
        x, y, "cross_entropy", "sgd", epochs=2, batch_size=4, validation_data=(x, y), verbose=0
    )
    # fit trains in training mode (2 epochs x 2 batches) and validates in
    # evaluation mode (no further updates), leaving the mode as it was.
    assert model.state_dict()["1.num_batches_tracked"] == n0 + 4
    assert model.training is False


def test_state_dict_round_trip_with_buffers() -> None:
    def make(seed):
        return fg.Sequential(
            [L.Conv2D(2, 3, 3), L.BatchNorm2D(3), L.Flatten(), L.Dense(12, 2)], seed=seed
        )

    a, b = make(1), make(2)
    x = np.random.default_rng(8).normal(size=(5, 2, 4, 4)).astype(np.float32)
    a.forward(x, training=True)
    a.load_state_dict(a.state_dict())
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    names = [p.name for p in a.parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert [n for n, _ in a.named_buffers()] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]


# ---------------------------------------------------------------- shapes and display


def test_output_shapes_summary_and_repr() -> None:
    model = fg.Sequential(
        [
            L.Conv2D(1, 32, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Conv2D(32, 64, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(3136, 256),
            L.ReLU(),
            L.Dense(256, 10),
        ]
    )
    text = model.summary(input_shape=(1, 28, 28), print_fn=None)
    for shape in (
        "(N, 32, 28, 28)",
        "(N, 32, 14, 14)",
        "(N, 64, 14, 14)",
        "(N, 64, 7, 7)",
        "(N, 3136)",
        "(N, 10)",
    ):
        assert shape in text
    assert "Total params: 857,738" in text
    assert model.num_params() == 857_738 == sum(ly.num_params() for ly in model.layers)
    model.predict(np.zeros((2, 1, 28, 28), np.float32))
    assert "(N, 64, 7, 7)" in repr(model)  # the last input shape seen


def test_flatten_and_dropout_on_any_rank() -> None:
    x = np.random.default_rng(9).normal(size=(3, 2, 3, 4, 5)).astype(np.float32)
    out = fg.Sequential([L.Flatten()]).predict(x)
    np.testing.assert_array_equal(out, x.reshape(3, -1))
    d = fg.Sequential([L.Dropout(0.5)], seed=0)
    np.testing.assert_array_equal(d.predict(x), x)
    t = d.forward(x, training=True)
    assert t.shape == x.shape and 0.3 < (t == 0).mean() < 0.7


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: L.Conv2D(0, 8, 3), ValueError, r"Conv2D: in_channels must be >= 1, got 0"),
        (lambda: L.Conv2D(1, 0, 3), ValueError, r"Conv2D: out_channels must be >= 1, got 0"),
        (lambda: L.Conv2D(1, 8, 0), ValueError, r"Conv2D: kernel_size must be >= 1, got \(0, 0\)"),
        (lambda: L.Conv2D(1, 8, (3, -1)), ValueError, r"Conv2D: kernel_size must be >= 1, got -1"),
        (
            lambda: L.Conv2D(1, 8, 3, stride=0),
            ValueError,
            r"Conv2D: stride must be >= 1, got \(0, 0\)",
        ),
        (lambda: L.Conv2D(1, 8, 3, dilation=(1, 0)), ValueError, r"Conv2D: dilation must be >= 1"),
        (
            lambda: L.Conv2D(1, 8, 3, padding=-1),
            ValueError,
            r"Conv2D: padding must be >= 0, got -1",
        ),
        (
            lambda: L.Conv2D(1, 8, 3, padding="full"),
            ValueError,
            r"Conv2D: unknown padding \"full\"",
        ),
        (
            lambda: L.Conv2D(1, 8, 3, padding="same", stride=2),
            ValueError,
            r"padding=\"same\" needs stride 1",
        ),
        (
            lambda: L.Conv2D(1, 8, 3, init="orthogonal"),
            ValueError,
            r"Conv2D: unknown init \"orthogonal\"",
        ),
        (lambda: L.Conv2D(1.5, 8, 3), TypeError, r"Conv2D: in_channels must be an int"),
        (lambda: L.Conv2D(1, 8, (3, 3, 3)), TypeError, r"kernel_size must be an int or a pair"),
        (lambda: L.Conv2D(1, 8, 3, padding=1.5), TypeError, r"padding must be an int"),
        (
            lambda: L.Conv1D(1, 8, 3, padding="same", stride=2),
            ValueError,
            r"Conv1D: padding=\"same\" needs stride 1",
        ),
        (lambda: L.Conv1D(1, 8, (3, 3)), TypeError, r"Conv1D: kernel_size must be an int"),
        (lambda: L.MaxPool2D(0), ValueError, r"MaxPool2D: kernel_size must be >= 1"),
        (lambda: L.MaxPool2D(2, stride=0), ValueError, r"MaxPool2D: stride must be >= 1"),
        (
            lambda: L.MaxPool2D(3, padding=2),
            ValueError,
            r"padding must be at most half the kernel size",
        ),
        (lambda: L.AvgPool2D(2, padding=-1), ValueError, r"AvgPool2D: padding must be >= 0"),
        (lambda: L.MaxPool1D(2, padding=2), ValueError, r"MaxPool1D: padding must be at most half"),
        (lambda: L.BatchNorm2D(0), ValueError, r"BatchNorm2D: num_features must be >= 1"),
        (lambda: L.BatchNorm2D(4, momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
        (lambda: L.BatchNorm2D(4, momentum=-0.1), ValueError, r"momentum must be in \[0, 1\]"),
        (
            lambda: L.BatchNorm1D(4, eps=0.0),
            ValueError,
            r"BatchNorm1D: eps must be a finite value > 0",
        ),
        (lambda: L.BatchNorm1D(4, eps=float("nan")), ValueError, r"eps must be a finite value > 0"),
        (lambda: L.BatchNorm1D(4, momentum="fast"), TypeError, r"momentum must be a number"),
    ],
)
def test_bad_layer_settings(make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        make()


CNN = [L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(64, 3)]


@pytest.mark.parametrize(
    ("x", "exc", "match"),
    [
        (
            np.zeros((2, 16, 16)),
            fg.ShapeError,
            r"layer 0 \(Conv2D\): Conv2D expects inputs of shape \(N, C, H, W\) with C = 1, got per-sample shape \[16, 16\]",
        ),
        (np.zeros((2, 3, 16, 16)), fg.ShapeError, r"Conv2D expects .* C = 1, got 3 channels"),
        (
            np.zeros((2, 1, 16, 15)),
            fg.ShapeError,
            r"layer 4 \(Dense\): Dense\(64, 3\) expects inputs whose last dimension is 64, got per-sample shape \[224\]",
        ),
        (
            np.zeros((2, 1, 1, 1)),
            fg.ShapeError,
            r"MaxPool2D: kernel_size \(2, 2\) is larger than the padded input",
        ),
    ],
    ids=["rank", "channels", "flattened_size", "too_small"],
)
def test_bad_input_shapes_leave_the_model_unchanged(x, exc, match) -> None:
    model = fg.Sequential(CNN, seed=0)
    y = np.zeros(len(x), np.int64)
    with unchanged(model), pytest.raises(exc, match=match):
        model.fit(x.astype(np.float32), y, "cross_entropy", "adam", verbose=0)
    with unchanged(model), pytest.raises(exc, match=match):
        model.predict(x.astype(np.float32))
    with unchanged(model), pytest.raises(exc, match=match):
        model.forward(x.astype(np.float32), training=True)


def test_kernel_larger_than_the_input() -> None:
    model = fg.Sequential([L.Conv2D(1, 2, 5, dilation=2)], seed=0)
    with (
        unchanged(model),
        pytest.raises(
            fg.ShapeError,
            match=r"kernel spans 9x9 \(after dilation\) but the padded input is only 8x8",
        ),
    ):
        model.predict(np.zeros((1, 1, 8, 8), np.float32))


def test_batchnorm_refuses_one_value_per_channel_in_training() -> None:
    model = fg.Sequential([L.Dense(3, 4), L.BatchNorm1D(4), L.Dense(4, 2)], seed=0)
    one = np.ones((1, 3), np.float32)
    with (
        unchanged(model),
        pytest.raises(
            ValueError,
            match=r"BatchNorm1D: expected more than 1 value per channel when training, got input shape \[1, 4\]",
        ),
    ):
        model.forward(one, training=True)
    model.predict(one)  # evaluation is fine
    # fit checks every batch size before the first step: 9 samples in
    # batches of 4 leaves a last batch of 1.
    x = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    with (
        unchanged(model),
        pytest.raises(ValueError, match=r"last batch.*9 samples in batches of 4"),
    ):
        model.fit(x, np.zeros(9, np.int64), "cross_entropy", "adam", batch_size=4, verbose=0)
    model.fit(x, np.zeros(9, np.int64), "cross_entropy", "adam", batch_size=3, verbose=0)
    # An image batch of one sample still has many values per channel.
    bn2 = fg.Sequential([L.Conv2D(1, 2, 3), L.BatchNorm2D(2)], seed=0)
    bn2.forward(np.ones((1, 1, 4, 4), np.float32), training=True)


@pytest.mark.parametrize(
    ("layers", "shape"),
    [([L.BatchNorm2D(3)], (2, 4, 4)), ([L.BatchNorm1D(3)], (4,)), ([L.BatchNorm2D(3)], (3, 4))],
)
def test_batchnorm_feature_mismatch(layers, shape) -> None:
    model = fg.Sequential(layers)
    with (
        unchanged(model),
        pytest.raises(fg.ShapeError, match=r"BatchNorm[12]D\(3\) expects inputs of shape"),
    ):
        model.predict(np.zeros((2, *shape), np.float32))


def test_load_state_dict_missing_or_misshaped_weight_or_buffer() -> None:
    model = fg.Sequential([L.Conv2D(1, 2, 3), L.BatchNorm2D(2)], seed=0)
    sd = model.state_dict()
    with unchanged(model), pytest.raises(ValueError, match=r'missing key "1.running_var"'):
        model.load_state_dict({k: v for k, v in sd.items() if k != "1.running_var"})
    with (
        unchanged(model),
        pytest.raises(
            fg.ShapeError, match=r'"0.weight" has shape \[2, 1, 3\], expected \[2, 1, 3, 3\]'
        ),
    ):
        model.load_state_dict({**sd, "0.weight": np.zeros((2, 1, 3))})
    with (
        unchanged(model),
        pytest.raises(fg.ShapeError, match=r'"1.running_mean" has shape \[3\], expected \[2\]'),
    ):
        model.load_state_dict({**sd, "1.running_mean": np.zeros(3)})
    with (
        unchanged(model),
        pytest.raises(ValueError, match=r'"1.num_batches_tracked" must hold integers'),
    ):
        model.load_state_dict({**sd, "1.num_batches_tracked": np.array(1.5)})
    with (
        unchanged(model),
        pytest.raises(ValueError, match=r'"1.num_batches_tracked" must be a count >= 0'),
    ):
        model.load_state_dict({**sd, "1.num_batches_tracked": np.array(-1)})
    model.load_state_dict({**sd, "1.num_batches_tracked": 7})
    assert model.state_dict()["1.num_batches_tracked"] == 7

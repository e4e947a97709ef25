"""ConvTranspose2D, Upsample2D and Identity: forward passes against numpy
written from torch's definitions, shapes and display, bad arguments and
inputs, save/load, thread-count determinism, and PyTorch itself when it is
installed. Their gradients are checked against finite differences in
test_conv_gradients.py."""

from __future__ import annotations

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

# ---------------------------------------------------------------- numpy references


def np_conv_transpose(x, w, b, stride, padding, output_padding, dilation):
    """torch.nn.functional.conv_transpose2d by its definition: input (h, w)
    adds ``x * w[i, o, kh, kw]`` to output (h * s + kh * d - p, ...)."""
    n, _, h, wd = x.shape
    _, co, kh, kw = w.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    fh = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    fw = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, co, fh, fw))
    for i in range(kh):
        for j in range(kw):
            full[
                :,
                :,
                i * dh : i * dh + sh * (h - 1) + 1 : sh,
                j * dw : j * dw + sw * (wd - 1) + 1 : sw,
            ] += np.einsum("nchw,co->nohw", x, w[:, :, i, j])
    out = full[:, :, ph : fh - ph, pw : fw - pw]
    return out if b is None else out + b[None, :, None, None]


def np_upsample_bilinear(x, sh, sw):
    """torch's bilinear upsampling with align_corners=False."""

    def taps(size, s):
        src = np.maximum((np.arange(size * s) + 0.5) / s - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), size - 1)
        i1 = np.minimum(i0 + 1, size - 1)
        lam = src - i0
        return i0, i1, lam

    r0, r1, lr = taps(x.shape[2], sh)
    c0, c1, lc = taps(x.shape[3], sw)
    lr, lc = lr[:, None], lc[None, :]
    top = x[:, :, r0][:, :, :, c0] * (1 - lc) + x[:, :, r0][:, :, :, c1] * lc
    bottom = x[:, :, r1][:, :, :, c0] * (1 - lc) + x[:, :, r1][:, :, :, c1] * lc
    return top * (1 - lr) + bottom * lr


CT_CASES = [
    # (in, out, kernel, stride, padding, output_padding, dilation, bias, per-sample input)
    (4, 3, 2, 2, 0, 0, 1, True, (4, 5, 6)),
    (5, 2, 3, 2, 1, 1, 1, True, (5, 4, 3)),
    (3, 4, (3, 2), (2, 3), (2, 1), (1, 2), (1, 2), False, (3, 5, 4)),
    (2, 2, 3, (1, 2), (0, 1), (1, 0), (2, 1), True, (2, 3, 4)),
    (17, 33, 4, 2, 1, 0, 1, True, (17, 3, 3)),
]


@pytest.mark.parametrize("case", CT_CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_transpose_forward_matches_numpy(case, dtype) -> None:
    ci, co, k, s, p, op, d, bias, shape = case
    layer = L.ConvTranspose2D(
        ci, co, k, stride=s, padding=p, output_padding=op, dilation=d, bias=bias
    )
    # Before and after a convolution: channels-last input and output.
    for layers in ([layer], [L.Conv2D(ci, ci, 1), layer, L.Conv2D(co, co, 1)]):
        model = fg.Sequential(layers, seed=3, dtype=dtype)
        rng = np.random.default_rng(5)
        state = {k_: rng.normal(size=v.shape) for k_, v in model.state_dict().items()}
        if len(layers) == 3:
            for name in ("0.weight", "2.weight"):
                state[name] = np.eye(ci if name == "0.weight" else co)[:, :, None, None]
            state["0.bias"], state["2.bias"] = np.zeros(ci), np.zeros(co)
        model.load_state_dict(state)
        key = "0" if len(layers) == 1 else "1"
        x = rng.normal(size=(3, *shape))
        want = np_conv_transpose(
            x,
            state[f"{key}.weight"],
            state.get(f"{key}.bias"),
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.dilation,
        )
        tol = 1e-12 if dtype == "float64" else 1e-4
        np.testing.assert_allclose(model.predict(x.astype(dtype)), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_upsample_and_identity_match_numpy(dtype) -> None:
    x = np.random.default_rng(2).normal(size=(2, 3, 4, 5)).astype(dtype)
    near = fg.Sequential([L.Upsample2D((2, 3))], dtype=dtype)
    np.testing.assert_array_equal(near.predict(x), x.repeat(2, axis=2).repeat(3, axis=3))
    np.testing.assert_array_equal(fg.Sequential([L.Upsample2D()]).predict(x).shape, (2, 3, 8, 10))
    bil = fg.Sequential([L.Upsample2D((3, 2), mode="bilinear")], dtype=dtype)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(
        bil.predict(x), np_upsample_bilinear(x.astype(np.float64), 3, 2), rtol=tol, atol=tol
    )
    np.testing.assert_array_equal(fg.Sequential([L.Identity()], dtype=dtype).predict(x), x)


def test_backward_of_upsample_and_identity_by_hand() -> None:
    """Nearest: each input's gradient is the sum over its block; identity
    passes the gradient through."""
    model = fg.Sequential([L.Dense(1, 1, bias=False), L.Identity()], dtype="float64")
    model.load_state_dict({"0.weight": np.array([[2.0]])})
    x = np.ones((3, 1))
    model.forward(x, training=True)
    model.backward(np.array([[1.0], [2.0], [3.0]]))
    assert model.parameters()[0].grad[0, 0] == 6.0
    model = fg.Sequential([L.Conv2D(1, 1, 1, bias=False), L.Upsample2D((2, 3))], dtype="float64")
    model.load_state_dict({"0.weight": np.ones((1, 1, 1, 1))})
    x = np.random.default_rng(0).normal(size=(2, 1, 3, 2))
    dy = np.random.default_rng(1).normal(size=(2, 1, 6, 6))
    model.forward(x, training=True)
    model.backward(dy)
    # dL/dw = sum over inputs of x * (sum of dy over the input's block).
    blocks = dy.reshape(2, 1, 3, 2, 2, 3).sum(axis=(3, 5))
    np.testing.assert_allclose(model.parameters()[0].grad.ravel(), [(x * blocks).sum()])


def test_conv_transpose_default_init_is_conv2ds() -> None:
    """He normal with torch's fans for the weight (in, out, kh, kw):
    fan_in = out_channels * kh * kw; biases start at zero."""
    model = fg.Sequential([L.ConvTranspose2D(64, 32, 3)], seed=0)
    state = model.state_dict()
    assert state["0.weight"].shape == (64, 32, 3, 3)
    assert state["0.bias"].shape == (32,)
    np.testing.assert_array_equal(state["0.bias"], 0)
    std = np.sqrt(2 / (32 * 9))
    assert abs(state["0.weight"].std() / std - 1) < 0.03
    assert abs(state["0.weight"].mean()) < 0.05 * std
    xavier = fg.Sequential([L.ConvTranspose2D(64, 32, 3, init="xavier")], seed=0).state_dict()
    assert np.abs(xavier["0.weight"]).max() <= np.sqrt(6 / (32 * 9 + 64 * 9))


# ---------------------------------------------------------------- shapes and display


def decoder() -> list:
    return [
        L.Conv2D(32, 32, 3, padding=1),
        L.ReLU(),
        L.ConvTranspose2D(32, 16, 2, stride=2),
        L.Identity(),
        L.ConvTranspose2D(16, 8, 3, stride=2, padding=1, output_padding=1, bias=False),
        L.Upsample2D((2, 3), mode="bilinear"),
        L.Conv2D(8, 2, 1),
    ]


def test_output_shapes_summary_and_repr() -> None:
    model = fg.Sequential(decoder())
    text = model.summary(input_shape=(32, 7, 7), print_fn=None)
    for shape in ("(N, 16, 14, 14)", "(N, 8, 28, 28)", "(N, 8, 56, 84)", "(N, 2, 56, 84)"):
        assert shape in text
    assert "ConvTranspose2D(32, 16, 2, stride=2)" in text
    assert "ConvTranspose2D(16, 8, 3, stride=2, padding=1, output_padding=1, bias=False)" in text
    assert "Upsample2D(scale_factor=(2, 3), mode='bilinear')" in text
    assert "Identity()" in text
    assert repr(L.Upsample2D()) == "Upsample2D()"
    # A convolution whose stride equals its kernel shows the stride (only
    # pooling's stride defaults to the kernel size).
    assert repr(L.Conv2D(1, 2, 2, stride=2)) == "Conv2D(1, 2, 2, stride=2)"
    assert repr(L.MaxPool2D(2)) == "MaxPool2D(2)"
    params = 32 * 32 * 9 + 32 + 32 * 16 * 4 + 16 + 16 * 8 * 9 + 8 * 2 + 2
    assert model.num_params() == params == sum(ly.num_params() for ly in model.layers)
    assert f"Total params: {params:,}" in text
    assert [p.name for p in model.parameters()] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "6.weight",
        "6.bias",
    ]
    assert model.predict(np.zeros((2, 32, 7, 7), np.float32)).shape == (2, 2, 56, 84)
    # Output sizes per torch's formula, dilation and odd sizes included.
    for ci, co, k, s, p, op, d, _, shape in CT_CASES:
        layer = L.ConvTranspose2D(ci, co, k, stride=s, padding=p, output_padding=op, dilation=d)
        got = fg.Sequential([layer]).predict(np.zeros((1, *shape), np.float32)).shape[1:]
        want = [
            (shape[1 + i] - 1) * layer.stride[i]
            - 2 * layer.padding[i]
            + layer.dilation[i] * (layer.kernel_size[i] - 1)
            + layer.output_padding[i]
            + 1
            for i in range(2)
        ]
        assert list(got) == [co, *want]


def test_layers_round_trip_through_specs() -> None:
    for layer in decoder():
        again = L.from_spec(layer._spec())
        assert again == layer and repr(again) == repr(layer)


def test_save_and_load_round_trip(tmp_path) -> None:
    model = fg.Sequential(decoder(), seed=4)
    x = np.random.default_rng(3).normal(size=(3, 32, 5, 4)).astype(np.float32)
    model.fit(x, np.zeros((3, 2, 40, 48), np.float32), "mse", "adam", epochs=2, verbose=0)
    path = tmp_path / "decoder.safetensors"
    model.save(path)
    loaded = fg.load(path)
    assert loaded.layers == model.layers
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (
            lambda: L.ConvTranspose2D(4, 2, 3, stride=2, output_padding=2),
            ValueError,
            r"ConvTranspose2D: output_padding must be smaller than either stride or dilation "
            r"\(as in torch\), got output_padding \(2, 2\), stride \(2, 2\), dilation \(1, 1\)",
        ),
        (
            lambda: L.ConvTranspose2D(4, 2, 3, output_padding=(0, 1), dilation=(1, 2)),
            None,
            None,
        ),
        (lambda: L.ConvTranspose2D(0, 2, 3), ValueError, r"in_channels must be >= 1, got 0"),
        (lambda: L.ConvTranspose2D(4, 0, 3), ValueError, r"out_channels must be >= 1, got 0"),
        (lambda: L.ConvTranspose2D(4, 2, (3, 0)), ValueError, r"kernel_size must be >= 1"),
        (lambda: L.ConvTranspose2D(4, 2, 3, stride=0), ValueError, r"stride must be >= 1"),
        (lambda: L.ConvTranspose2D(4, 2, 3, dilation=0), ValueError, r"dilation must be >= 1"),
        (
            lambda: L.ConvTranspose2D(4, 2, 3, padding=-1),
            ValueError,
            r"ConvTranspose2D: padding must be >= 0, got -1",
        ),
        (
            lambda: L.ConvTranspose2D(4, 2, 3, stride=2, output_padding=-1),
            ValueError,
            r"ConvTranspose2D: output_padding must be >= 0, got -1",
        ),
        (lambda: L.ConvTranspose2D(4, 2, 3, padding="same"), TypeError, r"padding must be an int"),
        (lambda: L.ConvTranspose2D(4, 2, 3, init="orthogonal"), ValueError, r"unknown init"),
        (lambda: L.ConvTranspose2D(4, 2.0, 3), TypeError, r"out_channels must be an int"),
        (
            lambda: L.Upsample2D(0),
            ValueError,
            r"Upsample2D: scale_factor must be >= 1, got \(0, 0\)",
        ),
        (lambda: L.Upsample2D((2, -1)), ValueError, r"scale_factor must be >= 1, got -1"),
        (lambda: L.Upsample2D(1.5), TypeError, r"Upsample2D: scale_factor must be an int"),
        (
            lambda: L.Upsample2D(2, mode="bicubic"),
            ValueError,
            r"Upsample2D: unknown mode \"bicubic\"; expected \"nearest\" or \"bilinear\"",
        ),
        (lambda: L.Upsample2D(2, mode=None), TypeError, r"mode must be a string"),
        (lambda: L.from_spec({"type": "Identity", "p": 1}), ValueError, r"unknown argument"),
    ],
)
def test_bad_layer_settings(make, exc, match) -> None:
    if exc is None:
        make()
        return
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize(
    ("layers", "x", "match"),
    [
        (
            [L.ConvTranspose2D(4, 2, 3)],
            np.zeros((2, 3, 5, 5)),
            r"layer 0 \(ConvTranspose2D\): ConvTranspose2D expects inputs of shape \(N, C, H, W\) "
            r"with C = 4, got 3 channels",
        ),
        ([L.ConvTranspose2D(4, 2, 3)], np.zeros((2, 4, 5)), r"got per-sample shape \[4, 5\]"),
        (
            [L.ConvTranspose2D(1, 1, 1, padding=1)],
            np.zeros((2, 1, 2, 5)),
            r"ConvTranspose2D: the output would be empty",
        ),
        (
            [L.Dense(5, 5), L.Upsample2D(2)],
            np.zeros((2, 3, 5)),
            r"layer 1 \(Upsample2D\): Upsample2D expects inputs of shape \(N, C, H, W\), "
            r"got per-sample shape \[3, 5\]",
        ),
    ],
)
def test_bad_input_shapes_leave_the_model_unchanged(layers, x, match) -> None:
    model = fg.Sequential([*layers, L.Flatten()], seed=0)
    state = model.state_dict()
    with pytest.raises(fg.ShapeError, match=match):
        model.predict(x.astype(np.float32))
    with pytest.raises(fg.ShapeError, match=match):
        model.fit(x.astype(np.float32), np.zeros((2, 1), np.float32), "mse", "sgd", verbose=0)
    for k, v in state.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


# ---------------------------------------------------------------- determinism


def _small_decoder() -> list:
    return [
        L.Conv2D(8, 16, 3, padding=1),
        L.ConvTranspose2D(16, 8, 2, stride=2),
        L.Tanh(),
        L.Identity(),
        L.ConvTranspose2D(8, 4, 3, stride=2, padding=1, output_padding=1),
        L.Upsample2D((1, 2)),
        L.Conv2D(4, 4, 3, padding=1),
        L.Upsample2D((2, 3), mode="bilinear"),
        L.Conv2D(4, 2, 1),
    ]


def test_thread_count_does_not_change_training() -> None:
    before = fg.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 6, 6)).astype(np.float32)
    y = rng.normal(size=(40, 2, 48, 144)).astype(np.float32)
    states = []
    try:
        for threads in (1, 2, 3):
            fg.set_num_threads(threads)
            model = fg.Sequential(_small_decoder(), seed=1)
            model.fit(x, y, "mse", "adam", epochs=2, batch_size=16, verbose=0)
            states.append((model.state_dict(), model.predict(x)))
    finally:
        fg.set_num_threads(before)
    for state, out in states[1:]:
        for k, v in states[0][0].items():
            assert state[k].tobytes() == v.tobytes(), k
        assert out.tobytes() == states[0][1].tobytes()


# ---------------------------------------------------------------- PyTorch


def torch_pair():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    ours = [
        L.Conv2D(3, 6, 3, padding=1),
        L.ReLU(),
        L.ConvTranspose2D(6, 4, 2, stride=2),
        L.Tanh(),
        L.Upsample2D((1, 2), mode="bilinear"),
        L.ConvTranspose2D(4, 3, 3, stride=2, padding=1, output_padding=1),
        L.Identity(),
        L.Upsample2D(2),
        L.ConvTranspose2D(3, 2, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1), bias=False),
        L.Conv2D(2, 2, 3, stride=2),
        L.Flatten(),
        L.Dense(2 * 11 * 62, 4),
    ]
    theirs = [
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 2, stride=2),
        nn.Tanh(),
        nn.Upsample(scale_factor=(1, 2), mode="bilinear"),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        nn.Identity(),
        nn.Upsample(scale_factor=2),
        nn.ConvTranspose2d(
            3, 2, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1), bias=False
        ),
        nn.Conv2d(2, 2, 3, stride=2),
        nn.Flatten(),
        nn.Linear(2 * 11 * 62, 4),
    ]
    return torch, ours, nn.Sequential(*theirs)


def test_matches_torch() -> None:
    torch, ours_layers, theirs = torch_pair()
    theirs = theirs.double()
    ours = fg.Sequential(ours_layers, seed=0, dtype="float64")
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 3, 4))
    y = rng.integers(0, 4, size=5)
    out_t = theirs(torch.from_numpy(x))
    loss_t = torch.nn.functional.cross_entropy(out_t, torch.from_numpy(y))
    loss_t.backward()
    loss_fn = fg.losses.CrossEntropy()
    out = ours.forward(x, training=True)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert abs(loss_fn(out, y) - loss_t.item()) < 1e-12
    ours.backward(loss_fn.backward())
    grads = dict(theirs.named_parameters())
    for p in ours.parameters():
        np.testing.assert_allclose(
            p.grad, grads[p.name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=p.name
        )
    # Ours loads into torch unchanged.
    _, _, other = torch_pair()
    other = other.double().eval()
    other.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    with torch.no_grad():
        np.testing.assert_allclose(
            other(torch.from_numpy(x)).numpy(), ours.predict(x), rtol=1e-10, atol=1e-12
        )


def test_float32_predicts_as_torch() -> None:
    torch, ours_layers, theirs = torch_pair()
    ours = fg.Sequential(ours_layers, seed=3)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(1).normal(size=(16, 3, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = theirs.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.predict(x), want, rtol=1e-4, atol=1e-5)

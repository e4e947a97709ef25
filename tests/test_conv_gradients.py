"""Convolution, pooling and BatchNorm against finite differences (float64).

Every case goes through ``fg.gradcheck`` with random parameters: a layer
whose input gradient matters sits after another layer with parameters, so
that its ``dx`` reaches their gradients. Kinks (ReLU, the maximum of a pooling
window) are kept away from: a draw whose pre-activations or window maxima are
within KINK_MARGIN of switching is redrawn, as in test_gradients.py.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

# The acceptance bound of test_gradients.py (a wrong term gives 1e-2 or more).
GRAD_TOL = 1e-6
# The finite-difference step of test_gradients.py (its comments give the
# error budget: about 6e-10 absolute, against gradients >= MIN_GRAD).
GRADCHECK_EPS = 1e-5
MIN_GRAD = 1e-3
# A weight step of 1e-5 moves an activation by ~1e-4 at most here, so 1e-3
# keeps a 10x margin from a ReLU kink or a change of a window's maximum.
KINK_MARGIN = 1e-3
PARAM_STD = 0.7
SEED = 4321
MAX_DRAWS = 300


class Case(NamedTuple):
    """Layers, the per-sample input shape, the batch size, the loss and,
    for a kinked model, how to find the values at the kink: a function of
    the model and ``x`` returning the arrays that must stay away from it."""

    layers: Callable[[], list]
    in_shape: tuple
    n: int = 3
    loss: str = "mse"
    kinks: Callable[[fg.Sequential, np.ndarray], list] | None = None


def randomize(model: fg.Sequential, rng: np.random.Generator) -> None:
    """N(0, PARAM_STD^2) parameters (buffers keep their initial values)."""
    state = model.state_dict()
    for p in model.parameters():
        state[p.name] = rng.normal(0.0, PARAM_STD, size=p.shape)
    model.load_state_dict(state)


def prefix(model: fg.Sequential, k: int) -> np.ndarray | None:
    """A model of the first ``k`` layers with the same parameters."""
    head = fg.Sequential(model.layers[:k], dtype="float64", seed=0)
    state = model.state_dict()
    head.load_state_dict({name: state[name] for name in head.state_dict()})
    return head


def pre_activation(k: int) -> Callable[[fg.Sequential, np.ndarray], list]:
    """The input of the ReLU at layer ``k`` (the layers before it, run alone)."""
    return lambda model, x: [prefix(model, k).forward(x, training=True)]


def window_gaps(k: int, kernel: int, stride: int, padding: int, dims: int = 2):
    """For the max pooling at layer ``k``: the gap between each window's
    largest and second largest input (padding is minus infinity)."""

    def gaps(model: fg.Sequential, x: np.ndarray) -> list:
        a = prefix(model, k).forward(x, training=True)
        if dims == 1:
            a = a[:, :, None, :]
        kh, sh, ph = (1, 1, 0) if dims == 1 else (kernel, stride, padding)
        a = np.pad(a, ((0, 0), (0, 0), (ph, ph), (padding, padding)), constant_values=-np.inf)
        n, c, h, w = a.shape
        out = []
        for i in range(0, h - kh + 1, sh):
            for j in range(0, w - kernel + 1, stride):
                win = np.sort(a[:, :, i : i + kh, j : j + kernel].reshape(n, c, -1), axis=-1)
                out.append(win[..., -1] - win[..., -2])
        return out

    return gaps


def targets(model: fg.Sequential, case: Case, x: np.ndarray, rng) -> np.ndarray:
    out_shape = model.predict(x).shape
    if case.loss == "cross_entropy":
        return rng.integers(0, out_shape[1], size=len(x))
    return rng.normal(size=out_shape)


def step_grads(model: fg.Sequential, loss: str, x: np.ndarray, y: np.ndarray) -> dict:
    loss_fn = fg.losses.get(loss)
    model.zero_grad()
    loss_fn(model.forward(x, training=True), y)
    model.backward(loss_fn.backward())
    grads = {p.name: p.grad for p in model.parameters()}
    model.zero_grad()
    return grads


def draw(case: Case) -> tuple[fg.Sequential, np.ndarray, np.ndarray]:
    for seed in range(SEED, SEED + MAX_DRAWS):
        rng = np.random.default_rng(seed)
        model = fg.Sequential(case.layers(), seed=seed, dtype="float64")
        randomize(model, rng)
        x = rng.normal(size=(case.n, *case.in_shape))
        y = targets(model, case, x, rng)
        if case.kinks and any(np.min(np.abs(v)) < KINK_MARGIN for v in case.kinks(model, x)):
            continue
        grads = step_grads(model, case.loss, x, y)
        if all(
            np.any(g != 0) and np.all((g == 0) | (np.abs(g) >= MIN_GRAD)) for g in grads.values()
        ):
            return model, x, y
    raise AssertionError(f"no well-conditioned draw in {MAX_DRAWS} seeds")


CASES = {
    "conv": Case(lambda: [L.Conv2D(2, 3, 3)], (2, 5, 6)),
    "conv_stride2_pad1": Case(lambda: [L.Conv2D(2, 3, 3, stride=2, padding=1)], (2, 7, 6)),
    "conv_same_even_kernel": Case(lambda: [L.Conv2D(2, 2, 4, padding="same")], (2, 5, 5)),
    "conv_valid": Case(lambda: [L.Conv2D(2, 2, 2, padding="valid")], (2, 4, 3)),
    "conv_dilation": Case(lambda: [L.Conv2D(1, 2, 3, dilation=2, padding=2)], (1, 7, 7)),
    "conv_tuples": Case(
        lambda: [L.Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))], (2, 6, 7)
    ),
    "conv_no_bias": Case(lambda: [L.Conv2D(3, 2, 2, bias=False)], (3, 4, 5)),
    # A second convolution makes the first one's weight gradient depend on
    # the second one's input gradient.
    "conv_chain": Case(
        lambda: [L.Conv2D(2, 4, 3, padding=1), L.Tanh(), L.Conv2D(4, 3, 3, stride=2)], (2, 7, 7)
    ),
    "conv_chain_batch_1": Case(
        lambda: [L.Conv2D(2, 4, 3, padding=1), L.Tanh(), L.Conv2D(4, 3, 3, stride=2)],
        (2, 7, 7),
        n=1,
    ),
    "conv_chain_strided_dilated": Case(
        lambda: [
            L.Conv2D(2, 3, 3, stride=2, padding=1, dilation=2),
            L.Tanh(),
            L.Conv2D(3, 2, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        ],
        (2, 9, 10),
    ),
    "conv_chain_padding_beyond_kernel": Case(
        lambda: [L.Conv2D(1, 2, 2), L.Sigmoid(), L.Conv2D(2, 2, 2, padding=3)], (1, 4, 5)
    ),
    "conv_relu_fused": Case(
        lambda: [L.Conv2D(2, 3, 3, padding=1), L.ReLU(), L.Conv2D(3, 2, 2)],
        (2, 5, 5),
        kinks=pre_activation(1),
    ),
    "conv1d_chain": Case(
        lambda: [L.Conv1D(2, 3, 3, stride=2, padding=1), L.Tanh(), L.Conv1D(3, 2, 2, dilation=2)],
        (2, 11),
    ),
    "conv1d_same": Case(lambda: [L.Conv1D(2, 3, 4, padding="same", bias=False)], (2, 7)),
    # Transposed convolutions after a convolution (their input gradient
    # reaches its weights) and before one (channels-last buffers between).
    "conv_transpose": Case(lambda: [L.ConvTranspose2D(2, 3, 3)], (2, 4, 5)),
    "conv_transpose_k2_s2_chain": Case(
        lambda: [L.Conv2D(2, 3, 3, padding=1), L.Tanh(), L.ConvTranspose2D(3, 2, 2, stride=2)],
        (2, 4, 5),
    ),
    "conv_transpose_s2_p1_op1_channels_last": Case(
        lambda: [
            L.Conv2D(2, 3, 2),
            L.ConvTranspose2D(3, 4, 3, stride=2, padding=1, output_padding=1),
            L.Tanh(),
            L.Conv2D(4, 2, 3),
            L.Flatten(),
            L.Dense(2 * 6 * 8, 3),
        ],
        (2, 5, 6),
        loss="cross_entropy",
    ),
    "conv_transpose_tuples_dilated_no_bias": Case(
        lambda: [
            L.Conv2D(2, 3, 2),
            L.Sigmoid(),
            L.ConvTranspose2D(
                3,
                2,
                (3, 2),
                stride=(2, 1),
                padding=(1, 2),
                output_padding=(1, 1),
                dilation=(1, 2),
                bias=False,
            ),
        ],
        (2, 4, 6),
    ),
    "upsample_nearest_between_convs": Case(
        lambda: [L.Conv2D(2, 3, 3), L.Upsample2D(2), L.Tanh(), L.Conv2D(3, 2, 3)], (2, 4, 5)
    ),
    "upsample_nearest_pair_last": Case(
        lambda: [L.Conv2D(2, 3, 2), L.Tanh(), L.Upsample2D((3, 2))], (2, 3, 4)
    ),
    "upsample_bilinear_between_convs": Case(
        lambda: [L.Conv2D(2, 3, 3), L.Upsample2D((2, 3), mode="bilinear"), L.Conv2D(3, 2, 2)],
        (2, 5, 4),
    ),
    "upsample_bilinear_last": Case(
        lambda: [L.Conv2D(1, 2, 2), L.Tanh(), L.Upsample2D(4, mode="bilinear")], (1, 3, 3)
    ),
    "identity": Case(
        lambda: [L.Conv2D(2, 3, 3), L.Identity(), L.Tanh(), L.Identity(), L.Conv2D(3, 2, 2)],
        (2, 5, 5),
    ),
    "identity_dense": Case(
        lambda: [L.Dense(4, 3), L.Identity(), L.Tanh(), L.Dense(3, 2), L.Identity()], (4,)
    ),
    "maxpool2d": Case(
        lambda: [L.Conv2D(1, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2)],
        (1, 6, 7),
        kinks=window_gaps(2, 2, 2, 0),
    ),
    "maxpool2d_overlapping_padded": Case(
        lambda: [L.Conv2D(1, 2, 3, padding=1), L.Tanh(), L.MaxPool2D(3, stride=2, padding=1)],
        (1, 7, 7),
        kinks=window_gaps(2, 3, 2, 1),
    ),
    "avgpool2d": Case(lambda: [L.Conv2D(1, 3, 3), L.AvgPool2D(2)], (1, 6, 7)),
    "avgpool2d_padded_stride1": Case(
        lambda: [L.Conv2D(1, 3, 3), L.Tanh(), L.AvgPool2D(2, stride=1, padding=1)], (1, 6, 6)
    ),
    "maxpool1d": Case(
        lambda: [L.Conv1D(1, 3, 3), L.Tanh(), L.MaxPool1D(3, stride=2, padding=1)],
        (1, 12),
        kinks=window_gaps(2, 3, 2, 1, dims=1),
    ),
    "avgpool1d": Case(lambda: [L.Conv1D(2, 3, 3), L.AvgPool1D(2)], (2, 9)),
    # Between two convolutions (or before Flatten or global pooling), the
    # model keeps channels-last buffers: these take those code paths.
    "maxpool_between_convs_channels_last": Case(
        lambda: [
            L.Conv2D(1, 3, 3, padding=1),
            L.MaxPool2D(2),
            L.Conv2D(3, 2, 2),
            L.Flatten(),
            L.Dense(8, 2),
        ],
        (1, 6, 6),
        loss="cross_entropy",
        kinks=window_gaps(1, 2, 2, 0),
    ),
    "maxpool_overlapping_channels_last": Case(
        lambda: [
            L.Conv2D(2, 3, 3, padding=1),
            L.MaxPool2D(3, stride=2, padding=1),
            L.Conv2D(3, 2, 2),
        ],
        (2, 7, 7),
        kinks=window_gaps(1, 3, 2, 1),
    ),
    "avgpool_channels_last_to_global": Case(
        lambda: [
            L.Conv2D(2, 3, 3),
            L.Tanh(),
            L.AvgPool2D(3, stride=2, padding=1),
            L.Dropout(0.2),
            L.Conv2D(3, 4, 2, padding="same"),
            L.GlobalAvgPool2D(),
        ],
        (2, 7, 8),
    ),
    "conv1d_maxpool1d_channels_last": Case(
        lambda: [L.Conv1D(2, 3, 3), L.MaxPool1D(2), L.Conv1D(3, 2, 2), L.Flatten()],
        (2, 11),
        kinks=window_gaps(1, 2, 2, 0, dims=1),
    ),
    "global_avg_pool": Case(
        lambda: [L.Conv2D(2, 3, 3), L.Tanh(), L.GlobalAvgPool2D(), L.Dense(3, 2)],
        (2, 5, 5),
        loss="cross_entropy",
    ),
    # A bias right before BatchNorm has no effect (the batch mean removes
    # it), so its gradient is zero up to rounding: those layers go without.
    "batchnorm2d": Case(
        lambda: [L.Conv2D(2, 3, 3, bias=False), L.BatchNorm2D(3), L.Tanh(), L.Conv2D(3, 2, 2)],
        (2, 5, 5),
    ),
    "batchnorm2d_cumulative": Case(
        lambda: [L.Conv2D(2, 3, 3, bias=False), L.BatchNorm2D(3, momentum=None, eps=1e-3)],
        (2, 4, 4),
        n=2,
    ),
    "batchnorm1d_features": Case(
        lambda: [L.Dense(5, 4, bias=False), L.BatchNorm1D(4), L.Tanh(), L.Dense(4, 3)], (5,), n=5
    ),
    "batchnorm1d_sequence": Case(
        lambda: [L.Conv1D(2, 3, 3, bias=False), L.BatchNorm1D(3), L.Tanh(), L.Conv1D(3, 2, 2)],
        (2, 9),
    ),
    "small_cnn": Case(
        lambda: [
            # No squashing before the max pooling: saturated values would
            # leave almost every draw with a near tie in some window.
            L.Conv2D(1, 4, 3, padding="same"),
            L.MaxPool2D(2),
            L.Conv2D(4, 4, 3, padding=1, bias=False),
            L.BatchNorm2D(4),
            L.Tanh(),
            L.AvgPool2D(2),
            L.Flatten(),
            L.Dropout(0.3),
            L.Dense(16, 3),
        ],
        (1, 8, 8),
        n=4,
        loss="cross_entropy",
        kinks=window_gaps(1, 2, 2, 0),
    ),
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_gradcheck_conv_pool_batchnorm(case_id: str) -> None:
    case = CASES[case_id]
    model, x, y = draw(case)
    before = model.state_dict()

    report = fg.gradcheck(model, case.loss, x, y, eps=GRADCHECK_EPS)

    assert list(report) == [p.name for p in model.parameters()]
    bad = {k: v for k, v in report.items() if not v < GRAD_TOL}
    assert not bad, f"relative errors above {GRAD_TOL}: {bad}"
    # gradcheck runs training-mode passes but moves no buffer (running
    # statistics, num_batches_tracked) and no parameter.
    after = model.state_dict()
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


@pytest.mark.parametrize(
    "case_id",
    [
        "conv_chain_strided_dilated",
        "maxpool2d_overlapping_padded",
        "batchnorm2d",
        "global_avg_pool",
    ],
)
def test_step_api_gradients_match_central_differences(case_id: str) -> None:
    """Independently of fg.gradcheck: the step API's gradient of each
    parameter's largest element against central differences taken through
    the public API (``Parameter.value``)."""
    case = CASES[case_id]
    model, x, y = draw(case)
    loss_fn = fg.losses.get(case.loss)

    def loss_at() -> float:
        # Training mode (batch statistics), buffers restored after each pass.
        state = model.state_dict()
        value = loss_fn(model.forward(x, training=True), y)
        model.load_state_dict(state)
        return value

    grads = step_grads(model, case.loss, x, y)
    for p in model.parameters():
        w = p.value
        i = np.unravel_index(np.argmax(np.abs(grads[p.name])), w.shape)
        values = []
        for sign in (1, -1):
            w2 = w.copy()
            w2[i] += sign * GRADCHECK_EPS
            p.value = w2
            values.append(loss_at())
        p.value = w
        numeric = (values[0] - values[1]) / (2 * GRADCHECK_EPS)
        assert abs(grads[p.name][i] - numeric) <= 1e-6 * abs(numeric), (
            p.name,
            grads[p.name][i],
            numeric,
        )

"""Convolution, pooling and BatchNorm against PyTorch itself (skipped when
torch is not installed; the numpy and finite-difference tests check the same
layers without it): state_dicts load both ways unchanged, and outputs,
gradients and running statistics agree in float64."""

from __future__ import annotations

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

torch = pytest.importorskip("torch")
nn = torch.nn


def pair(ours_layers, theirs_layers, seed=0):
    ours = fg.Sequential(ours_layers, seed=seed, dtype="float64")
    theirs = nn.Sequential(*theirs_layers).double()
    return ours, theirs


def to_torch(state):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


CASES = {
    "cnn": (
        lambda: [
            L.Conv2D(2, 6, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Conv2D(6, 8, 3, stride=2, padding=1, bias=False),
            L.BatchNorm2D(8),
            L.ReLU(),
            L.AvgPool2D(2, stride=1, padding=1),
            L.Flatten(),
            L.Dense(8 * 5 * 5, 4),
        ],
        lambda: [
            nn.Conv2d(2, 6, 5, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AvgPool2d(2, stride=1, padding=1),
            nn.Flatten(),
            nn.Linear(8 * 5 * 5, 4),
        ],
        (2, 16, 16),
    ),
    "dilated_tuple_global": (
        lambda: [
            L.Conv2D(3, 4, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
            L.Tanh(),
            L.MaxPool2D(3, stride=2, padding=1),
            L.Conv2D(4, 5, 1),
            L.GlobalAvgPool2D(),
            L.Flatten(),  # a no-op here; keeps the indices of torch's stack
            L.Dense(5, 3),
        ],
        lambda: [
            nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
            nn.Tanh(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(4, 5, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(5, 3),
        ],
        (3, 11, 13),
    ),
    "conv1d": (
        lambda: [
            L.Conv1D(2, 4, 5, padding=2, bias=False),
            L.BatchNorm1D(4, momentum=0.3),
            L.ReLU(),
            L.MaxPool1D(3, stride=2, padding=1),
            L.Conv1D(4, 3, 3, dilation=2),
            L.AvgPool1D(2),
            L.Flatten(),
            L.Dense(3 * 3, 2),
            L.BatchNorm1D(2),
        ],
        lambda: [
            nn.Conv1d(2, 4, 5, padding=2, bias=False),
            nn.BatchNorm1d(4, momentum=0.3),
            nn.ReLU(),
            nn.MaxPool1d(3, stride=2, padding=1),
            nn.Conv1d(4, 3, 3, dilation=2),
            nn.AvgPool1d(2),
            nn.Flatten(),
            nn.Linear(3 * 3, 2),
            nn.BatchNorm1d(2),
        ],
        (2, 20),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case) -> None:
    ours_f, theirs_f, shape = CASES[case]
    ours, theirs = pair(ours_f(), theirs_f())
    # torch's state_dict loads into ours unchanged: same keys, shapes, dtypes.
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].shape == tuple(v.shape), k
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *shape))
    y = rng.integers(0, ours.predict(x).shape[1], size=6)

    # Training pass: batch statistics, the same gradients, running stats moved alike.
    theirs.train()
    out_t = theirs(torch.from_numpy(x))
    loss_t = nn.functional.cross_entropy(out_t, torch.from_numpy(y))
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
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-12, err_msg=k)

    # Evaluation: running statistics, the same outputs.
    theirs.eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            ours.predict(x), theirs(torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-12
        )

    # And ours loads into torch unchanged.
    other = nn.Sequential(*theirs_f()).double().eval()
    other.load_state_dict(to_torch(ours.state_dict()))
    with torch.no_grad():
        np.testing.assert_allclose(
            other(torch.from_numpy(x)).numpy(), ours.predict(x), rtol=1e-10, atol=1e-12
        )


def test_float32_cnn_predicts_as_torch() -> None:
    ours_f, theirs_f, shape = CASES["cnn"]
    ours = fg.Sequential(ours_f(), seed=3)
    theirs = nn.Sequential(*theirs_f()).eval()
    theirs.load_state_dict(to_torch(ours.state_dict()))
    x = np.random.default_rng(1).normal(size=(16, *shape)).astype(np.float32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.predict(x), want, rtol=1e-4, atol=1e-5)

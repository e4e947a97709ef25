"""Reproducibility: the seed fixes initial weights, shuffling and dropout masks,
and results do not depend on the number of worker threads.

The thread-count tests use a few thousand real MNIST samples and a model wide
enough (hidden width 256, batch 128) that the kernels really split work across
threads; ``conftest._restore_threads`` puts the thread count back afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L


def data(n: int = 400, d: int = 10, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :classes] + 0.5 * rng.normal(size=(n, classes))).argmax(axis=1)
    return x, y


def dropout_model(seed: int) -> fg.Sequential:
    return fg.Sequential(
        [L.Dense(10, 32), L.ReLU(), L.Dropout(0.3), L.Dense(32, 32), L.Tanh(), L.Dense(32, 4)],
        seed=seed,
    )


def train_small(seed: int) -> tuple[fg.Sequential, fg.History]:
    x, y = data()
    model = dropout_model(seed)
    hist = model.fit(
        x,
        y,
        "cross_entropy",
        fg.optim.Adam(model.parameters(), lr=1e-2),
        epochs=3,
        batch_size=16,
        shuffle=True,
        validation_split=0.1,
        verbose=0,
    )
    return model, hist


def assert_state_bitwise_equal(a, b) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


# ------------------------------------------------------------------ seeds


def test_same_seed_gives_bitwise_identical_training():
    m1, h1 = train_small(seed=42)
    m2, h2 = train_small(seed=42)
    assert_state_bitwise_equal(m1.state_dict(), m2.state_dict())
    assert h1.history == h2.history
    # training did something
    assert_differs(m1.state_dict(), dropout_model(42).state_dict())


def assert_differs(a, b) -> None:
    assert list(a) == list(b)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_different_seeds_differ():
    assert_differs(dropout_model(1).state_dict(), dropout_model(2).state_dict())
    m1, h1 = train_small(seed=1)
    m2, h2 = train_small(seed=2)
    for k, v in m1.state_dict().items():
        assert not np.array_equal(v, m2.state_dict()[k]), k
    assert h1["loss"] != h2["loss"]


def test_seed_fixes_shuffle_and_dropout_not_just_init():
    """Same initial weights, different seeds: shuffling/dropout must then differ."""
    x, y = data()
    m1, m2 = dropout_model(1), dropout_model(2)
    m2.load_state_dict(m1.state_dict())
    for m in (m1, m2):
        m.fit(
            x,
            y,
            "cross_entropy",
            fg.optim.SGD(m.parameters(), lr=0.05),
            epochs=1,
            batch_size=16,
            verbose=0,
        )
    assert_differs(m1.state_dict(), m2.state_dict())

    # and with shuffle=False and no dropout, only the initial weights matter
    p1 = fg.Sequential([L.Dense(10, 16), L.ReLU(), L.Dense(16, 4)], seed=1)
    p2 = fg.Sequential([L.Dense(10, 16), L.ReLU(), L.Dense(16, 4)], seed=2)
    p2.load_state_dict(p1.state_dict())
    for m in (p1, p2):
        m.fit(
            x,
            y,
            "cross_entropy",
            fg.optim.SGD(m.parameters(), lr=0.05),
            epochs=1,
            batch_size=16,
            shuffle=False,
            verbose=0,
        )
    assert_state_bitwise_equal(p1.state_dict(), p2.state_dict())


def test_seed_is_kept():
    assert fg.Sequential([L.Dense(2, 2)], seed=123).seed == 123
    m = fg.Sequential([L.Dense(2, 2)])
    assert isinstance(m.seed, int) and m.seed >= 0
    # a model rebuilt from the drawn seed has the same initial weights
    assert_state_bitwise_equal(
        fg.Sequential([L.Dense(2, 2)], seed=m.seed).state_dict(), m.state_dict()
    )


# ------------------------------------------------------------------ threads


def test_get_num_threads_reflects_set_num_threads():
    for n in (1, 2, 3, 1):
        fg.set_num_threads(n)
        assert fg.get_num_threads() == n
    with pytest.raises(TypeError):
        fg.set_num_threads(2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fg.set_num_threads(True)
    with pytest.raises(ValueError):
        fg.set_num_threads(0)
    assert fg.get_num_threads() == 1


def test_num_threads_env_var_sets_default():
    env = {**os.environ, "FERROGRAD_NUM_THREADS": "3"}
    out = subprocess.run(
        [sys.executable, "-c", "import ferrograd as fg; print(fg.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "3"


def test_default_num_threads_without_env_var_is_core_count():
    env = {k: v for k, v in os.environ.items() if k != "FERROGRAD_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", "import ferrograd as fg; print(fg.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # "the number of cores": what the process may use, which is at most the machine's count
    n = int(out.stdout.strip())
    assert 1 <= n <= (os.cpu_count() or 1)


def mnist_model() -> fg.Sequential:
    return fg.Sequential(
        [
            L.Flatten(),
            L.Rescaling(1 / 255),
            L.Dense(784, 256),
            L.ReLU(),
            L.Dropout(0.2),
            L.Dense(256, 256),
            L.GELU(),
            L.Dense(256, 10),
        ],
        seed=7,
    )


def fit_with_threads(n_threads: int, x, y) -> fg.Sequential:
    fg.set_num_threads(n_threads)
    assert fg.get_num_threads() == n_threads
    model = mnist_model()
    model.fit(
        x,
        y,
        "cross_entropy",
        fg.optim.Adam(model.parameters(), lr=1e-3),
        epochs=1,
        batch_size=128,
        shuffle=True,
        verbose=0,
    )
    return model


@pytest.mark.parametrize("threads", [(1, 2), (2, 3)])
def test_thread_count_does_not_change_training(mnist, threads):
    (x_train, y_train), _ = mnist
    x, y = x_train[:4000], y_train[:4000]  # 31 full batches + 1 partial
    a = fit_with_threads(threads[0], x, y)
    b = fit_with_threads(threads[1], x, y)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert_state_bitwise_equal(sd_a, sd_b)
    assert_differs(sd_a, mnist_model().state_dict())


def test_thread_count_does_not_change_predict(mnist):
    (x_train, y_train), (x_test, _) = mnist
    fg.set_num_threads(1)
    model = mnist_model()
    model.fit(
        x_train[:2000], y_train[:2000], "cross_entropy", "adam", epochs=1, batch_size=128, verbose=0
    )
    x = x_test[:3000]
    fg.set_num_threads(1)
    out1 = model.predict(x)
    out1_small = model.predict(x, batch_size=128)
    ev1 = model.evaluate(x_test[:3000], mnist[1][1][:3000], "cross_entropy")
    fg.set_num_threads(2)
    out2 = model.predict(x)
    out2_small = model.predict(x, batch_size=128)
    ev2 = model.evaluate(x_test[:3000], mnist[1][1][:3000], "cross_entropy")
    assert out1.shape == (3000, 10)
    assert out1.tobytes() == out2.tobytes()
    assert out1_small.tobytes() == out2_small.tobytes()
    assert ev1 == ev2
    # inference mode: dropout is off, so repeated predictions are identical too
    assert model.predict(x).tobytes() == out2.tobytes()


def cnn_model() -> fg.Sequential:
    """Channels-last buffers between the convolutions, a planar BatchNorm
    block after them, dropout: every CNN code path that splits work."""
    return fg.Sequential(
        [
            L.Rescaling(1 / 255),
            L.Conv2D(1, 16, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Conv2D(16, 32, 3, padding=1, bias=False),
            L.BatchNorm2D(32),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dropout(0.2),
            L.Dense(32 * 7 * 7, 10),
        ],
        seed=11,
    )


@pytest.mark.parametrize("threads", [(1, 2), (2, 3)])
def test_thread_count_does_not_change_cnn_training(mnist, threads):
    (x_train, y_train), (x_test, _) = mnist
    x, y = x_train[:1000, None], y_train[:1000]  # 15 full batches of 64 + 1 partial
    runs = []
    for t in threads:
        fg.set_num_threads(t)
        model = cnn_model()
        model.fit(
            x, y, "cross_entropy", fg.optim.Adam(model.parameters()), batch_size=64, verbose=0
        )
        runs.append((model.state_dict(), model.predict(x_test[:500, None])))
    assert_state_bitwise_equal(runs[0][0], runs[1][0])
    assert runs[0][1].tobytes() == runs[1][1].tobytes()
    assert_differs(runs[0][0], cnn_model().state_dict())

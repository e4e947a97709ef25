"""Ctrl-C during training, exceptions from the progress display, and what
``fit`` prints.

``fit`` runs its epochs in Rust with the GIL released; Ctrl-C must stop it
within a fraction of a second with ``KeyboardInterrupt`` and leave the model
usable. SIGINT is sent to the main thread with ``pthread_kill`` (from a timer
thread), as a terminal would, so that a blocked native call is woken.
"""

from __future__ import annotations

import io
import re
import signal
import threading
import time

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill (POSIX)"
)

N_BIG = 20_000  # with the model below, an epoch takes seconds on a few cores
EPOCHS_BIG = 40  # far more than the test ever waits for
SIGNAL_AFTER = 0.5
MAX_LATENCY = 1.5


@pytest.fixture(scope="module")
def big_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((N_BIG, 784), dtype=np.float32)
    y = rng.integers(0, 10, N_BIG).astype(np.int64)
    return x, y


def big_model() -> fg.Sequential:
    return fg.Sequential(
        [L.Dense(784, 1024), L.ReLU(), L.Dense(1024, 1024), L.ReLU(), L.Dense(1024, 10)],
        seed=0,
    )


class _Sigint:
    """Sends SIGINT to the main thread after ``delay`` seconds; records when."""

    def __init__(self, delay: float) -> None:
        self.sent_at: float | None = None
        self._main = threading.main_thread().ident
        self._timer = threading.Timer(delay, self._fire)

    def _fire(self) -> None:
        self.sent_at = time.perf_counter()
        signal.pthread_kill(self._main, signal.SIGINT)

    def __enter__(self) -> _Sigint:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # If the call returned before the timer fired, make sure no stray
        # SIGINT arrives later and kills the test session.
        self._timer.cancel()
        if self._timer.ident is not None:  # started
            self._timer.join()


def _all_finite(model: fg.Sequential) -> bool:
    return all(np.isfinite(v).all() for v in model.state_dict().values())


@pytest.mark.parametrize("batch_size", [32, 1024])
def test_ctrl_c_stops_fit_quickly_and_leaves_a_usable_model(big_data, batch_size):
    assert threading.current_thread() is threading.main_thread()
    x, y = big_data
    model = big_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # A short warm-up fit sizes the workspaces and measures a few steps, so
    # that the signal surely arrives in the middle of training even on a
    # busy machine.
    t0 = time.perf_counter()
    model.fit(
        x[: 4 * batch_size],
        y[: 4 * batch_size],
        "cross_entropy",
        opt,
        batch_size=batch_size,
        verbose=0,
    )
    delay = max(SIGNAL_AFTER, 3 * (time.perf_counter() - t0))
    warm_steps = opt.steps
    assert warm_steps == 4
    initial = model.state_dict()
    started = time.perf_counter()
    with _Sigint(delay) as sig:
        with pytest.raises(KeyboardInterrupt):
            model.fit(
                x, y, "cross_entropy", opt, epochs=EPOCHS_BIG, batch_size=batch_size, verbose=0
            )
        caught = time.perf_counter()
    assert sig.sent_at is not None, "fit returned before the signal was sent"
    latency = caught - sig.sent_at
    assert latency < MAX_LATENCY, f"KeyboardInterrupt came {latency:.2f}s after SIGINT"
    assert caught - started < delay + MAX_LATENCY + 1.0

    # Stopped part-way: some steps were applied, far fewer than requested.
    steps = opt.steps
    assert warm_steps < steps < warm_steps + EPOCHS_BIG * (N_BIG // batch_size)
    assert any(not np.array_equal(initial[k], v) for k, v in model.state_dict().items())
    assert _all_finite(model)

    # The model is usable: inference works and is deterministic ...
    p1 = model.predict(x[:300])
    assert p1.shape == (300, 10) and np.isfinite(p1).all()
    np.testing.assert_array_equal(model.predict(x[:300]), p1)
    ev = model.evaluate(x[:300], y[:300], "cross_entropy")
    assert np.isfinite(ev["loss"]) and 0.0 <= ev["accuracy"] <= 1.0
    # ... and training continues with the same optimizer.
    hist = model.fit(x[:256], y[:256], "cross_entropy", opt, epochs=2, batch_size=64, verbose=0)
    assert len(hist["loss"]) == 2 and all(np.isfinite(hist["loss"]))
    assert opt.steps == steps + 2 * 4
    assert _all_finite(model)


def test_ctrl_c_with_a_fresh_optimizer_and_step_api_afterwards(big_data):
    """After an interrupt, the step-by-step API works too."""
    x, y = big_data
    model = big_model()
    with _Sigint(0.3), pytest.raises(KeyboardInterrupt):
        model.fit(x, y, "cross_entropy", "adam", epochs=EPOCHS_BIG, batch_size=128, verbose=0)
    model.zero_grad()
    out = model.forward(x[:16], training=True)
    loss = fg.losses.CrossEntropy()
    value = loss(out, y[:16])
    assert np.isfinite(value)
    model.backward(loss.backward())
    assert all(np.isfinite(p.grad).all() for p in model.parameters())
    assert any(np.any(p.grad != 0) for p in model.parameters())


class _FakeTTY(io.StringIO):
    """A stream that claims to be a terminal (so ``verbose=1`` draws a live
    progress bar) and fails when the bar is first drawn."""

    def __init__(self, fail: bool = True) -> None:
        super().__init__()
        self.fail = fail
        self.bar_writes = 0

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if s.startswith("\r") and "[" in s:
            self.bar_writes += 1
            if self.fail:
                raise RuntimeError("progress display broke")
        return super().write(s)


class _SigintFromProgress(io.StringIO):
    """A terminal-like stream that, when the live progress bar is first
    drawn (so training is certainly running in Rust), arranges a SIGINT to
    the main thread ``delay`` seconds later, sent from another thread."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.sig = _Sigint(delay)
        self.armed = False

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not self.armed and s.startswith("\r"):
            self.armed = True
            self.sig.__enter__()
        return super().write(s)


def test_ctrl_c_while_the_live_progress_bar_runs(big_data):
    x, y = big_data
    model = big_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.01)
    stream = _SigintFromProgress(0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(
                x,
                y,
                "cross_entropy",
                opt,
                epochs=EPOCHS_BIG,
                batch_size=64,
                verbose=1,
                stream=stream,
            )
        caught = time.perf_counter()
    finally:
        stream.sig.__exit__()
    assert stream.armed and stream.sig.sent_at is not None
    latency = caught - stream.sig.sent_at
    assert latency < MAX_LATENCY, f"KeyboardInterrupt came {latency:.2f}s after SIGINT"
    assert opt.steps > 0
    # The interrupted live line was ended, so later output starts afresh.
    assert stream.getvalue().endswith("\n")
    assert np.isfinite(model.predict(x[:32])).all()


def test_exception_in_progress_display_stops_fit_and_propagates(big_data):
    """The live progress bar is the one Python callback fit makes while
    training; an exception there must stop training promptly and come out
    of fit unchanged, leaving a usable model."""
    x, y = big_data
    model = big_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.01)
    stream = _FakeTTY()
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="progress display broke"):
        model.fit(
            x, y, "cross_entropy", opt, epochs=EPOCHS_BIG, batch_size=32, verbose=1, stream=stream
        )
    assert time.perf_counter() - t0 < 3.0
    assert stream.bar_writes == 1
    assert 0 < opt.steps < N_BIG // 32
    assert _all_finite(model)
    assert np.isfinite(model.predict(x[:64])).all()
    hist = model.fit(x[:128], y[:128], "cross_entropy", opt, epochs=1, verbose=0)
    assert np.isfinite(hist["loss"][0])


# ------------------------------------------------------------------ printed output


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = fg.Sequential([L.Dense(6, 8), L.ReLU(), L.Dense(8, 2)], seed=0)
    return model, x, y


LINE = re.compile(
    r"^Epoch (\d+)/(\d+) - [\d.]+s - [\d,]+ samples/s - loss: \d+\.\d{4} - accuracy: \d\.\d{4}"
)


@pytest.mark.parametrize("verbose", [1, 2])
def test_one_line_per_epoch_on_a_non_terminal_stream(small, verbose):
    model, x, y = small
    stream = io.StringIO()
    hist = model.fit(x, y, "cross_entropy", "adam", epochs=4, verbose=verbose, stream=stream)
    text = stream.getvalue()
    assert "\r" not in text  # no live bar on a non-terminal
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines, start=1):
        m = LINE.match(line)
        assert m, line
        assert (int(m.group(1)), int(m.group(2))) == (i, 4)
        assert f"loss: {hist['loss'][i - 1]:.4f}" in line


def test_epoch_lines_include_validation_metrics(small):
    model, x, y = small
    stream = io.StringIO()
    model.fit(
        x, y, "cross_entropy", "adam", epochs=3, validation_split=0.25, verbose=1, stream=stream
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert all("val_loss: " in ln and "val_accuracy: " in ln for ln in lines)


def test_verbose_zero_prints_nothing(small, capsys):
    model, x, y = small
    stream = io.StringIO()
    model.fit(x, y, "cross_entropy", "adam", epochs=3, verbose=0, stream=stream)
    model.fit(x, y, "cross_entropy", "adam", epochs=2, verbose=0)  # default stream
    assert stream.getvalue() == ""
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_default_stream_is_stdout(small, capsys):
    model, x, y = small
    model.fit(x, y, "cross_entropy", "adam", epochs=2, verbose=2)
    out, _ = capsys.readouterr()
    assert [ln.split(" - ")[0] for ln in out.splitlines()] == ["Epoch 1/2", "Epoch 2/2"]


def test_live_bar_on_a_terminal_ends_each_epoch_with_one_newline(small):
    model, x, y = small
    stream = _FakeTTY(fail=False)
    model.fit(x, y, "cross_entropy", "adam", epochs=3, batch_size=16, verbose=1, stream=stream)
    text = stream.getvalue()
    assert stream.bar_writes >= 3  # at least the final update of each epoch
    assert text.count("\n") == 3
    finals = [seg.split("\r")[-1] for seg in text.split("\n")[:-1]]
    assert [f.split(" - ")[0] for f in finals] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all(LINE.match(f) for f in finals), finals


def test_epochs_zero_prints_nothing(small):
    model, x, y = small
    stream = io.StringIO()
    model.fit(x, y, "cross_entropy", "adam", epochs=0, verbose=1, stream=stream)
    assert stream.getvalue() == ""

"""Sharing across threads: one model used by two threads at once raises a
RuntimeError that says the model is in use (never a hang, a crash or a
corrupted model); separate models trained in separate threads give bitwise
the results they give alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

IN_USE = "in use by another call"


def data(n=4096, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 10, n)


def build(seed=0):
    return fg.Sequential(
        [L.Dense(64, 256), L.ReLU(), L.Dense(256, 256), L.ReLU(), L.Dense(256, 10)], seed=seed
    )


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


def run_while_fitting(model, opt, x, y, other):
    """Starts fit in a thread, calls ``other()`` from this one while it
    runs; returns the other call's outcome (a value or the exception)."""
    started = threading.Event()
    errors: list[BaseException] = []

    class Signal(fg.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.set()

    def fit():
        try:
            model.fit(
                x, y, "cross_entropy", opt, epochs=3, batch_size=32, verbose=0, callbacks=[Signal()]
            )
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=fit)
    t.start()
    assert started.wait(30)
    outcomes = []
    while t.is_alive():
        try:
            outcomes.append(other())
        except RuntimeError as e:
            outcomes.append(e)
        if len(outcomes) > 5 and any(isinstance(o, RuntimeError) for o in outcomes):
            break
    t.join(120)
    assert not t.is_alive(), "fit hung"
    assert not errors, errors
    return outcomes


@pytest.mark.parametrize(
    "call", ["predict", "fit", "forward", "state_dict", "load_state_dict", "step"]
)
def test_a_second_call_during_fit_is_refused_and_nothing_is_corrupted(call):
    x, y = data()
    model = build()
    opt = fg.optim.Adam(model.parameters())
    reference = build()
    ref_opt = fg.optim.Adam(reference.parameters())
    reference.fit(x, y, "cross_entropy", ref_opt, epochs=3, batch_size=32, verbose=0)
    snapshot = model.state_dict()
    other_opt = fg.optim.SGD(model.parameters(), lr=0.1)
    calls = {
        "predict": lambda: model.predict(x[:64]),
        "fit": lambda: model.fit(x[:64], y[:64], "cross_entropy", other_opt, verbose=0),
        "forward": lambda: model.forward(x[:8], training=True),
        "state_dict": lambda: model.state_dict(),
        "load_state_dict": lambda: model.load_state_dict(snapshot),
        "step": lambda: opt.step(),
    }
    outcomes = run_while_fitting(model, opt, x, y, calls[call])
    refused = [o for o in outcomes if isinstance(o, RuntimeError)]
    assert refused, f"{call} was never refused while fit ran"
    assert all(IN_USE in str(e) for e in refused), refused[0]
    # The epoch that ran meanwhile is exactly the single-threaded one.
    assert same(model, reference)
    # And the model works normally afterwards.
    assert np.array_equal(model.predict(x[:64]), reference.predict(x[:64]))


def test_concurrent_predicts_either_work_or_say_the_model_is_busy():
    x, _ = data(2048)
    model = build()
    want = model.predict(x)
    results: list[object] = []

    def worker():
        for _ in range(20):
            try:
                results.append(model.predict(x))
            except RuntimeError as e:
                results.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "predict hung"
    assert len(results) == 60
    for r in results:
        if isinstance(r, RuntimeError):
            assert IN_USE in str(r)
        else:
            assert np.array_equal(r, want)
    assert any(not isinstance(r, RuntimeError) for r in results)


def test_separate_models_in_separate_threads_match_their_single_threaded_runs():
    runs = [(seed, *data(1024, seed)) for seed in range(3)]

    def train(seed, x, y):
        model = build(seed)
        model.fit(
            x,
            y,
            "cross_entropy",
            fg.optim.Adam(model.parameters()),
            epochs=2,
            batch_size=32,
            verbose=0,
        )
        return model

    alone = [train(*r) for r in runs]
    together: list[object] = [None] * len(runs)

    def worker(i):
        together[i] = train(*runs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive()
    for a, b in zip(alone, together):
        assert same(a, b)

"""A forked child must not use (and deadlock on) the parent's worker threads."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_training_works_in_a_forked_child():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 64)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = fg.Sequential([L.Dense(64, 256), L.ReLU(), L.Dense(256, 2)], seed=0)
    # Use the pool in the parent first, so the child inherits a built pool.
    model.fit(x, y, "cross_entropy", "adam", epochs=1, batch_size=512, verbose=0)
    parent_state = {k: v.copy() for k, v in model.state_dict().items()}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: train, report the accuracy, exit without pytest's teardown
        try:
            os.close(r)
            h = model.fit(x, y, "cross_entropy", "adam", epochs=15, batch_size=32, verbose=0)
            os.write(w, f"{h['accuracy'][-1]:.4f}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert out, "the child produced no result (crashed or hung)"
    assert float(out) > 0.9
    # The parent is untouched by the child's training and still works.
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, parent_state[k])
    assert model.evaluate(x, y, "cross_entropy")["loss"] >= 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))

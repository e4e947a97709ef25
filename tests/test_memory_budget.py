"""The memory budget: models, batches and optimizer state that would not fit
raise MemoryError naming the bytes needed and available, before anything
is allocated or changed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ferrograd as fg

L = fg.layers
MIB = 1 << 20


@pytest.fixture(autouse=True)
def _restore_limit():
    old = fg.get_memory_limit()
    yield
    fg.set_memory_limit(old)


def weights(model: fg.Sequential) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if k != "FERROGRAD_MEMORY_LIMIT"}
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
    )


def test_set_and_get_the_limit():
    fg.set_memory_limit(64 * MIB)
    assert fg.get_memory_limit() == 64 * MIB
    fg.set_memory_limit("1.5G")
    assert fg.get_memory_limit() == 3 << 29
    fg.set_memory_limit("512k")
    assert fg.get_memory_limit() == 512 << 10
    for off in (0, "off", "none", "0"):
        fg.set_memory_limit(off)
        assert fg.get_memory_limit() == 0
    fg.set_memory_limit("auto")
    assert fg.get_memory_limit() is None
    fg.set_memory_limit(None)
    assert fg.get_memory_limit() is None
    avail = fg.memory_available()
    if sys.platform.startswith("linux"):
        assert isinstance(avail, int) and avail > 0


@pytest.mark.parametrize("bad", [-1, "lots", "1X", "-5M", 10**30])
def test_bad_limits_are_value_errors(bad):
    fg.set_memory_limit(64 * MIB)
    with pytest.raises(ValueError, match="not a size"):
        fg.set_memory_limit(bad)
    assert fg.get_memory_limit() == 64 * MIB


@pytest.mark.parametrize("bad", [1.5, True, b"1M", [1]])
def test_limit_types(bad):
    with pytest.raises(TypeError, match="memory limit"):
        fg.set_memory_limit(bad)


def test_a_model_that_does_not_fit_is_not_built():
    fg.set_memory_limit(64 * MIB)
    # 4096 x 4096 weights + 4096 biases, and as many gradients, in float32.
    need = 2 * 4 * (4096 * 4096 + 4096)
    with pytest.raises(MemoryError) as e:
        fg.Sequential([L.Dense(4096, 4096)], seed=0)
    msg = str(e.value)
    assert "the model's parameters, gradients and buffers" in msg
    assert f"128.0 MiB ({need} bytes) needed" in msg
    assert f"64.0 MiB ({64 * MIB} bytes) allowed by the limit" in msg
    assert "FERROGRAD_MEMORY_LIMIT" in msg and "set_memory_limit" in msg
    # One that fits builds as before.
    model = fg.Sequential([L.Dense(1024, 1024), L.ReLU(), L.Dense(1024, 10)], seed=0)
    assert model.num_params() == 1024 * 1024 + 1024 + 1024 * 10 + 10
    fg.set_memory_limit(need)
    fg.Sequential([L.Dense(4096, 4096)], seed=0)


def wide_model() -> fg.Sequential:
    return fg.Sequential([L.Dense(10, 4096), L.ReLU(), L.Dense(4096, 2)], seed=0)


def test_a_batch_that_does_not_fit_changes_nothing():
    fg.set_memory_limit(64 * MIB)
    model = wide_model()
    rng = np.random.default_rng(0)
    n = 8192  # 8192 x 4096 float32 activations: 128 MiB
    x = rng.standard_normal((n, 10)).astype(np.float32)
    y = rng.integers(0, 2, n)
    small = model.predict(x[:16])
    before = weights(model)
    opt = fg.optim.Adam(model.parameters(), lr=0.1)
    with pytest.raises(MemoryError, match=r"a batch of 8192 samples of shape \[10\]") as e:
        model.predict(x, batch_size=n)
    assert "needed" in str(e.value) and "allowed by the limit" in str(e.value)
    with pytest.raises(MemoryError, match="8192 samples"):
        model.forward(x)
    with pytest.raises(MemoryError, match="training activations"):
        model.fit(x, y, "cross_entropy", opt, batch_size=n, verbose=0)
    with pytest.raises(MemoryError):
        model.evaluate(x, y, "cross_entropy", batch_size=n)
    assert_same(before, weights(model))
    assert opt.steps == 0
    # Smaller batches of the same data still run, and give the same outputs
    # (to rounding: the matrix products block differently for other sizes).
    np.testing.assert_array_equal(model.predict(x[:16]), small)
    np.testing.assert_allclose(model.predict(x, batch_size=256)[:16], small, rtol=1e-4, atol=1e-5)
    model.fit(x, y, "cross_entropy", opt, batch_size=256, verbose=0)
    assert opt.steps == n // 256


def test_the_optimizer_state_is_checked_on_the_first_step():
    model = fg.Sequential([L.Dense(1000, 1000)], seed=0)  # 8 MB with gradients
    x = np.ones((4, 1000), np.float32)
    y = np.zeros((4, 1000), np.float32)
    before = weights(model)
    opt = fg.optim.Adam(model.parameters(), lr=0.1)  # 2 x 1001000 floats: 8 MB
    fg.set_memory_limit(6 * MIB)
    with pytest.raises(MemoryError, match=r"the optimizer's state \(2 slots of 1001000 values"):
        model.fit(x, y, "mse", opt, batch_size=4, verbose=0)
    assert_same(before, weights(model))
    assert opt.steps == 0
    # The step API checks it too.
    out = model.forward(x, training=True)
    model.backward(np.ones_like(out))
    with pytest.raises(MemoryError, match="optimizer's state"):
        opt.step()
    assert_same(before, weights(model))
    assert opt.steps == 0
    # SGD without momentum keeps no state, so it needs nothing.
    sgd = fg.optim.SGD(model.parameters(), lr=0.1)
    sgd.step()
    fg.set_memory_limit(None)
    model.fit(x, y, "mse", opt, batch_size=4, verbose=0)
    assert opt.steps == 1


def test_the_check_does_not_run_per_step():
    """A fit reserves (reads the limit) only while allocating: after the first
    epoch, a limit too small for anything is never consulted again."""
    model = wide_model()
    x = np.ones((64, 10), np.float32)
    y = np.zeros(64, np.int64)
    opt = fg.optim.Adam(model.parameters(), lr=1e-3)
    model.fit(x, y, "cross_entropy", opt, batch_size=16, verbose=0)
    fg.set_memory_limit(1)
    model.fit(x, y, "cross_entropy", opt, batch_size=16, epochs=3, verbose=0)
    assert opt.steps == 4 * 4


def test_the_environment_variable_sets_the_limit():
    code = """
        import ferrograd as fg
        print("LIMIT", fg.get_memory_limit())
        try:
            fg.Sequential([fg.layers.Dense(1000, 1000)], seed=0)
        except MemoryError as e:
            print("RAISED", e)
        else:
            print("BUILT")
        """
    proc = run_child(code, FERROGRAD_MEMORY_LIMIT="1M")
    assert proc.returncode == 0, proc.stderr
    assert f"LIMIT {MIB}" in proc.stdout
    assert "RAISED" in proc.stdout, proc.stdout
    assert "allowed by FERROGRAD_MEMORY_LIMIT=1M" in proc.stdout
    assert "(8008000 bytes) needed" in proc.stdout
    for off in ("off", "none", "0"):
        proc = run_child(code, FERROGRAD_MEMORY_LIMIT=off)
        assert proc.returncode == 0, proc.stderr
        assert "LIMIT 0" in proc.stdout and "BUILT" in proc.stdout, (off, proc.stdout)
    proc = run_child(code, FERROGRAD_MEMORY_LIMIT="lots")
    assert proc.returncode != 0
    assert 'ValueError: FERROGRAD_MEMORY_LIMIT: memory limit "lots" is not a size' in proc.stderr


# float32 parameters and gradients of Dense(2**31, 2): 32 GiB.
HUGE = 2 * 4 * (2**31 * 2 + 2)


def test_auto_limit_refuses_a_model_larger_than_the_machine():
    """Without the check the kernel's OOM killer ends the process once
    weight initialisation touches the pages; run in a child process so a
    failure cannot take the test session down."""
    avail = fg.memory_available()
    if avail is None or avail >= HUGE:
        pytest.skip(f"needs less than {HUGE} bytes available, have {avail}")
    code = """
        import ferrograd as fg
        assert fg.get_memory_limit() is None
        try:
            fg.Sequential([fg.layers.Dense(2**31, 2)])
        except MemoryError as e:
            print("RAISED", e)
        else:
            print("BUILT")
        """
    start = time.perf_counter()
    proc = run_child(code)
    took = time.perf_counter() - start
    assert proc.returncode == 0, f"child died (rc={proc.returncode}): {proc.stderr[-500:]}"
    assert "RAISED" in proc.stdout, proc.stdout
    assert f"32.0 GiB ({HUGE} bytes) needed" in proc.stdout
    assert "available (" in proc.stdout
    assert took < 30, took

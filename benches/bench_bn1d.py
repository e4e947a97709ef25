"""BatchNorm1D on (N, C): one epoch of a 10-layer width-128 sigmoid net with
BatchNorm1D after every Dense (20,000 samples, batch 64, Adam), and the
trained weights of a short run for a bitwise comparison between builds.

    python benches/bench_bn1d.py out.npz          # prints the epoch's seconds
    # in another venv with another build:
    other/bin/python benches/bench_bn1d.py old.npz
    python -c "import numpy as np; a, b = np.load('out.npz'), np.load('old.npz'); \\
        print(all(np.array_equal(a[k], b[k]) for k in a.files))"
"""

from __future__ import annotations

import sys
import time

import numpy as np

import ferrograd as fg
from ferrograd import layers as L


def build() -> fg.Sequential:
    stack = [L.Dense(32, 128), L.BatchNorm1D(128), L.Sigmoid()]
    for _ in range(8):
        stack += [L.Dense(128, 128), L.BatchNorm1D(128), L.Sigmoid()]
    return fg.Sequential([*stack, L.Dense(128, 5)], seed=0)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    y = rng.integers(0, 5, 2000)
    m = build()
    m.fit(x, y, "cross_entropy", fg.optim.Adam(m.parameters()), epochs=2, batch_size=64, verbose=0)
    xc = rng.standard_normal((256, 3, 5)).astype(np.float32)  # (N, C, L) too
    m2 = fg.Sequential(
        [L.Conv1D(3, 4, 3), L.BatchNorm1D(4), L.ReLU(), L.Flatten(), L.Dense(12, 5)], seed=1
    )
    m2.fit(
        xc,
        y[:256],
        "cross_entropy",
        fg.optim.Adam(m2.parameters()),
        epochs=2,
        batch_size=32,
        verbose=0,
    )
    out = {"a" + k: v for k, v in m.state_dict().items()}
    out.update({"b" + k: v for k, v in m2.state_dict().items()})
    np.savez(sys.argv[1] if len(sys.argv) > 1 else "bn1d.npz", **out)
    big = build()
    opt = fg.optim.Adam(big.parameters())
    xb = rng.standard_normal((20000, 32)).astype(np.float32)
    yb = rng.integers(0, 5, 20000)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        big.fit(xb, yb, "cross_entropy", opt, epochs=1, batch_size=64, verbose=0)
        times.append(time.perf_counter() - t)
    print(f"epoch of 20,000 samples: {sorted(times)[1]:.3f} s (median of 3)")


if __name__ == "__main__":
    main()

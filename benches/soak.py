"""Soak test: thousands of create / fit / evaluate / predict / state_dict /
save / load cycles over MLPs and CNNs in one process, printing the resident
memory (RSS) as it goes. Bounded memory means the line flattens after the
warm-up.

    python benches/soak.py                  # 3,000 cycles, the cycle collector off
    python benches/soak.py --cycles 500 --gc

Each cycle builds a fresh model (an MLP of a size that varies with the
cycle, every fifth a small CNN with BatchNorm), trains it one epoch on 512
samples with Adam, evaluates, predicts 2,000 rows, copies its state_dict
into a second model, saves it with its optimizer, loads it back and
pickles it. With ``--gc`` off (the default) only reference counting frees
anything, which is the guarantee being tested.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import tempfile
import time

import numpy as np

import ferrograd as fg
from ferrograd import layers as L


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cycle(i: int, folder: str, rng: np.random.Generator) -> None:
    if i % 5 == 4:
        model = fg.Sequential(
            [
                L.Conv2D(1, 8, 3, padding=1), L.BatchNorm2D(8), L.ReLU(), L.MaxPool2D(2),
                L.Flatten(), L.Dense(8 * 14 * 14, 10),
            ],
            seed=i,
        )  # fmt: skip
        x = rng.random((512, 1, 28, 28), dtype=np.float32)
    else:
        width = 64 + 64 * (i % 7)
        model = fg.Sequential([L.Dense(50, width), L.ReLU(), L.Dense(width, 10)], seed=i)
        x = rng.standard_normal((2000, 50)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    opt = fg.optim.Adam(model.parameters())
    model.fit(x[:512], y[:512], "cross_entropy", opt, epochs=1, batch_size=64, verbose=0)
    model.evaluate(x[:512], y[:512], "cross_entropy")
    model.predict(x)
    twin = pickle.loads(pickle.dumps(model))
    twin.load_state_dict(model.state_dict())
    path = os.path.join(folder, "m.safetensors")
    model.save(path, optimizer=opt)
    fg.load(path, with_optimizer=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cycles", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--gc", action="store_true", help="leave the cycle collector on")
    args = ap.parse_args()
    if not args.gc:
        gc.disable()
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="fg-soak-")
    start = time.perf_counter()
    print(f"cycle      RSS MB   (cycle collector {'on' if args.gc else 'off'})")
    marks = []
    for i in range(args.cycles):
        cycle(i, folder, rng)
        if i % args.every == 0 or i == args.cycles - 1:
            marks.append((i, rss_mb()))
            print(f"{i:6d}  {marks[-1][1]:9.1f}   {time.perf_counter() - start:6.1f} s", flush=True)
    warm = next((m for m in marks if m[0] >= args.every), marks[0])
    print(
        f"\n{args.cycles} cycles in {time.perf_counter() - start:.0f} s; RSS after warm-up "
        f"(cycle {warm[0]}): {warm[1]:.1f} MB, at the end: {marks[-1][1]:.1f} MB "
        f"(growth {marks[-1][1] - warm[1]:+.1f} MB); peak of the marks {max(m for _, m in marks):.1f} MB"
    )


if __name__ == "__main__":
    main()

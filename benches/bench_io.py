"""Save/load speed of the large MLP (784-1024-1024-10, 1.86M parameters,
7.5 MB of float32) against PyTorch, in one process, interleaved rounds.

    python benches/bench_io.py              # 15 rounds
    python benches/bench_io.py --rounds 30 --dir /some/disk

Measured per round, each from a warm page cache, into ``--dir`` (default: a
temporary folder):

- ``ferrograd save_weights`` / ``load_weights``: the state_dict as safetensors,
  written atomically (temporary file, fsync, rename, folder fsync).
- ``ferrograd save(+Adam)`` / ``fg.load(with_optimizer=True)``: the whole
  checkpoint, weights plus Adam's two moments (3x the bytes).
- ``torch.save`` / ``torch.load`` of the same-shaped torch model's state_dict
  (and with its Adam state), and ``safetensors.torch.save_file`` /
  ``load_file``, when torch imports. torch.save does not fsync; the
  ``ferrograd ... (no fsync)`` rows use ``fg.serialization.dumps`` and a plain
  file write, for the like-for-like comparison.

Reports the median seconds and MB/s (file bytes / seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

import ferrograd as fg
from ferrograd import layers as L


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="fg-bench-io-")
    path = lambda name: os.path.join(folder, name)  # noqa: E731

    model = fg.Sequential(
        [L.Dense(784, 1024), L.ReLU(), L.Dense(1024, 1024), L.ReLU(), L.Dense(1024, 10)], seed=0
    )
    opt = fg.optim.Adam(model.parameters())
    x = np.random.default_rng(0).random((256, 784), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 256)
    model.fit(x, y, "cross_entropy", opt, epochs=1, batch_size=256, verbose=0)  # Adam state

    cases: dict[str, tuple[Callable[[], object], str]] = {
        "ferrograd save_weights": (lambda: model.save_weights(path("w.st")), "w.st"),
        "ferrograd load_weights": (lambda: model.load_weights(path("w.st")), "w.st"),
        "ferrograd save (+Adam)": (lambda: model.save(path("m.st"), optimizer=opt), "m.st"),
        "ferrograd load (+Adam)": (lambda: fg.load(path("m.st"), with_optimizer=True), "m.st"),
    }

    def write_plain(name: str, data: bytes) -> None:
        with open(path(name), "wb") as f:
            f.write(data)

    cases["ferrograd save (+Adam, no fsync)"] = (
        lambda: write_plain("n.st", fg.serialization.dumps(model, opt)),
        "n.st",
    )
    try:
        import torch
        from safetensors.torch import load_file, save_file
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        tm = torch.nn.Sequential(
            torch.nn.Linear(784, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(), torch.nn.Linear(1024, 10),
        )  # fmt: skip
        topt = torch.optim.Adam(tm.parameters())
        tm(torch.from_numpy(x)).logsumexp(1).mean().backward()
        topt.step()
        both = lambda: {"model": tm.state_dict(), "optimizer": topt.state_dict()}  # noqa: E731
        cases |= {
            "torch.save state_dict": (lambda: torch.save(tm.state_dict(), path("t.pt")), "t.pt"),
            "torch.load state_dict": (lambda: torch.load(path("t.pt")), "t.pt"),
            "torch.save (+Adam)": (lambda: torch.save(both(), path("o.pt")), "o.pt"),
            "torch.load (+Adam)": (lambda: torch.load(path("o.pt")), "o.pt"),
            "safetensors.torch save_file": (
                lambda: save_file(tm.state_dict(), path("s.st")),
                "s.st",
            ),
            "safetensors.torch load_file": (lambda: load_file(path("s.st")), "s.st"),
        }
    for fn, _ in cases.values():  # warm up; create the files the loads read
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (fn, _) in cases.items():
            times[k].append(timed(fn))
    print(f"{args.rounds} rounds into {folder}; cpu count {os.cpu_count()}")
    print("| operation | file MB | median s | MB/s |")
    print("|---|---|---|---|")
    for k, (_, name) in cases.items():
        mb = os.path.getsize(path(name)) / 1e6
        med = statistics.median(times[k])
        print(f"| {k} | {mb:.1f} | {med:.4f} | {mb / med:,.0f} |")


if __name__ == "__main__":
    main()

"""Training speed and peak memory as models grow: MLPs of about 1M, 10M and
50M parameters (and the CNN), ferrograd against PyTorch in the same run.

    python benches/bench_scale.py                     # 3 interleaved rounds
    python benches/bench_scale.py --configs 1m,10m --rounds 5 --frameworks ferrograd

Each run is a fresh process that builds the model, trains one epoch on the
first 4,096 MNIST training images (the CNN: 2,048; float32, scaled to
[0, 1], batch 256, Adam, lr 1e-3; one warm-up step first, not timed; the
inputs are prepared once and loaded from .npy) and reports samples/s and
its peak RSS (VmHWM: everything the process ever held, interpreter,
data and library included). Frameworks alternate
within each round; the table shows medians. MNIST is read from
``$FERROGRAD_DATA`` (default ``../shared/datasets``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "1m": (784, 1024, 256, 10),
    "10m": (784, 2048, 4096, 10),
    "50m": (784, 4096, 4096, 4096, 4096, 10),
    "cnn": "cnn",
}
N, BATCH, LR = 4096, 256, 1e-3


def params_of(sizes) -> int:
    if sizes == "cnn":
        return 32 * 25 + 32 + 64 * 32 * 25 + 64 + 3136 * 256 + 256 + 2570
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def prepare(folder: str) -> None:
    """Writes the inputs once, so runs measure the model, not data loading."""
    import numpy as np

    sys.path.insert(0, str(HERE.parent / "python"))
    import ferrograd as fg

    root = os.environ.get("FERROGRAD_DATA", str(HERE.parent.parent / "shared" / "datasets"))
    (x, y), _ = fg.datasets.load_mnist(root, download=False)
    np.save(os.path.join(folder, "x.npy"), x[:N].astype(np.float32) / 255)
    np.save(os.path.join(folder, "y.npy"), y[:N].astype(np.int64))


def load(folder: str, cnn: bool):
    import numpy as np

    x = np.load(os.path.join(folder, "x.npy"))
    y = np.load(os.path.join(folder, "y.npy"))
    if cnn:
        n = N // 2
        return np.ascontiguousarray(x[:n].reshape(n, 1, 28, 28)), y[:n]
    return x.reshape(len(x), 784), y


def run_ferrograd(sizes, x, y):
    import ferrograd as fg
    from ferrograd import layers as L

    if sizes == "cnn":
        stack = [
            L.Conv2D(1, 32, 5, padding="same"), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(32, 64, 5, padding="same"), L.ReLU(), L.MaxPool2D(2),
            L.Flatten(), L.Dense(3136, 256), L.ReLU(), L.Dense(256, 10),
        ]  # fmt: skip
    else:
        stack = []
        for a, b in zip(sizes, sizes[1:]):
            stack += [L.Dense(a, b), L.ReLU()]
        stack.pop()
    model = fg.Sequential(stack, seed=0)
    opt = fg.optim.Adam(model.parameters(), lr=LR)
    model.fit(x[:BATCH], y[:BATCH], "cross_entropy", opt, epochs=1, batch_size=BATCH, verbose=0)
    t = time.perf_counter()
    model.fit(x, y, "cross_entropy", opt, epochs=1, batch_size=BATCH, verbose=0, shuffle=False)
    return time.perf_counter() - t


def run_torch(sizes, x, y):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if sizes == "cnn":
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 5, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 5, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(3136, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
        )  # fmt: skip
    else:
        mods = []
        for a, b in zip(sizes, sizes[1:]):
            mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        model = torch.nn.Sequential(*mods[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()

    step(xt[:BATCH], yt[:BATCH])
    t = time.perf_counter()
    for i in range(0, len(xt), BATCH):
        step(xt[i : i + BATCH], yt[i : i + BATCH])
    return time.perf_counter() - t


RUNNERS = {"ferrograd": run_ferrograd, "torch": run_torch}


def peak_rss() -> int:
    """This process's peak resident memory: VmHWM (ru_maxrss can carry the
    parent's high-water mark over a fork)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(fw: str, config: str, folder: str) -> None:
    sizes = CONFIGS[config]
    x, y = load(folder, sizes == "cnn")
    seconds = RUNNERS[fw](sizes, x, y)
    rss = peak_rss()
    print(json.dumps({"seconds": seconds, "n": len(x), "rss": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", default="1m,10m,50m,cnn")
    ap.add_argument("--frameworks", default="ferrograd,torch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    configs = args.configs.split(",")
    fws = [f for f in args.frameworks.split(",") if f in RUNNERS]
    if "torch" in fws:
        try:
            import torch  # noqa: F401
        except ImportError:
            fws.remove("torch")
            print("torch not installed: ferrograd only")
    folder = tempfile.mkdtemp(prefix="fg-bench-scale-")
    prepare(folder)
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for config in configs:
            for fw in fws:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", fw, config, folder],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if out.returncode != 0:
                    print(f"{fw}/{config} failed:\n{out.stderr[-2000:]}")
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((config, fw), []).append(res)
                print(
                    f"  round {r + 1} {config:>4} {fw:>9}: {res['n'] / res['seconds']:8,.0f} samples/s"
                    f"  peak RSS {res['rss'] / 2**20:6,.0f} MB",
                    flush=True,
                )
    print(f"\ncpu count {os.cpu_count()}; medians of {args.rounds} rounds")
    print("| model | parameters | framework | samples/s | vs torch | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for config in configs:
        speed = {}
        for fw in fws:
            runs = results.get((config, fw), [])
            if runs:
                speed[fw] = statistics.median(r["n"] / r["seconds"] for r in runs)
        for fw in fws:
            runs = results.get((config, fw), [])
            if not runs:
                continue
            rss = statistics.median(r["rss"] for r in runs) / 2**20
            ratio = f"{speed[fw] / speed['torch']:.2f}x" if "torch" in speed else "-"
            name = "CNN" if config == "cnn" else "-".join(map(str, CONFIGS[config]))
            print(
                f"| {name} | {params_of(CONFIGS[config]) / 1e6:.1f}M | {fw} | {speed[fw]:,.0f} "
                f"| {ratio} | {rss:,.0f} |"
            )


if __name__ == "__main__":
    main()

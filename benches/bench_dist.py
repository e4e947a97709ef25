"""Data-parallel training over MPI: ferrograd ranks against one process
with threads and against PyTorch DDP over Gloo, the MPI all-reduce on
loopback, and the cost model that extrapolates them to N machines.

One command runs everything, each run in fresh processes (the
distributed ones under ``mpiexec``), interleaved in rounds; tables show
medians over ``--repeats`` rounds:

    python benches/bench_dist.py                              # all parts, 3 rounds
    python benches/bench_dist.py --parts allreduce,compute    # no engine needed
    python benches/bench_dist.py --json out.json              # keep the raw runs
    python benches/bench_dist.py --analyze out.json           # tables again, no runs

Parts:

- ``train``: one epoch of bench_train.py's MNIST configurations (same
  models, batch sizes, optimizers, data; ``batch_size`` is the global
  batch) as ``ferrograd 1x2`` (one process, 2 threads: bench_train's own
  worker), ``ferrograd 2x1`` (``mpiexec -n 2``, 1 thread each,
  ``fit(distributed=True)``), ``DDP 2x1`` (``mpiexec -n 2``, 1 thread each,
  ``DistributedDataParallel`` over Gloo on 127.0.0.1, each rank its slice of
  every global batch from one shared shuffled order) and ``ferrograd 3x1``
  (3 ranks on 2 cores, for the cost model's 3-rank point); ``torch 1x2``
  on request. The ferrograd ranks time every gradient all-reduce of the
  epoch as the step sees it (waiting for the other rank included); after
  the epoch each distributed run times its own transport's all-reduce of
  the model's gradient (float32, in place) alone, in the same ranks.
- ``allreduce``: mpi4py ``Allreduce`` (in place, float32) of every model's
  gradient and of sizes from 4 B to 16 MB, on 2 and 3 ranks (3 ranks on 2
  cores are oversubscribed), fitted to the ring model's latency and
  bandwidth.
- ``compute``: seconds per training step of single-process ferrograd at
  1 and 2 threads for local batches from B/16 to 2B, fitted to
  ``t(b) = c0 + c1 * b`` (c0: per-step work no data split shares, such as
  the optimizer update; c1: compute per sample).

The cost model: time per step on N machines at global batch B is
``c0 + c1 * B / N + 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency``;
scaling efficiency is ``t_1(B) / (N * t_N(B))`` (strong scaling: the same
global batch, so the same training). It is checked against the measured
loopback points (the 3-rank all-reduce predicted from the 2-rank fit; the
2-rank ferrograd step predicted from the 1-thread compute fit), then
extrapolated to N = 2..64 machines of this machine's speed (2 threads) at
10, 25 and 100 Gb/s with ``--net-latency-us`` per message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_train as bt  # noqa: E402  (the configurations, data and models)

FRAMEWORKS = ("ferrograd 1x2", "ferrograd 2x1", "DDP 2x1", "ferrograd 3x1", "torch 1x2")
# torch 1x2 is left out by default: its OpenMP threads spin at every barrier,
# and on a loaded 2-core machine one epoch takes minutes.
DEFAULT_FRAMEWORKS = FRAMEWORKS[:4]
AR_SIZES = [1, 16, 256, 4096, 65536, 262144, 1 << 20, 1 << 22]  # float32 elements
COMPUTE_STEPS = {"small": 400, "medium": 150, "large": 60, "cnn": 30}  # per local batch size
COMPUTE_FACTORS = (1 / 16, 1 / 4, 1 / 2, 1, 2)  # local batches, times the config's batch
# All-reduce runs: ranks, and "y" for MPICH's sleeping yield while it waits
# (3 busy-polling ranks on 2 cores otherwise wait for the scheduler's time slices).
AR_RUNS = ("2", "3", "3y")
HEAVY_YIELD = {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
MACHINES = (2, 4, 8, 16, 32, 64)
LINKS_GBPS = (10, 25, 100)
TARGET_N, TARGET_EFF = 16, 0.8
WORKER_TIMEOUT = 900


def num_params(hidden) -> int:
    """Parameters (= gradient elements) of a configuration's model."""
    if hidden == "cnn":
        return (32 * 25 + 32) + (64 * 32 * 25 + 64) + (3136 * 256 + 256) + (256 * 10 + 10)
    sizes = [784, *hidden, 10]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def forward_fraction(hidden) -> float:
    """The forward pass's share of a training step's FLOPs (the rest, the
    backward pass, is what an all-reduce could overlap)."""
    if hidden == "cnn":
        return bt.cnn_infer_flops_per_sample() / bt.cnn_flops_per_sample()
    sizes = [784, *hidden, 10]
    fwd = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return fwd / bt.train_flops_per_sample(hidden)


def config_name(config: str) -> str:
    hidden, batch, opt_name = bt.CONFIGS[config]
    if hidden == "cnn":
        return f"CNN b{batch} {opt_name}"
    return f"784-{'-'.join(map(str, hidden))}-10 b{batch} {opt_name}"


# ---------------------------------------------------------------- workers
# Each prints one JSON line (rank 0 only under mpiexec).


def time_collective(call, barrier, reps: int = 15, target_s: float = 0.01, bcast=None) -> float:
    """Seconds of one `call()` (a collective): the fastest of `reps` samples
    of k calls each, every sample started after a barrier (other programs on
    a shared machine only ever add time, so the minimum is the collective's
    own cost). k is chosen on rank 0 so a sample lasts about `target_s` and
    broadcast (`bcast`), so every rank makes the same calls."""
    for _ in range(3):
        call()
    barrier()
    t = time.perf_counter()
    for _ in range(3):
        call()
    k = max(1, min(2000, int(target_s / max((time.perf_counter() - t) / 3, 1e-9))))
    if bcast is not None:
        k = bcast(k)
    samples = []
    for _ in range(reps):
        barrier()
        t = time.perf_counter()
        for _ in range(k):
            call()
        samples.append((time.perf_counter() - t) / k)
    return min(samples)


def mpi_allreduce_seconds(comm, n: int) -> float:
    from mpi4py import MPI

    buf = np.zeros(n, np.float32)  # zeros: the sums never overflow
    return time_collective(
        lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM),
        comm.Barrier,
        bcast=lambda k: comm.bcast(k, root=0),
    )


def worker_allreduce(sizes: list[int]) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = {str(n): mpi_allreduce_seconds(comm, n) for n in sizes}
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "seconds": out}))


def worker_compute(config: str, threads: int, passes: int = 2) -> None:
    """Seconds per step of single-process ferrograd at several local
    batches (``COMPUTE_STEPS`` steps each): the fastest of `passes`
    interleaved passes over the batch sizes (a slow phase of the machine
    lasts seconds: the minimum is the compute)."""
    import ferrograd as fg

    fg.set_num_threads(threads)
    hidden, batch, opt_name = bt.CONFIGS[config]
    xt, yt, _, _ = bt.load_data(images=hidden == "cnn")
    sizes = sorted({max(1, round(batch * f)) for f in COMPUTE_FACTORS})
    runs = {}
    for b in sizes:
        model, opt = bt.ferrograd_model(hidden, opt_name)
        n = min(len(xt), COMPUTE_STEPS[config] * b)
        model.fit(xt[: 4 * b], yt[: 4 * b], "cross_entropy", opt, batch_size=b, verbose=0)
        runs[b] = (model, opt, n)
    best = dict.fromkeys(sizes, math.inf)
    for _ in range(passes):
        for b, (model, opt, n) in runs.items():
            t = time.perf_counter()
            model.fit(xt[:n], yt[:n], "cross_entropy", opt, batch_size=b, verbose=0)
            best[b] = min(best[b], (time.perf_counter() - t) / math.ceil(n / b))
    print(json.dumps({"step_seconds": {str(b): s for b, s in best.items()}}))


def worker_ferrograd_dist(config: str, threads: int) -> None:
    """One epoch of fit(distributed=True) in every rank, then the MPI
    all-reduce of the model's gradient in the same ranks."""
    from mpi4py import MPI

    import ferrograd as fg
    from ferrograd import distributed as dist

    fg.set_num_threads(threads)
    dist.init()
    comm = MPI.COMM_WORLD
    # Time every gradient all-reduce of the epoch, as the step sees it (waiting
    # for the other ranks included), by wrapping the engine's reducer (a private
    # hook: without it, only the all-reduce timed alone after the epoch).
    calls: list[float] = []
    make_reducer = getattr(dist, "_reducer", None)
    if make_reducer is not None:

        def timed_reducer(*a):
            reduce = make_reducer(*a)

            def timed(view):
                t = time.perf_counter()
                reduce(view)
                calls.append(time.perf_counter() - t)

            return timed

        dist._reducer = timed_reducer
    hidden, batch, opt_name = bt.CONFIGS[config]
    xt, yt, xs, ys = bt.load_data(images=hidden == "cnn")
    model, opt = bt.ferrograd_model(hidden, opt_name)
    comm.Barrier()
    t = time.perf_counter()
    model.fit(xt, yt, "cross_entropy", opt, epochs=1, batch_size=batch, verbose=0, distributed=True)
    elapsed = comm.allreduce(time.perf_counter() - t, op=MPI.MAX)
    acc = model.evaluate(xs, ys, "cross_entropy")["accuracy"]
    ar = mpi_allreduce_seconds(comm, model.num_params())
    if comm.Get_rank() == 0:
        out = {"elapsed": elapsed, "acc": acc, "samples": len(xt), "allreduce_s": ar}
        if calls:
            out |= {"in_step_s": statistics.median(calls), "in_step_total_s": sum(calls)}
        print(json.dumps(out | {"steps": math.ceil(len(xt) / batch), "ranks": comm.Get_size()}))


def worker_ddp(config: str, threads: int, port: int) -> None:
    """One epoch of PyTorch DDP over Gloo; the rank and size come from the
    MPI launcher's environment (MPICH's Hydra: PMI_RANK, PMI_SIZE; Open MPI:
    OMPI_COMM_WORLD_*), the rendezvous is TCP on 127.0.0.1."""
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    env = os.environ
    rank = int(env.get("PMI_RANK", env.get("OMPI_COMM_WORLD_RANK", "0")))
    size = int(env.get("PMI_SIZE", env.get("OMPI_COMM_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
    )
    hidden, batch, opt_name = bt.CONFIGS[config]
    xt, yt, xs, ys = (torch.from_numpy(a) for a in bt.load_data(images=hidden == "cnn"))
    model, opt = bt.torch_model(hidden, opt_name)
    ddp = DDP(model)  # broadcasts rank 0's parameters
    lossf = torch.nn.CrossEntropyLoss()
    perm = np.random.default_rng(0).permutation(len(xt))
    tdist.barrier()
    t = time.perf_counter()
    for i in range(0, len(xt), batch):
        idx = torch.from_numpy(np.array_split(perm[i : i + batch], size)[rank])
        opt.zero_grad()
        lossf(ddp(xt[idx]), yt[idx]).backward()
        opt.step()
    elapsed = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
    tdist.all_reduce(elapsed, op=tdist.ReduceOp.MAX)
    with torch.no_grad():
        acc = (model(xs).argmax(1) == ys).float().mean().item()
    grad = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float32)
    flag = torch.zeros(1, dtype=torch.int64)

    def bcast(k: int) -> int:
        flag[0] = k
        tdist.broadcast(flag, 0)
        return int(flag[0])

    ar = time_collective(lambda: tdist.all_reduce(grad), tdist.barrier, bcast=bcast)
    if rank == 0:
        out = {"elapsed": elapsed.item(), "acc": acc, "samples": len(xt), "allreduce_s": ar}
        print(json.dumps(out | {"steps": math.ceil(len(xt) / batch), "ranks": size}))
    tdist.destroy_process_group()


# ---------------------------------------------------------------- driver


def mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit("mpiexec not found: pip install mpi4py mpich (into this environment)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    t = str(threads)
    env.update(
        FERROGRAD_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t
    )
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def launch(cmd: list[str], threads: int, extra_env: dict[str, str] | None = None) -> dict | None:
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=rank_env(threads) | (extra_env or {}),
            timeout=WORKER_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        print(f"  timed out: {' '.join(cmd)}", flush=True)
        return None
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"  failed ({out.returncode}): {' '.join(cmd[-5:])}\n{out.stderr[-1500:]}")
        return None
    return json.loads(lines[-1])


def me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def run_train(fw: str, config: str) -> dict | None:
    if fw == "ferrograd 1x2":
        return launch(
            [sys.executable, bt.__file__, "--worker", "ferrograd", config, "--threads", "2"], 2
        )
    if fw == "torch 1x2":
        return launch(
            [sys.executable, bt.__file__, "--worker", "torch", config, "--threads", "2"], 2
        )
    ranks = int(fw.split()[1].split("x")[0])
    if fw.startswith("ferrograd"):
        cmd = [mpiexec(), "-n", str(ranks), *me("--worker", "fg-dist", config, "1")]
        oversubscribed = ranks > (os.cpu_count() or 1)
        return launch(cmd, 1, HEAVY_YIELD if oversubscribed else None)
    port = str(free_port())
    return launch([mpiexec(), "-n", str(ranks), *me("--worker", "ddp", config, "1", port)], 1)


def available(fw: str) -> str | None:
    """None when `fw` can run here, else why not."""
    checks = {
        "ferrograd 1x2": "import ferrograd",
        "ferrograd 2x1": "import ferrograd, mpi4py; from ferrograd import distributed",
        "ferrograd 3x1": "import ferrograd, mpi4py; from ferrograd import distributed",
        "DDP 2x1": "import torch.distributed, mpi4py",
        "torch 1x2": "import torch",
    }
    r = subprocess.run([sys.executable, "-c", checks[fw]], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def measure(args) -> dict:
    parts = set(args.parts.split(","))
    configs = [c for c in args.configs.split(",") if c]
    raw: dict = {"train": {}, "allreduce": {}, "compute": {}, "cpu_count": os.cpu_count()}
    fws = []
    if "train" in parts:
        for fw in [f for f in args.frameworks.split(",") if f]:
            why = available(fw)
            if why:
                print(f"skipped {fw}: {why}")
            else:
                fws.append(fw)
    sizes = sorted(set(AR_SIZES) | {num_params(bt.CONFIGS[c][0]) for c in bt.CONFIGS})
    raw["loadavg"] = [os.getloadavg()[0]]
    for rep in range(args.repeats):
        if "allreduce" in parts:
            for key in AR_RUNS:
                n = key[0]
                cmd = [mpiexec(), "-n", n, *me("--worker", "allreduce", *map(str, sizes))]
                r = launch(cmd, 1, HEAVY_YIELD if key.endswith("y") else None)
                if r:
                    raw["allreduce"].setdefault(key, []).append(r["seconds"])
                    big = r["seconds"][str(1 << 22)]
                    print(
                        f"  round {rep + 1} allreduce {key} ranks: 4 B {r['seconds']['1'] * 1e6:.1f} us,"
                        f" 16 MB {big * 1e3:.2f} ms",
                        flush=True,
                    )
        for config in configs:
            if "compute" in parts:
                for threads in (1, 2):
                    r = launch(me("--worker", "compute", config, str(threads)), threads)
                    if r:
                        key = f"{config}/{threads}"
                        raw["compute"].setdefault(key, []).append(r["step_seconds"])
                        steps = ", ".join(
                            f"b{b} {s * 1e3:.3f}" for b, s in r["step_seconds"].items()
                        )
                        print(f"  round {rep + 1} compute {key}: ms/step {steps}", flush=True)
            for fw in fws:
                r = run_train(fw, config)
                if r:
                    raw["train"].setdefault(f"{config}/{fw}", []).append(r)
                    extra = (
                        f"  all-reduce {r['allreduce_s'] * 1e3:.3f} ms"
                        if "allreduce_s" in r
                        else ""
                    )
                    print(
                        f"  round {rep + 1} {config:>6} {fw:>13}: "
                        f"{r['samples'] / r['elapsed']:>9,.0f} samples/s  acc {r['acc']:.4f}{extra}",
                        flush=True,
                    )
    raw["loadavg"].append(os.getloadavg()[0])
    return raw


# ---------------------------------------------------------------- analysis


def ring_seconds(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    """Ring all-reduce of `nbytes` over `n` machines (bandwidth in bytes/s)."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def fit_ring(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Latency and bandwidth of the ring model from (ranks, bytes, seconds),
    least squares on relative error (so 4 B and 16 MB weigh alike)."""
    a = np.array([[2 * (n - 1) / n * b, 2 * (n - 1)] for n, b, _ in points])
    t = np.array([s for _, _, s in points])
    w = 1 / t
    (inv_bw, lat), *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
    return float(lat), float(1 / inv_bw)


def fit_compute(step_seconds: dict[str, float]) -> tuple[float, float]:
    """c0 (s per step) and c1 (s per sample) of t(b) = c0 + c1 b, least
    squares on relative error."""
    b = np.array([float(k) for k in step_seconds])
    t = np.array(list(step_seconds.values()))
    w = 1 / t
    (c0, c1), *_ = np.linalg.lstsq(
        np.stack([np.ones_like(b), b], 1) * w[:, None], t * w, rcond=None
    )
    return float(c0), float(c1)


def step_seconds(c0, c1, fwd, batch, n, ar, overlap=False) -> float:
    local = c0 + c1 * batch / n
    if not overlap:
        return local + ar
    # The backward pass (all but the forward share of c1 b) hides the all-reduce
    # as DDP's buckets do, at best; the optimizer update (in c0) waits for it.
    bwd = (1 - fwd) * c1 * batch / n
    return local - bwd + max(bwd, ar)


def efficiency(c0, c1, fwd, batch, n, ar, overlap=False) -> float:
    return (c0 + c1 * batch) / (n * step_seconds(c0, c1, fwd, batch, n, ar, overlap))


def min_batch(c0, c1, fwd, n, ar, eff, overlap=False) -> float:
    """The smallest global batch with efficiency >= `eff` on `n` machines
    (inf when none: c0 alone caps it)."""
    lo, hi = 1.0, 1e9
    if efficiency(c0, c1, fwd, hi, n, ar, overlap) < eff:
        return math.inf
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if efficiency(c0, c1, fwd, mid, n, ar, overlap) >= eff:
            hi = mid
        else:
            lo = mid
    return hi


def med_dict(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def fmt_t(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def analyze(raw: dict, args) -> None:
    configs = [c for c in args.configs.split(",") if c]
    configs = [c for c in configs if any(k.startswith(c + "/") for k in raw["train"])] or configs
    train = raw["train"]
    if "loadavg" in raw:
        print(
            "1-minute load average at the start and the end: "
            + " / ".join(f"{x:.1f}" for x in raw["loadavg"])
        )
    rounds = max((len(v) for v in train.values()), default=0)
    if train:
        print(
            f"\n### Training, one epoch, median of {rounds} rounds (cpu count {raw['cpu_count']})\n"
        )
        print(
            "| config | run | samples/s | ferrograd 2x1 vs this | ms per step | all-reduce ms"
            " in the step | its share of the epoch | all-reduce ms alone (fastest) | test acc |"
        )
        print("|" + "---|" * 9)
        for config in configs:
            rows = {fw: train[f"{config}/{fw}"] for fw in FRAMEWORKS if f"{config}/{fw}" in train}
            speed = {
                fw: statistics.median(r["samples"] / r["elapsed"] for r in rs)
                for fw, rs in rows.items()
            }
            ours = speed.get("ferrograd 2x1")
            for fw, rs in rows.items():
                ratio = f"{ours / speed[fw]:.2f}x" if ours and fw != "ferrograd 2x1" else "-"
                cells = ["-"] * 4
                if "allreduce_s" in rs[0]:
                    cells[0] = (
                        f"{statistics.median(r['elapsed'] / r['steps'] for r in rs) * 1e3:.3f}"
                    )
                    cells[3] = f"{statistics.median(r['allreduce_s'] for r in rs) * 1e3:.3f}"
                if "in_step_s" in rs[0]:
                    cells[1] = f"{statistics.median(r['in_step_s'] for r in rs) * 1e3:.3f}"
                    share = statistics.median(r["in_step_total_s"] / r["elapsed"] for r in rs)
                    cells[2] = f"{100 * share:.0f}%"
                acc = statistics.median(r["acc"] for r in rs)
                print(
                    f"| {config_name(config)} | {fw} | {speed[fw]:,.0f} | {ratio} | "
                    f"{' | '.join(cells)} | {acc:.4f} |"
                )
    ar_raw = raw["allreduce"]
    lat = bw = None
    if "2" in ar_raw:
        med = {n: med_dict(runs) for n, runs in ar_raw.items()}
        lat, bw = fit_ring([(2, 4 * int(k), s) for k, s in med["2"].items()])
        print(
            f"\n### MPI all-reduce on loopback (mpi4py Allreduce, float32, in place), the fastest of 15 samples per run, median of {len(ar_raw['2'])} rounds\n"
        )
        print(
            f"Ring fit on the 2-rank points: latency {lat * 1e6:.2f} us per message, bandwidth {bw / 1e9:.2f} GB/s.\n"
        )
        ns = [k for k in AR_RUNS if k in med]
        label = {k: f"{k[0]} ranks" + (" (yield)" if k.endswith("y") else "") for k in ns}
        head = " | ".join(f"{label[n]} measured | model" for n in ns)
        print(f"| float32 elements | bytes | {head} |")
        print("|" + "---|" * (2 + 2 * len(ns)))
        for k in sorted(med["2"], key=int):
            cells = []
            for n in ns:
                meas = med[n].get(k)
                cells += [
                    fmt_t(meas) if meas else "-",
                    fmt_t(ring_seconds(int(n[0]), 4 * int(k), bw, lat)),
                ]
            print(f"| {int(k):,} | {4 * int(k):,} | {' | '.join(cells)} |")
    comp = {k: fit_compute(med_dict(v)) for k, v in raw["compute"].items()}
    if comp:
        print(
            "\n### Compute per step, single-process ferrograd: t(b) = c0 + c1 b (fit over local batches)\n"
        )
        print(
            "| config | threads | c0 (per step) | c1 (per sample) | samples/s at b=B | measured ms/step by local batch |"
        )
        print("|---|---|---|---|---|---|")
        for key, (c0, c1) in comp.items():
            config, threads = key.split("/")
            batch = bt.CONFIGS[config][1]
            meas = med_dict(raw["compute"][key])
            pts = ", ".join(f"{b}: {s * 1e3:.3f}" for b, s in meas.items())
            print(
                f"| {config_name(config)} | {threads} | {fmt_t(c0)} | {c1 * 1e6:.2f} us | {batch / (c0 + c1 * batch):,.0f} | {pts} |"
            )
    # Check: the 2-rank (and 3-rank) ferrograd step against compute(B/N, 1 thread) + all-reduce.
    if comp and lat is not None and train:
        print(
            "\n### Check: measured distributed steps against the model (this machine, 1 thread per rank)\n"
        )
        print(
            "| config | run | measured ms/step | model ms/step (compute + all-reduce) | model/measured |"
        )
        print("|---|---|---|---|---|")
        for config in configs:
            hidden, batch, _ = bt.CONFIGS[config]
            if f"{config}/1" not in comp:
                continue
            c0, c1 = comp[f"{config}/1"]
            nbytes = 4 * num_params(hidden)
            for fw in FRAMEWORKS:
                rs = train.get(f"{config}/{fw}")
                if not rs or "steps" not in rs[0] or not fw.startswith("ferrograd"):
                    continue
                n = rs[0]["ranks"]
                meas = statistics.median(r["elapsed"] / r["steps"] for r in rs)
                # n ranks of 1 thread share 2 cores: compute slows by n/2 beyond 2 ranks.
                share = max(1.0, n / (raw["cpu_count"] or 2))
                model = (c0 + c1 * batch / n) * share + ring_seconds(n, nbytes, bw, lat)
                print(
                    f"| {config_name(config)} | {fw} | {meas * 1e3:.3f} | {model * 1e3:.3f} "
                    f"({(c0 + c1 * batch / n) * share * 1e3:.3f} + {ring_seconds(n, nbytes, bw, lat) * 1e3:.3f}) | {model / meas:.2f} |"
                )
    machine = {}
    for key, (c0, c1) in comp.items():
        if key.endswith("/2") and c1 > 0 and c0 >= 0:
            machine[key.split("/")[0]] = (c0, c1)
        elif key.endswith("/2"):  # noise (a slow phase in one batch size's run) beat the signal
            print(f"\n{key}: no usable compute fit (c0 {c0:.3g} s, c1 {c1:.3g} s): rerun")
    if not machine:
        return
    rates = dict(kv.split("=") for kv in args.machine_rate.split(",") if kv)
    scaled = []
    for config, rate in rates.items():
        if config in machine:
            # Keep the fit's split between c0 and c1, at the given speed at b = B.
            c0, c1 = machine[config]
            batch = bt.CONFIGS[config][1]
            k = batch / float(rate) / (c0 + c1 * batch)
            machine[config] = (c0 * k, c1 * k)
            scaled.append(f"{config} x{1 / k:.2f}")
    if scaled:
        print(
            "\nThe predictions below take the machine's compute from --machine-rate "
            f"(the fit's c0 and c1 sped up: {', '.join(scaled)})."
        )
    net_lat = args.net_latency_us * 1e-6
    print(
        f"\n### Predicted scaling efficiency on N machines like this one (2 threads each), "
        f"global batch = the config's batch (strong scaling), link latency {args.net_latency_us:g} us\n"
    )
    print("| config | gradient | link | " + " | ".join(f"N={n}" for n in MACHINES) + " |")
    print("|" + "---|" * (3 + len(MACHINES)))
    for config in configs:
        if config not in machine:
            continue
        hidden, batch, _ = bt.CONFIGS[config]
        c0, c1 = machine[config]
        fwd = forward_fraction(hidden)
        nbytes = 4 * num_params(hidden)
        for gbps in LINKS_GBPS:
            cells = []
            for n in MACHINES:
                if n > batch:
                    cells.append("-")
                    continue
                ar = ring_seconds(n, nbytes, gbps * 1e9 / 8, net_lat)
                cells.append(f"{100 * efficiency(c0, c1, fwd, batch, n, ar):.0f}%")
            print(
                f"| {config_name(config)} | {nbytes / 1e6:.2f} MB | {gbps} Gb/s | {' | '.join(cells)} |"
            )
    print(
        f"\n### Smallest global batch for {100 * TARGET_EFF:.0f}% efficiency on {TARGET_N} machines"
        f" (without / with the all-reduce overlapping the backward pass)\n"
    )
    print(
        "| config | c0 / c1 | forward share | " + " | ".join(f"{g} Gb/s" for g in LINKS_GBPS) + " |"
    )
    print("|" + "---|" * (3 + len(LINKS_GBPS)))
    for config in configs:
        if config not in machine:
            continue
        hidden, batch, _ = bt.CONFIGS[config]
        c0, c1 = machine[config]
        fwd = forward_fraction(hidden)
        nbytes = 4 * num_params(hidden)
        cells = []
        for gbps in LINKS_GBPS:
            ar = ring_seconds(TARGET_N, nbytes, gbps * 1e9 / 8, net_lat)
            plain = min_batch(c0, c1, fwd, TARGET_N, ar, TARGET_EFF)
            over = min_batch(c0, c1, fwd, TARGET_N, ar, TARGET_EFF, overlap=True)
            cells.append(f"{plain:,.0f} / {over:,.0f} (all-reduce {ar * 1e3:.2f} ms)")
        print(
            f"| {config_name(config)} | {c0 / c1:.0f} samples | {100 * fwd:.0f}% | {' | '.join(cells)} |"
        )


def merge(raws: list[dict]) -> dict:
    """Several runs' raw results as one (the rounds of each entry pooled)."""
    out: dict = {"train": {}, "allreduce": {}, "compute": {}, "loadavg": []}
    for raw in raws:
        for part in ("train", "allreduce", "compute"):
            for key, runs in raw[part].items():
                out[part].setdefault(key, []).extend(runs)
        out["loadavg"] += raw.get("loadavg", [])
        out["cpu_count"] = raw["cpu_count"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", default=",".join(bt.CONFIGS))
    ap.add_argument(
        "--frameworks", default=",".join(DEFAULT_FRAMEWORKS), help=f"of {', '.join(FRAMEWORKS)}"
    )
    ap.add_argument("--parts", default="train,allreduce,compute")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--net-latency-us", type=float, default=25.0, help="per message, for the predictions"
    )
    ap.add_argument(
        "--machine-rate",
        default="",
        help="config=samples/s,... at batch B and 2 threads for the predictions (e.g. a quiet"
        " machine's bench_train.py medians), instead of this run's compute fit",
    )
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument(
        "--analyze", help="print the tables of --json files (comma-separated, merged); run nothing"
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "allreduce":
            worker_allreduce([int(s) for s in rest])
        elif kind == "compute":
            worker_compute(rest[0], int(rest[1]))
        elif kind == "fg-dist":
            worker_ferrograd_dist(rest[0], int(rest[1]))
        elif kind == "ddp":
            worker_ddp(rest[0], int(rest[1]), int(rest[2]))
        return
    if args.analyze:
        raw = merge([json.loads(Path(f).read_text()) for f in args.analyze.split(",")])
    else:
        raw = measure(args)
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1))
    analyze(raw, args)


if __name__ == "__main__":
    main()

"""Full-epoch MNIST training benchmark: ferrograd against JAX, PyTorch and
scikit-learn (whichever import), run interleaved in fresh processes.

Each run trains one full epoch of MNIST (60,000 samples, float32, inputs
scaled to [0, 1]; the CNN: the first 12,000) from a fresh model and then
measures test accuracy, so speed is never bought with wrong math. The CNN
(conv5x5(32, same)-ReLU-maxpool2-conv5x5(64, same)-ReLU-maxpool2-dense
256-ReLU-dense 10, batch 64, Adam) runs against PyTorch only, and also times
inference: predict on the 10,000 test images in batches of 1024 (torch:
its forward under no_grad). Reports medians over ``--repeats``
runs: samples/s, ratio to each peer, GFLOPS and percent of numpy's float32
matmul speed measured in the same run (the practical roofline), peak RSS,
import time and test accuracy.

    python benches/bench_train.py                 # all configs, 5 repeats
    python benches/bench_train.py --configs small --repeats 3 --frameworks ferrograd,jax
    python benches/bench_train.py --baseline /path/to/old/venv/bin/python   # before/after

``--frameworks ferrograd,ferrograd-diag`` measures what ``fit(...,
diagnostics=True)`` costs (the ratio column).

``--baseline`` adds ``ferrograd-base``: the same ferrograd runner in another
interpreter (a virtual environment with an earlier build installed), in the
same interleaved rounds, for before/after medians of a change.

Five rounds by default: on a shared 2-vCPU machine one or two rounds in a
run can land in a slow phase (half speed for seconds), and a median of
five is not moved by two of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    # name: (hidden sizes, batch size, optimizer)
    "small": ([128], 32, "sgd"),
    "medium": ([512, 512], 128, "adam"),
    "large": ([1024, 1024], 256, "adam"),
    "cnn": ("cnn", 64, "adam"),
    "resnet": ("resnet", 64, "adam"),
}
# Configurations on (N, 1, 28, 28) images (the first CNN_SAMPLES training
# images; inference timed on the test set).
IMAGES = ("cnn", "resnet")
# The small ResNet: stem conv3x3(16)-BN-ReLU, three stages of two BasicBlocks
# (16; 32 stride 2; 64 stride 2), a 1x1 stride-2 conv + BN projection where the
# shape changes, global average pooling, Dense(64, 10).
RESNET_STAGES = ((16, 1), (32, 2), (64, 2))
CNN_SAMPLES = 12_000
INFER_BATCH = 1024
# Frameworks with a CNN runner.
CNN_FRAMEWORKS = ("ferrograd", "ferrograd-base", "ferrograd-u8", "ferrograd-diag", "torch")
LR = {"sgd": 0.01, "adam": 1e-3}
MOMENTUM = 0.9


def cnn_flops_per_sample() -> int:
    """Forward, weight gradient and input gradient of each layer (the
    first convolution needs no input gradient): 67.5 MFLOP."""
    conv1 = 2 * 32 * 25 * 28 * 28
    conv2 = 2 * 64 * (32 * 25) * 14 * 14
    dense = 2 * 3136 * 256 + 2 * 256 * 10
    return 2 * conv1 + 3 * conv2 + 3 * dense


def resnet_convs() -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, kernel, output side) of every convolution
    of the small ResNet, in order."""
    convs, side, cin = [(1, 16, 3, 28)], 28, 16
    for cout, stride in RESNET_STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            side_out = side // s
            convs.append((cin, cout, 3, side_out))
            convs.append((cout, cout, 3, side_out))
            if s != 1 or cin != cout:
                convs.append((cin, cout, 1, side_out))
            cin, side = cout, side_out
    return convs


def resnet_infer_flops_per_sample() -> int:
    return sum(2 * a * b * k * k * o * o for a, b, k, o in resnet_convs()) + 2 * 64 * 10


def infer_flops_per_sample(hidden) -> int:
    return resnet_infer_flops_per_sample() if hidden == "resnet" else cnn_infer_flops_per_sample()


def cnn_infer_flops_per_sample() -> int:
    return 2 * 32 * 25 * 28 * 28 + 2 * 64 * 800 * 14 * 14 + 2 * 3136 * 256 + 2 * 256 * 10


def train_flops_per_sample(hidden) -> int:
    """Forward 2*in*out, weight gradient 2*in*out, input gradient 2*in*out
    except for the first layer (its input needs no gradient)."""
    if hidden == "cnn":
        return cnn_flops_per_sample()
    if hidden == "resnet":  # forward, weight and input gradients; the stem needs no input gradient
        return 3 * resnet_infer_flops_per_sample() - 2 * 16 * 9 * 28 * 28
    sizes = [784, *hidden, 10]
    total = 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += 4 * a * b + (2 * a * b if i > 0 else 0)
    return total


def load_data(raw: bool = False, images: bool = False):
    """MNIST as float32 in [0, 1], flattened; with ``raw``, the uint8
    pixels; with ``images``, shaped (N, 1, 28, 28)."""
    import numpy as np

    try:
        from ferrograd.datasets import load_mnist
    except ImportError:  # not installed: the source tree's (needs its built extension)
        sys.path.insert(0, str(REPO / "python"))
        from ferrograd.datasets import load_mnist

    root = os.environ.get("FERROGRAD_DATA", str(REPO.parent / "shared" / "datasets"))
    (xt, yt), (xs, ys) = load_mnist(root=root, download=False)
    if images:
        xt, yt = xt[:CNN_SAMPLES], yt[:CNN_SAMPLES]
        shape = (-1, 1, 28, 28)
        if raw:
            return xt.reshape(shape), yt.astype(np.int64), xs.reshape(shape), ys.astype(np.int64)
        f = np.float32
        return (
            xt.reshape(shape).astype(f) / f(255),
            yt.astype(np.int64),
            xs.reshape(shape).astype(f) / f(255),
            ys.astype(np.int64),
        )
    if raw:
        return xt.reshape(-1, 784), yt.astype(np.int64), xs.reshape(-1, 784), ys.astype(np.int64)
    f = np.float32
    return (
        (xt.reshape(-1, 784).astype(f) / f(255)),
        yt.astype(np.int64),
        (xs.reshape(-1, 784).astype(f) / f(255)),
        ys.astype(np.int64),
    )


# ---------------------------------------------------------------- workers


def ferrograd_cnn(raw: bool):
    from ferrograd import layers as L

    return ([L.Rescaling(1 / 255)] if raw else []) + [
        L.Conv2D(1, 32, 5, padding="same"),
        L.ReLU(),
        L.MaxPool2D(2),
        L.Conv2D(32, 64, 5, padding="same"),
        L.ReLU(),
        L.MaxPool2D(2),
        L.Flatten(),
        L.Dense(3136, 256),
        L.ReLU(),
        L.Dense(256, 10),
    ]


def ferrograd_resnet():
    """The small ResNet as a ferrograd graph model (functional API)."""
    import ferrograd as fg
    from ferrograd import layers as L

    def conv_bn(x, cin, cout, k, stride):
        pad = k // 2
        x = L.Conv2D(cin, cout, k, stride=stride, padding=pad, bias=False)(x)
        return L.BatchNorm2D(cout)(x)

    x = fg.Input((1, 28, 28))
    h = L.ReLU()(conv_bn(x, 1, 16, 3, 1))
    cin = 16
    for cout, stride in RESNET_STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            y = L.ReLU()(conv_bn(h, cin, cout, 3, s))
            y = conv_bn(y, cout, cout, 3, 1)
            short = conv_bn(h, cin, cout, 1, s) if s != 1 or cin != cout else h
            h = L.ReLU()(L.Add()([y, short]))
            cin = cout
    out = L.Dense(64, 10)(L.GlobalAvgPool2D()(h))
    return fg.Model(x, out, seed=0)


def ferrograd_model(hidden, opt_name, raw=False):
    """A fresh ferrograd model of a configuration (seed 0) and its optimizer.
    With ``raw``, a ``Rescaling(1/255)`` first: uint8 pixels in, scaled per
    batch by the model (no float copy of the data)."""
    import ferrograd as fg
    from ferrograd import layers as L

    if hidden == "cnn":
        model = fg.Sequential(ferrograd_cnn(raw), seed=0)
    elif hidden == "resnet":
        model = ferrograd_resnet()
    else:
        stack, width = ([L.Rescaling(1 / 255)] if raw else []), 784
        for h in hidden:
            stack += [L.Dense(width, h), L.ReLU()]
            width = h
        stack.append(L.Dense(width, 10))
        model = fg.Sequential(stack, seed=0)
    if opt_name == "sgd":
        return model, fg.optim.SGD(model.parameters(), lr=LR["sgd"], momentum=MOMENTUM)
    return model, fg.optim.Adam(model.parameters(), lr=LR["adam"])


def run_ferrograd(hidden, batch, opt_name, data, threads, raw=False, diagnostics=False):
    t0 = time.perf_counter()
    import ferrograd as fg
    import ferrograd.layers  # noqa: F401  (timed with the package: the models need it)

    import_s = time.perf_counter() - t0
    if threads:
        fg.set_num_threads(threads)
    xt, yt, xs, ys = data
    extra = {"diagnostics": True} if diagnostics else {}  # builds before diagnostics lack it
    if hidden in IMAGES:
        model, opt = ferrograd_model(hidden, opt_name, raw)
        start = time.perf_counter()
        model.fit(xt, yt, "cross_entropy", opt, epochs=1, batch_size=batch, verbose=0, **extra)
        elapsed = time.perf_counter() - start
        model.predict(xs[:INFER_BATCH], batch_size=INFER_BATCH)  # warm
        start = time.perf_counter()
        out = model.predict(xs, batch_size=INFER_BATCH)
        infer = time.perf_counter() - start
        acc = float((out.argmax(1) == ys).mean())
        return elapsed, acc, import_s, infer
    model, opt = ferrograd_model(hidden, opt_name, raw)
    start = time.perf_counter()
    model.fit(xt, yt, "cross_entropy", opt, epochs=1, batch_size=batch, verbose=0, **extra)
    elapsed = time.perf_counter() - start
    acc = model.evaluate(xs, ys, "cross_entropy")["accuracy"]
    return elapsed, acc, import_s


def run_jax(hidden, batch, opt_name, data, threads):
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import_s = time.perf_counter() - t0
    xt, yt, xs, ys = data
    sizes = [784, *hidden, 10]
    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), jnp.zeros(b)))

    def forward(p, x):
        for w, b in p[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = p[-1]
        return x @ w + b

    def loss_fn(p, x, y):
        logits = forward(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.sgd(LR["sgd"], momentum=MOMENTUM) if opt_name == "sgd" else optax.adam(LR["adam"])
    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss_fn)(p, x, y)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    n = len(xt)
    perm = np.random.default_rng(0).permutation(n)
    # Warm up the compilation for the full and the last partial batch size.
    for m in {batch, n % batch or batch}:
        jax.block_until_ready(step(params, state, xt[:m], yt[:m]))
    start = time.perf_counter()
    for i in range(0, n, batch):
        idx = perm[i : i + batch]
        params, state = step(params, state, xt[idx], yt[idx])
    jax.block_until_ready(params)
    elapsed = time.perf_counter() - start
    pred = np.asarray(jax.jit(forward)(params, xs)).argmax(1)
    return elapsed, float((pred == ys).mean()), import_s


def torch_model(hidden, opt_name):
    """The PyTorch twin of :func:`ferrograd_model` (torch's default
    initialisation, seeded by the caller) and its optimizer."""
    import torch

    nn = torch.nn
    if hidden == "resnet":

        class Block(nn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(cout)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.short = nn.Identity()
                if stride != 1 or cin != cout:
                    self.short = nn.Sequential(
                        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                    )

            def forward(self, x):
                y = torch.relu(self.bn1(self.conv1(x)))
                return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

        blocks, cin = [], 16
        for cout, stride in RESNET_STAGES:
            blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            *blocks,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
    elif hidden == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3136, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )
    else:
        sizes = [784, *hidden, 10]
        mods: list = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        model = nn.Sequential(*mods)
    if opt_name == "sgd":
        return model, torch.optim.SGD(model.parameters(), lr=LR["sgd"], momentum=MOMENTUM)
    return model, torch.optim.Adam(model.parameters(), lr=LR["adam"])


def run_torch(hidden, batch, opt_name, data, threads):
    t0 = time.perf_counter()
    import numpy as np
    import torch

    import_s = time.perf_counter() - t0
    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    xt, yt, xs, ys = (torch.from_numpy(a) for a in data)
    model, opt = torch_model(hidden, opt_name)
    lossf = torch.nn.CrossEntropyLoss()
    if hidden in IMAGES:
        perm = torch.from_numpy(np.random.default_rng(0).permutation(len(xt)))
        start = time.perf_counter()
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            lossf(model(xt[idx]), yt[idx]).backward()
            opt.step()
        elapsed = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            model(xs[:INFER_BATCH])  # warm
            start = time.perf_counter()
            out = torch.cat(
                [model(xs[i : i + INFER_BATCH]) for i in range(0, len(xs), INFER_BATCH)]
            )
            infer = time.perf_counter() - start
        acc = (out.argmax(1) == ys).float().mean().item()
        return elapsed, acc, import_s, infer
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(xt)))
    start = time.perf_counter()
    for i in range(0, len(xt), batch):
        idx = perm[i : i + batch]
        opt.zero_grad()
        lossf(model(xt[idx]), yt[idx]).backward()
        opt.step()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(xs).argmax(1) == ys).float().mean().item()
    return elapsed, acc, import_s


def run_sklearn(hidden, batch, opt_name, data, threads):
    import warnings

    t0 = time.perf_counter()
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    import_s = time.perf_counter() - t0
    xt, yt, xs, ys = data
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(hidden),
        batch_size=batch,
        max_iter=1,
        random_state=0,
        solver="sgd" if opt_name == "sgd" else "adam",
        learning_rate_init=LR[opt_name],
        momentum=MOMENTUM,
        nesterovs_momentum=False,
        alpha=0.0,
        shuffle=True,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xt, yt)
    elapsed = time.perf_counter() - start
    return elapsed, float(clf.score(xs, ys)), import_s


def run_ferrograd_u8(hidden, batch, opt_name, data, threads):
    return run_ferrograd(hidden, batch, opt_name, data, threads, raw=True)


def run_ferrograd_diag(hidden, batch, opt_name, data, threads):
    """ferrograd with fit(diagnostics=True): the diagnostics' cost."""
    return run_ferrograd(hidden, batch, opt_name, data, threads, diagnostics=True)


RUNNERS = {
    "ferrograd": run_ferrograd,
    "ferrograd-u8": run_ferrograd_u8,
    "ferrograd-diag": run_ferrograd_diag,
    "jax": run_jax,
    "torch": run_torch,
    "sklearn": run_sklearn,
}
MODULES = {
    "ferrograd": "ferrograd",
    "ferrograd-u8": "ferrograd",
    "ferrograd-diag": "ferrograd",
    "jax": "optax",
    "torch": "torch",
    "sklearn": "sklearn",
}


def worker(fw: str, config: str, threads: int) -> None:
    import resource

    hidden, batch, opt_name = CONFIGS[config]
    data = load_data(raw=fw == "ferrograd-u8", images=hidden in IMAGES)
    elapsed, acc, import_s, *infer = RUNNERS[fw](hidden, batch, opt_name, data, threads)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"elapsed": elapsed, "acc": acc, "import_s": import_s, "rss_mb": rss_mb}
    if infer:
        out["infer"] = infer[0]
    out["samples"] = len(data[0])
    print(json.dumps(out))


# ---------------------------------------------------------------- driver


def matmul_gflops(repeats: int = 7) -> float:
    """numpy float32 matmul speed (2048^3), median of `repeats`."""
    import numpy as np

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def import_time(module: str, repeats: int = 3) -> float:
    """Median wall time of `python -c "import module"` in a fresh process, minus bare startup."""

    def once(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return time.perf_counter() - t

    base = statistics.median(once("pass") for _ in range(repeats))
    return statistics.median(once(f"import {module}") for _ in range(repeats)) - base


def available(fw: str) -> bool:
    code = f"import {MODULES[fw]}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--frameworks", default="ferrograd,ferrograd-u8,jax,torch,sklearn")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=0, help="threads for every framework (0: default)"
    )
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument(
        "--baseline",
        help="python of a virtual environment holding an earlier ferrograd: adds ferrograd-base",
    )
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.threads)
        return
    env = dict(os.environ)
    if args.threads:
        t = str(args.threads)
        env.update(
            FERROGRAD_NUM_THREADS=t,
            OMP_NUM_THREADS=t,
            OPENBLAS_NUM_THREADS=t,
            XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={t}",
        )
    fws = [f for f in args.frameworks.split(",") if f]
    if args.baseline:
        fws.insert(1, "ferrograd-base")
    missing = [f for f in fws if f != "ferrograd-base" and not available(f)]
    fws = [f for f in fws if f not in missing]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    configs = [c for c in args.configs.split(",") if c]
    roof = [matmul_gflops()]
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeats):
        for config in configs:
            for fw in fws:  # interleaved: every framework once per round
                if config in IMAGES and fw not in CNN_FRAMEWORKS:
                    continue
                base = fw == "ferrograd-base"
                cmd = [
                    args.baseline if base else sys.executable,
                    __file__,
                    "--worker",
                    "ferrograd" if base else fw,
                    config,
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(f"{fw}/{config} failed:\n{out.stderr[-2000:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((config, fw), []).append(r)
                infer = f"  predict {10000 / r['infer']:,.0f}/s" if "infer" in r else ""
                print(
                    f"  round {rep + 1} {config:>6} {fw:>9}: {r['samples'] / r['elapsed']:>9,.0f} samples/s"
                    f"  acc {r['acc']:.4f}  rss {r['rss_mb']:.0f} MB{infer}",
                    flush=True,
                )
        roof.append(matmul_gflops())
    roofline = statistics.median(roof)
    print(f"\nnumpy float32 matmul (2048^3), median over the run: {roofline:.0f} GFLOPS")
    print(f"threads: {args.threads or 'default'}; cpu count {os.cpu_count()}\n")
    header = "| config | framework | samples/s (median) | vs ferrograd | GFLOPS | % roofline | test acc | peak RSS MB |"
    print(header)
    print("|" + "---|" * 8)
    rows = []
    for config in configs:
        hidden, batch, opt_name = CONFIGS[config]
        flops = train_flops_per_sample(hidden)
        if hidden in IMAGES:
            name = f"{'ResNet' if hidden == 'resnet' else 'CNN'} b{batch} {opt_name}"
        else:
            name = f"784-{'-'.join(map(str, hidden))}-10 b{batch} {opt_name}"
        speeds = {
            fw: statistics.median(r["samples"] / r["elapsed"] for r in results[(config, fw)])
            for fw in fws
            if (config, fw) in results
        }
        ours = speeds.get("ferrograd")
        for fw, sps in speeds.items():
            rs = results[(config, fw)]
            acc = statistics.median(r["acc"] for r in rs)
            rss = statistics.median(r["rss_mb"] for r in rs)
            gf = sps * flops / 1e9
            ratio = (
                f"{ours / sps:.2f}x" if ours and fw not in ("ferrograd", "ferrograd-u8") else "-"
            )
            print(
                f"| {name} | {fw} | {sps:,.0f} | {ratio} | {gf:.0f} | {100 * gf / roofline:.0f}% | "
                f"{acc:.4f} | {rss:.0f} |"
            )
            rows.append(
                {
                    "config": config,
                    "framework": fw,
                    "samples_per_s": sps,
                    "gflops": gf,
                    "acc": acc,
                    "rss_mb": rss,
                    "runs": rs,
                }
            )
    for config in (c for c in configs if c in IMAGES):
        title = "ResNet" if config == "resnet" else "CNN"
        print(f"\n{title} inference: predict on 10,000 images, batch {INFER_BATCH} (median):")
        print("| framework | images/s | vs ferrograd | GFLOPS | % roofline |")
        print("|---|---|---|---|---|")
        rates = {
            fw: statistics.median(10000 / r["infer"] for r in results[(config, fw)])
            for fw in fws
            if (config, fw) in results
        }
        ours = rates.get("ferrograd")
        for fw, rate in rates.items():
            gf = rate * infer_flops_per_sample(CONFIGS[config][0]) / 1e9
            ratio = (
                f"{ours / rate:.2f}x" if ours and fw not in ("ferrograd", "ferrograd-u8") else "-"
            )
            print(f"| {fw} | {rate:,.0f} | {ratio} | {gf:.0f} | {100 * gf / roofline:.0f}% |")
    print("\nimport time (fresh process, median of 3, minus bare interpreter start):")
    for mod in dict.fromkeys(MODULES[fw] for fw in fws if fw in MODULES):
        print(f"  import {mod:>9}: {import_time(mod):.3f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"roofline_gflops": roofline, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()

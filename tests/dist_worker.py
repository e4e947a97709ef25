"""One rank of the data-parallel tests (launched by tests/test_distributed.py
with mpiexec): ``python dist_worker.py SCENARIO OUTDIR``. Each rank saves
what it computed to ``OUTDIR/SCENARIO-rank{r}.npz``; the test compares it
with single-process training."""

from __future__ import annotations

import os
import sys

import numpy as np

import ferrograd as fg
from ferrograd import distributed as dist


def toy(
    n: int, features: int = 6, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic classification problem (the test builds the same)."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, features))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.3).astype(np.int64)
    return x, y % classes


def mlp(dtype: str, seed: int = 3, hidden: int = 16) -> fg.Sequential:
    L = fg.layers
    return fg.Sequential([L.Dense(6, hidden), L.Tanh(), L.Dense(hidden, 3)], seed=seed, dtype=dtype)


def cnn(dtype: str, seed: int = 4) -> fg.Sequential:
    L = fg.layers
    return fg.Sequential(
        [
            L.Conv2D(1, 4, 3, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(4 * 4 * 4, 3),
        ],
        seed=seed,
        dtype=dtype,
    )


def mnist_mlp(seed: int = 5) -> fg.Sequential:
    L = fg.layers
    return fg.Sequential(
        [L.Flatten(), L.Rescaling(1 / 255), L.Dense(784, 32), L.ReLU(), L.Dense(32, 10)],
        seed=seed,
    )


class Record(fg.callbacks.Callback):
    """A user callback: runs on every rank; records the epoch logs."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []
        self.losses: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epochs.append(epoch)
        self.losses.append((logs or {})["loss"])


def flat(model: fg.Sequential) -> np.ndarray:
    return np.concatenate([v.ravel().astype(np.float64) for v in model.state_dict().values()])


def equal(out: dict[str, np.ndarray], tmp: str) -> None:
    """fit(distributed=True) runs the test compares with one process."""
    x, y = toy(41)
    xv, yv = toy(17, seed=1)
    for dtype in ("float64", "float32"):
        m = mlp(dtype)
        rec = Record()
        csv = os.path.join(tmp, f"log-{dtype}.csv")
        h = m.fit(x, y, "cross_entropy", "adam", epochs=3, batch_size=8, verbose=0,
                  validation_data=(xv, yv), distributed=True,
                  callbacks=[rec, fg.callbacks.CSVLogger(csv)])  # fmt: skip
        out[f"mlp_{dtype}"] = flat(m)
        out[f"mlp_{dtype}_loss"] = np.array(h["loss"])
        out[f"mlp_{dtype}_val_loss"] = np.array(h["val_loss"])
        out[f"mlp_{dtype}_val_accuracy"] = np.array(h["val_accuracy"])
        out[f"mlp_{dtype}_record"] = np.array(rec.losses)
        out[f"mlp_{dtype}_eval"] = np.array(
            list(m.evaluate(xv, yv, "cross_entropy", batch_size=4, distributed=True).values())
        )
        out[f"mlp_{dtype}_predict"] = m.predict(xv, batch_size=4, distributed=True)
        m.save(os.path.join(tmp, f"mlp-{dtype}.safetensors"))
        # Complete and loadable on every rank when save returns.
        back = fg.load(os.path.join(tmp, f"mlp-{dtype}.safetensors"))
        out[f"mlp_{dtype}_loaded"] = flat(back)
    # Weighted: class weights in the loss (a per-batch denominator), sample
    # weights, clipping and a per-step schedule.
    m = mlp("float64")
    opt = fg.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    sched = fg.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    loss = fg.losses.CrossEntropy(weight=[0.5, 2.0, 1.0])
    sw = np.linspace(0.5, 1.5, len(x))
    m.fit(x, y, loss, opt, epochs=2, batch_size=7, verbose=0, sample_weight=sw,
          clip_grad_norm=0.5, scheduler=sched, scheduler_interval="step",
          distributed=True)  # fmt: skip
    out["weighted"] = flat(m)
    # A small CNN, float64.
    xi = np.random.default_rng(2).normal(size=(22, 1, 8, 8))
    yi = (xi[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64) + (
        xi[:, 0, 4:, :4].mean(axis=(1, 2)) > 0
    )
    m = cnn("float64")
    m.fit(xi, yi, "cross_entropy", "adam", epochs=2, batch_size=5, verbose=0, distributed=True)
    out["cnn"] = flat(m)
    # BatchNorm: local batch statistics, but the same weights and buffers
    # on every rank (the test compares every output across ranks).
    L = fg.layers
    m = fg.Sequential([L.Dense(6, 8), L.BatchNorm1D(8), L.ReLU(), L.Dense(8, 3)], seed=6)
    m.fit(
        x[:40],
        y[:40],
        "cross_entropy",
        "adam",
        epochs=2,
        batch_size=10,
        verbose=0,
        distributed=True,
    )
    out["batchnorm"] = flat(m)
    # Real MNIST, a subset, float32.
    (xm, ym), _ = fg.datasets.load_mnist(root=os.environ["FERROGRAD_DATA"], download=False)
    m = mnist_mlp()
    h = m.fit(xm[:600], ym[:600], "cross_entropy", "adam", epochs=2, batch_size=64,
              verbose=0, distributed=True)  # fmt: skip
    out["mnist"] = flat(m)
    out["mnist_loss"] = np.array(h["loss"])
    # Two runs in one job give the same bits (the reduction order is fixed).
    m = mlp("float32")
    m.fit(x, y, "cross_entropy", "adam", epochs=3, batch_size=8, verbose=0,
          validation_data=(xv, yv), distributed=True)  # fmt: skip
    out["mlp_float32_again"] = flat(m)
    # The step API: each rank the mean gradient of its half of a batch.
    m = mlp("float64")
    dist.broadcast_parameters(m)
    opt = fg.optim.SGD(m.parameters(), lr=0.1)
    lossf = fg.losses.CrossEntropy()
    r, n = dist.rank(), dist.size()
    for step in range(3):
        xb, yb = x[step * 12 : (step + 1) * 12], y[step * 12 : (step + 1) * 12]
        part = slice(r * 12 // n, (r + 1) * 12 // n)
        opt.zero_grad()
        logits = m.forward(xb[part], training=True)
        lossf(logits, yb[part])
        m.backward(lossf.backward())
        dist.allreduce_gradients(m)
        opt.step()
    out["step_api"] = flat(m)


def shard(out: dict[str, np.ndarray], tmp: str) -> None:
    """Each rank its own part, of different sizes."""
    dist.init()
    r = dist.rank()
    x, y = toy(30 + 7 * r, seed=10 + r)
    xv, yv = toy(5 + 3 * r, seed=20 + r)
    m = mlp("float64")
    h = m.fit(x, y, "cross_entropy", "adam", epochs=3, batch_size=4, verbose=0,
              validation_data=(xv, yv), distributed="shard")  # fmt: skip
    out["params"] = flat(m)
    out["steps"] = np.array(h.params["steps"])
    out["val_loss"] = np.array(h["val_loss"])
    out["val_accuracy"] = np.array(h["val_accuracy"])
    out["loss"] = np.array(h["loss"])


def resume_save(out: dict[str, np.ndarray], tmp: str) -> None:
    """Two epochs on this job's ranks, saved with the optimizer."""
    x, y = toy(41)
    m = mlp("float64")
    opt = fg.optim.Adam(m.parameters(), lr=0.01)
    m.fit(x, y, "cross_entropy", opt, epochs=2, batch_size=8, verbose=0, distributed=True)
    m.save(os.path.join(tmp, "ckpt.safetensors"), optimizer=opt)
    out["params"] = flat(m)


def resume_load(out: dict[str, np.ndarray], tmp: str) -> None:
    """Resumes the checkpoint on this job's ranks for two more epochs."""
    x, y = toy(41)
    m, opt = fg.load(os.path.join(tmp, "ckpt.safetensors"), with_optimizer=True)
    m.fit(x, y, "cross_entropy", opt, epochs=4, initial_epoch=2, batch_size=8,
          verbose=0, distributed=True)  # fmt: skip
    out["params"] = flat(m)


def mismatch_settings(out: dict[str, np.ndarray], tmp: str) -> None:
    dist.init()
    x, y = toy(20)
    m = mlp("float64")
    bs, epochs = (8, 2) if dist.rank() == 0 else (4, 3)
    m.fit(x, y, "cross_entropy", "adam", epochs=epochs, batch_size=bs, verbose=0,
          distributed=True)  # fmt: skip


def mismatch_shapes(out: dict[str, np.ndarray], tmp: str) -> None:
    dist.init()
    x, y = toy(20)
    m = mlp("float64", hidden=16 if dist.rank() == 0 else 12)
    m.fit(x, y, "cross_entropy", "adam", epochs=1, batch_size=8, verbose=0, distributed=True)


def raises(out: dict[str, np.ndarray], tmp: str) -> None:
    """Rank 1's callback fails after the first epoch; rank 0 goes on into
    the next all-reduce."""

    class Fail(fg.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if dist.rank() == 1:
                raise RuntimeError("callback failed on purpose")

    x, y = toy(2000)
    m = mlp("float64")
    m.fit(x, y, "cross_entropy", "adam", epochs=1000, batch_size=8, verbose=0,
          callbacks=[Fail()], distributed=True)  # fmt: skip


def killed(out: dict[str, np.ndarray], tmp: str) -> None:
    """Rank 1 dies by SIGKILL as its first epoch starts."""

    class Die(fg.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if dist.rank() == 1:
                os.kill(os.getpid(), 9)

    x, y = toy(2000)
    m = mlp("float64")
    m.fit(x, y, "cross_entropy", "adam", epochs=1000, batch_size=8, verbose=0,
          callbacks=[Die()], distributed=True)  # fmt: skip


SCENARIOS = {f.__name__: f for f in (equal, shard, resume_save, resume_load, mismatch_settings,
                                     mismatch_shapes, raises, killed)}  # fmt: skip


def main() -> None:
    name, tmp = sys.argv[1], sys.argv[2]
    out: dict[str, np.ndarray] = {}
    SCENARIOS[name](out, tmp)
    np.savez(os.path.join(tmp, f"{name}-rank{dist.rank()}.npz"), **out)


if __name__ == "__main__":
    main()

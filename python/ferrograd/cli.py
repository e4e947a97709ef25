"""The ``ferrograd`` command line.

``ferrograd mnist`` trains an MLP (or, with ``--model cnn``, a small CNN)
on MNIST with a line per epoch, prints the test accuracy and saves the
weights (a ``state_dict`` in an ``.npz`` file, loadable with
``model.load_state_dict(dict(np.load(path)))``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 512,256, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be >= 1, got {text!r}")
    return sizes


def _positive(kind: type):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not v > 0 or (isinstance(v, float) and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return v

    return parse


# Per-model defaults: epochs, batch size, dropout. The CNN's were chosen by
# measurement (README, "CNN on MNIST"): 10 epochs of batch 64 with dropout
# 0.3 before the output layer reach 99.1% or more in about five minutes.
DEFAULTS = {"mlp": (12, 128, 0.2), "cnn": (10, 64, 0.3)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="ferrograd", description="ferrograd command line")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser(
        "mnist",
        help="train an MLP or a CNN on MNIST",
        description="Train an MLP (or a CNN) on MNIST, print the test accuracy and save the weights.",
    )
    m.add_argument(
        "--model",
        choices=sorted(DEFAULTS),
        default="mlp",
        help="mlp: Dense layers (--hidden); cnn: conv5x5(32)-pool-conv5x5(64)-pool-dense 256 "
        "(default mlp)",
    )
    m.add_argument(
        "--epochs", type=_positive(int), default=None, help="epochs (default: mlp 12, cnn 10)"
    )
    m.add_argument(
        "--batch-size",
        type=_positive(int),
        default=None,
        help="minibatch size (default: mlp 128, cnn 64)",
    )
    m.add_argument(
        "--hidden",
        type=_hidden,
        default=[512, 256],
        help="hidden layer sizes of the MLP (default 512,256)",
    )
    m.add_argument(
        "--lr",
        type=_positive(float),
        default=1e-3,
        help="Adam learning rate; cosine-decayed (default 1e-3)",
    )
    m.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout after each hidden Dense layer (default: mlp 0.2, cnn 0.3)",
    )
    m.add_argument(
        "--data",
        default=None,
        help="folder containing mnist/ (default: $FERROGRAD_DATA, else ~/.cache/ferrograd; downloads if missing)",
    )
    m.add_argument(
        "--out",
        default=None,
        help="where to save the weights (default mnist_mlp.npz or mnist_cnn.npz)",
    )
    m.add_argument(
        "--threads", type=_positive(int), default=None, help="worker threads (default: all cores)"
    )
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    m.add_argument("--no-download", action="store_true", help="fail instead of downloading MNIST")
    m.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over MPI: launch as `mpiexec -n 2 ferrograd mnist --distributed` "
        "(needs ferrograd[mpi]; --batch-size is the global batch; rank 0 prints and saves)",
    )
    return p


def run_mnist(args: argparse.Namespace) -> float:
    """Trains and evaluates; returns the test accuracy."""
    import ferrograd as fg
    from ferrograd import layers as L

    epochs, batch_size, dropout = DEFAULTS[args.model]
    epochs = args.epochs or epochs
    batch_size = args.batch_size or batch_size
    dropout = dropout if args.dropout is None else args.dropout
    out = args.out or f"mnist_{args.model}.npz"
    if args.threads:
        fg.set_num_threads(args.threads)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {dropout}")
    writer = True
    if args.distributed:
        from ferrograd import distributed as dist

        dist.init()
        writer = dist.rank() == 0

    def say(*parts: object, **kw: Any) -> None:
        if writer:
            print(*parts, **kw)

    (x_train, y_train), (x_test, y_test) = fg.datasets.load_mnist(
        root=args.data, download=not args.no_download
    )
    stack: list[L.Layer]
    if args.model == "cnn":
        # (N, 28, 28) uint8 images as (N, 1, 28, 28): a view, no copy.
        x_train, x_test = x_train[:, None], x_test[:, None]
        stack = [
            L.Rescaling(1 / 255),
            L.Conv2D(1, 32, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Conv2D(32, 64, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(64 * 7 * 7, 256),
            L.ReLU(),
        ]
        if dropout > 0:
            stack.append(L.Dropout(dropout))
        stack.append(L.Dense(256, 10, init="xavier"))
    else:
        stack = [L.Flatten(), L.Rescaling(1 / 255)]
        width = 28 * 28
        for h in args.hidden:
            stack += [L.Dense(width, h), L.ReLU()]
            if dropout > 0:
                stack.append(L.Dropout(dropout))
            width = h
        stack.append(L.Dense(width, 10, init="xavier"))
    model = fg.Sequential(stack, seed=args.seed)
    if writer:
        model.summary(input_shape=x_train.shape[1:])
    ranks = f", ranks: {dist.size()}" if args.distributed else ""
    say(f"threads: {fg.get_num_threads()}{ranks}, train {len(x_train):,}, test {len(x_test):,}")
    opt = fg.optim.Adam(model.parameters(), lr=args.lr)
    # Cosine decay from lr to 0 over the run, stepped once per epoch.
    sched = fg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    start = time.perf_counter()

    def report(epoch: int, logs: dict[str, float]) -> None:
        say(
            f"Epoch {epoch + 1}/{epochs} - lr {logs['learning_rate']:.2e} - "
            f"loss {logs['loss']:.4f} - accuracy {logs['accuracy']:.4f} - "
            f"test_loss {logs['val_loss']:.4f} - test_accuracy {logs['val_accuracy']:.4f} - "
            f"{time.perf_counter() - start:.1f}s",
            flush=True,
        )

    model.fit(
        x_train,
        y_train,
        "cross_entropy",
        opt,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x_test, y_test),
        verbose=0,
        scheduler=sched,
        callbacks=[fg.callbacks.LambdaCallback(on_epoch_end=report)],
        distributed=args.distributed,
    )
    acc = model.evaluate(x_test, y_test, "cross_entropy", distributed=args.distributed)["accuracy"]
    elapsed = time.perf_counter() - start
    say(
        f"test accuracy: {acc:.4f} ({elapsed:.1f}s, {epochs * len(x_train) / elapsed:,.0f} samples/s)"
    )
    if writer:
        np.savez(out, **dict(model.state_dict()))  # type: ignore[arg-type]
        print(f"saved weights to {out}")
    return acc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ferrograd`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "mnist":
            run_mnist(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as exc:
        print(f"ferrograd: error: {exc}", file=sys.stderr)
        _end_job()
        return 1
    return 0


def _end_job() -> None:
    """In a data-parallel job, ends every rank (the others would wait for
    this one forever)."""
    from ferrograd import _parallel

    if _parallel.comm is not None and _parallel.comm.Get_size() > 1:
        sys.stderr.flush()
        time.sleep(0.5)
        _parallel.comm.Abort(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

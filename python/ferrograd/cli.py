"""The ``ferrograd`` command line.

``ferrograd mnist`` trains an MLP on MNIST with a progress display per
epoch, prints the test accuracy and saves the weights (a ``state_dict`` in
an ``.npz`` file, loadable with ``model.load_state_dict(dict(np.load(path)))``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="ferrograd", description="ferrograd command line")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser(
        "mnist",
        help="train an MLP on MNIST",
        description="Train an MLP on MNIST, print the test accuracy and save the weights.",
    )
    m.add_argument("--epochs", type=_positive(int), default=12, help="epochs (default 12)")
    m.add_argument(
        "--batch-size", type=_positive(int), default=128, help="minibatch size (default 128)"
    )
    m.add_argument(
        "--hidden", type=_hidden, default=[512, 256], help="hidden layer sizes (default 512,256)"
    )
    m.add_argument(
        "--lr",
        type=_positive(float),
        default=1e-3,
        help="Adam learning rate; cosine-decayed (default 1e-3)",
    )
    m.add_argument(
        "--dropout", type=float, default=0.2, help="dropout after each hidden layer (default 0.2)"
    )
    m.add_argument(
        "--data",
        default=None,
        help="folder containing mnist/ (default: $FERROGRAD_DATA, else ~/.cache/ferrograd; downloads if missing)",
    )
    m.add_argument(
        "--out", default="mnist_mlp.npz", help="where to save the weights (default mnist_mlp.npz)"
    )
    m.add_argument(
        "--threads", type=_positive(int), default=None, help="worker threads (default: all cores)"
    )
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    m.add_argument("--no-download", action="store_true", help="fail instead of downloading MNIST")
    return p


def run_mnist(args: argparse.Namespace) -> float:
    """Trains and evaluates; returns the test accuracy."""
    import ferrograd as fg
    from ferrograd import layers as L

    if args.threads:
        fg.set_num_threads(args.threads)
    if not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    (x_train, y_train), (x_test, y_test) = fg.datasets.load_mnist(
        root=args.data, download=not args.no_download
    )
    stack: list[L.Layer] = [L.Flatten(), L.Rescaling(1 / 255)]
    width = 28 * 28
    for h in args.hidden:
        stack += [L.Dense(width, h), L.ReLU()]
        if args.dropout > 0:
            stack.append(L.Dropout(args.dropout))
        width = h
    stack.append(L.Dense(width, 10, init="xavier"))
    model = fg.Sequential(stack, seed=args.seed)
    model.summary(input_shape=(28, 28))
    print(f"threads: {fg.get_num_threads()}, train {len(x_train):,}, test {len(x_test):,}")
    opt = fg.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        # Cosine decay from lr to ~0 over the run.
        opt.lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        hist = model.fit(
            x_train,
            y_train,
            "cross_entropy",
            opt,
            epochs=1,
            batch_size=args.batch_size,
            validation_data=(x_test, y_test),
            verbose=0,
        )
        h = {k: v[-1] for k, v in hist.history.items()}
        print(
            f"Epoch {epoch + 1}/{args.epochs} - lr {opt.lr:.2e} - loss {h['loss']:.4f} - "
            f"accuracy {h['accuracy']:.4f} - test_loss {h['val_loss']:.4f} - "
            f"test_accuracy {h['val_accuracy']:.4f} - {time.perf_counter() - start:.1f}s",
            flush=True,
        )
    acc = model.evaluate(x_test, y_test, "cross_entropy")["accuracy"]
    elapsed = time.perf_counter() - start
    print(
        f"test accuracy: {acc:.4f} ({elapsed:.1f}s, {args.epochs * len(x_train) / elapsed:,.0f} samples/s)"
    )
    np.savez(args.out, **dict(model.state_dict()))  # type: ignore[arg-type]
    print(f"saved weights to {args.out}")
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
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

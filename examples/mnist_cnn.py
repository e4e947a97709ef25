"""Train a small CNN on MNIST: convolutions, pooling, BatchNorm, OneCycleLR.

conv5x5(32, same)-ReLU-maxpool2 / conv5x5(64, same)-BatchNorm-ReLU-maxpool2 /
dense 256-ReLU-dropout / dense 10, on ``(N, 1, 28, 28)`` images, Adam with a
one-cycle schedule stepped every batch (momentum cycling included)::

    python examples/mnist_cnn.py            # 2 epochs on 30,000 images: about 98.9%, ~100 s on 2 cores
    python examples/mnist_cnn.py --quick    # 4,000 images, about 15 s

For the full 99.4% run use ``ferrograd mnist --model cnn``. Plots go to
``examples/out/mnist_cnn_history.png``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import _common
import ferrograd as fg
from ferrograd import layers as L


def build(seed: int) -> fg.Sequential:
    """The example's CNN."""
    return fg.Sequential(
        [
            L.Rescaling(1 / 255),
            L.Conv2D(1, 32, 5, padding="same"),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Conv2D(32, 64, 5, padding="same", bias=False),
            L.BatchNorm2D(64),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(64 * 7 * 7, 256),
            L.ReLU(),
            L.Dropout(0.3),
            L.Dense(256, 10, init="xavier"),
        ],
        seed=seed,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Runs the example; returns its numbers."""
    args = _common.parser(__doc__ or "").parse_args(argv)
    (x_train, y_train), (x_test, y_test) = _common.mnist(args.data)
    n, epochs, batch = (4_000, 1, 64) if args.quick else (30_000, 2, 64)
    x_train, y_train = x_train[:n, None], y_train[:n]  # (N, 1, 28, 28)
    x_test = x_test[:, None]
    if args.quick:
        x_test, y_test = x_test[:2_000], y_test[:2_000]

    model = build(args.seed)
    model.summary(input_shape=x_train.shape[1:])
    opt = fg.optim.Adam(model.parameters(), lr=1e-3)
    sched = fg.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, epochs=epochs, steps_per_epoch=-(-n // batch)
    )
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        "cross_entropy",
        opt,
        epochs=epochs,
        batch_size=batch,
        validation_data=(x_test, y_test),
        scheduler=sched,
        scheduler_interval="step",
        verbose=0 if args.quick else 1,
    )
    seconds = time.perf_counter() - start
    test = model.evaluate(x_test, y_test, "cross_entropy")
    print(f"trained {epochs} epochs on {n:,} images in {seconds:.1f}s")
    print(f"test accuracy {test['accuracy']:.4f}, test loss {test['loss']:.4f}")
    path = _common.out_dir(args.out) / "mnist_cnn_history.png"
    fg.plot.history(history, path=path)
    print(f"saved {path}")
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "seconds": seconds}


if __name__ == "__main__":
    main()

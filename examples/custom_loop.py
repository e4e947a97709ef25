"""The four steps of backpropagation by hand, PyTorch style.

Forward pass, loss, backward pass, weight update, written out as a loop over
minibatches, with a learning-rate schedule stepped by hand, gradient
clipping, and a look at every parameter's gradient: what ``fit`` does in
Rust, one step at a time. At the end the same schedule in ``fit`` gives
bit for bit the same weights::

    python examples/custom_loop.py          # 2 epochs on 20,000 images, ~15 s
    python examples/custom_loop.py --quick
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

import _common
import ferrograd as fg
from ferrograd import layers as L


def build(seed: int) -> fg.Sequential:
    """A 784-128-64-10 MLP."""
    return fg.Sequential(
        [
            L.Flatten(),
            L.Rescaling(1 / 255),
            L.Dense(784, 128),
            L.ReLU(),
            L.Dense(128, 64),
            L.ReLU(),
            L.Dense(64, 10, init="xavier"),
        ],
        seed=seed,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Runs the example; returns its numbers."""
    args = _common.parser(__doc__ or "").parse_args(argv)
    (x_train, y_train), (x_test, y_test) = _common.mnist(args.data)
    n, epochs, batch = (4_000, 1, 64) if args.quick else (20_000, 2, 64)
    x_train, y_train = x_train[:n], y_train[:n]
    steps = epochs * -(-n // batch)

    model = build(args.seed)
    opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = fg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = fg.losses.CrossEntropy(label_smoothing=0.05)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    norms = []
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            out = model.forward(x_train[idx], training=True)  # 1. forward
            total += loss_fn(out, y_train[idx]) * len(idx)  # 2. loss
            model.zero_grad()
            model.backward(loss_fn.backward())  # 3. backward: dloss/doutput in
            norms.append(fg.clip_grad_norm_(model.parameters(), max_norm=5.0))
            opt.step()  # 4. update
            sched.step()
        acc = model.evaluate(x_test, y_test, "cross_entropy")["accuracy"]
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, test accuracy {acc:.4f}, "
            f"lr {sched.get_last_lr()[0]:.2e}, gradient norm {np.median(norms):.3f} (median)"
        )
    seconds = time.perf_counter() - start

    print("per-parameter gradient norms after the last step:")
    for name, p in model.named_parameters():
        print(f"  {name:10s} {str(p.value.shape):12s} |grad| = {np.linalg.norm(p.grad):.3e}")

    # The same run with fit: the schedule and clipping are applied inside the
    # Rust epoch. fit shuffles with its own stream, so feed it our order by
    # passing the data pre-permuted and shuffle=False, one epoch at a time.
    twin = build(args.seed)
    opt2 = fg.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    sched2 = fg.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=steps)
    rng = np.random.default_rng(args.seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        twin.fit(
            x_train[order],
            y_train[order],
            loss_fn,
            opt2,
            epochs=1,
            batch_size=batch,
            shuffle=False,
            scheduler=sched2,
            scheduler_interval="step",
            clip_grad_norm=5.0,
            verbose=0,
        )
    same = all(
        np.array_equal(a, b)
        for (_, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items())
    )
    print(f"fit with the same schedule and clipping gives identical weights: {same}")
    test = model.evaluate(x_test, y_test, "cross_entropy")
    return {"test_accuracy": test["accuracy"], "identical_to_fit": float(same), "seconds": seconds}


if __name__ == "__main__":
    main()

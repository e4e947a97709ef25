"""ConvTranspose2D forward + backward against torch's ConvTranspose2d on
the same shapes, threads and data, in one run: batch 64, 32 -> 16 channels,
14x14 -> 28x28 (a U-Net decoder's upsampling), k=2 s=2 and k=3 s=2 p=1
op=1, float32. Each side runs one training-mode forward pass and one
backward pass per step, through its Python API; the median of the step
times is printed
(and the fastest step, the better estimate on a loaded machine). Through ferrograd's Python API the layer is the model's
first, whose input gradient nobody needs, so it computes the weight and
bias gradients only; torch is timed that way (``x`` not requiring grad) and
with the input gradient too, which the ``forward_backward`` numbers of the
criterion bench include for ferrograd.

    FERROGRAD_NUM_THREADS=2 python benches/bench_conv_transpose.py [threads]

The Rust-only numbers (no Python, no copies in and out) are the
``conv_transpose`` group of ``cargo bench -p ferrograd-core -- conv_transpose``.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

import ferrograd as fg
from ferrograd import layers as L

N, CIN, COUT, HW = 64, 32, 16, 14
CASES = {
    "k2 s2": dict(kernel_size=2, stride=2),
    "k3 s2 p1 op1": dict(kernel_size=3, stride=2, padding=1, output_padding=1),
}
STEPS = 30


def times_ms(step) -> tuple[float, float, float]:
    """The fastest and the median step, and the least CPU time a step took
    (on a machine shared with other work, the fastest step is the better
    estimate; with one thread the CPU time does not count waiting)."""
    for _ in range(3):
        step()
    times, cpu = [], []
    for _ in range(STEPS):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 1e3 * min(times), 1e3 * statistics.median(times), 1e3 * min(cpu)


def compare(name: str, kw: dict, x: np.ndarray, dy: np.ndarray) -> None:
    ours = fg.Sequential([L.ConvTranspose2D(CIN, COUT, **kw)], seed=0)
    theirs = torch.nn.ConvTranspose2d(CIN, COUT, **kw)
    theirs.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    xt = torch.from_numpy(x)
    xg = torch.from_numpy(x.copy()).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def ours_step() -> None:
        ours.zero_grad()
        ours.forward(x, training=True)
        ours.backward(dy)

    def theirs_step() -> None:
        theirs.zero_grad()
        theirs(xt).backward(dyt)

    def theirs_step_dx() -> None:
        theirs.zero_grad()
        xg.grad = None
        theirs(xg).backward(dyt)

    # Same results first: the outputs and the weight gradients.
    ours_step()
    theirs_step()
    with torch.no_grad():
        np.testing.assert_allclose(ours.predict(x), theirs(xt).numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(
        ours.parameters()[0].grad, theirs.weight.grad.numpy(), rtol=1e-3, atol=1e-2
    )
    a, b, c = times_ms(ours_step), times_ms(theirs_step), times_ms(theirs_step_dx)
    print(
        f"{name:>13}: ferrograd {a[0]:6.2f} ms (median {a[1]:6.2f}, CPU {a[2]:6.2f})   "
        f"torch {b[0]:6.2f} ms (median {b[1]:6.2f}, CPU {b[2]:6.2f})   ratio {a[0] / b[0]:.2f}   "
        f"torch with dx {c[0]:6.2f} ms (CPU {c[2]:6.2f})"
    )


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else fg.get_num_threads()
    fg.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, CIN, HW, HW)).astype(np.float32)
    dy = rng.standard_normal((N, COUT, 2 * HW, 2 * HW)).astype(np.float32)
    print(f"batch {N}, {CIN}->{COUT} channels, {HW}x{HW} -> {2 * HW}x{2 * HW}, {threads} thread(s)")
    for name, kw in CASES.items():
        compare(name, kw, x, dy)


if __name__ == "__main__":
    main()

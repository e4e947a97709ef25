"""Training progress display: a live bar on a terminal, one line per epoch
when output goes to a file or pipe."""

from __future__ import annotations

import sys
import time
from typing import IO


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in metrics.items())


def _eta(elapsed: float, step: int, steps: int) -> str:
    """The time left, extrapolated from the steps so far (``m:ss``, like tqdm)."""
    if step <= 0:
        return "?"
    left = elapsed / step * max(steps - step, 0)
    minutes, seconds = divmod(int(round(left)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class EpochProgress:
    """Shows one epoch's progress. ``verbose``: 0 silent, 1 live bar on a
    terminal (a line per epoch otherwise), 2 a line per epoch."""

    def __init__(self, epoch: int, epochs: int, verbose: int, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        isatty = getattr(self.stream, "isatty", None)
        self.live = verbose == 1 and bool(isatty and isatty())
        self.prefix = f"Epoch {epoch}/{epochs}"
        self.start = time.perf_counter()
        self._last_len = 0

    def update(self, step: int, steps: int, samples: int, loss: float, acc: float | None) -> None:
        """Called by the engine between chunks of steps."""
        if not self.live:
            return
        width = 24
        done = int(width * step / max(steps, 1))
        bar = "=" * done + (">" if done < width else "") + "." * max(width - done - 1, 0)
        elapsed = time.perf_counter() - self.start
        rate = samples / elapsed if elapsed > 0 else 0.0
        text = f"\r{self.prefix} [{bar}] {step}/{steps} - ETA {_eta(elapsed, step, steps)}"
        text += f" - loss: {loss:.4f}"
        if acc is not None:
            text += f" - accuracy: {acc:.4f}"
        text += f" - {rate:,.0f} samples/s"
        pad = max(self._last_len - len(text), 0)
        self._last_len = len(text)
        self.stream.write(text + " " * pad)
        self.stream.flush()

    def finish(self, samples: int, metrics: dict[str, float]) -> None:
        """Prints the epoch's summary line."""
        if self.verbose == 0:
            return
        elapsed = time.perf_counter() - self.start
        rate = samples / elapsed if elapsed > 0 else 0.0
        line = f"{self.prefix} - {elapsed:.1f}s - {rate:,.0f} samples/s - {_fmt_metrics(metrics)}"
        if self.live:
            pad = max(self._last_len - len(line) - 1, 0)
            self.stream.write("\r" + line + " " * pad + "\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def abort(self) -> None:
        """Ends a live line so later output starts on a fresh line."""
        if self.live and self._last_len:
            self.stream.write("\n")
            self.stream.flush()

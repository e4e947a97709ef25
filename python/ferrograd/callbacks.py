"""Callbacks for :meth:`ferrograd.Sequential.fit`, with Keras's names and
conventions.

``fit`` calls, on every callback in order::

    set_model(model); set_params({"epochs", "steps", "verbose"})
    on_train_begin(logs)
    for epoch in range(initial_epoch, epochs):      # 0-based, as Keras
        on_epoch_begin(epoch, logs)
        on_train_batch_end(batch, logs)              # only if overridden (slower)
        on_epoch_end(epoch, logs)                    # logs: loss, accuracy, val_loss, ...
    on_train_end(logs)

During ``fit`` the callback sees ``self.model`` (the model being trained),
``self.model.optimizer`` (its optimizer) and ``self.model.history`` (the
:class:`~ferrograd.History` being filled). Setting
``self.model.stop_training = True`` ends training after the current epoch
(after the current batch, from ``on_train_batch_end``).

Overriding ``on_train_batch_end`` makes the training loop stop after every
batch and wait for Python: expect epochs to run noticeably slower.
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from . import _parallel

if TYPE_CHECKING:
    from .model import BaseModel

__all__ = [
    "Callback",
    "EarlyStopping",
    "ReduceLROnPlateau",
    "LearningRateScheduler",
    "CSVLogger",
    "LambdaCallback",
    "ModelCheckpoint",
]


class Callback:
    """Base class: override the hooks you need."""

    def __init__(self) -> None:
        self.model: BaseModel | None = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: BaseModel) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        """Called once before the first epoch."""

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        """Called once after the last epoch (also after an early stop)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Called before each epoch (``epoch`` is 0-based)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Called after each epoch with its metrics (``loss``, ``accuracy``,
        ``val_loss``, ``val_accuracy``, ... as ``fit`` reports them)."""

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        """Called after each batch with the epoch's running ``loss`` (and
        ``accuracy``). Overriding it makes training wait for Python after
        every batch (slower)."""

    def _check_keys(self, keys: Sequence[str]) -> None:
        """Called by ``fit`` before any training with the keys the epoch
        logs will have; raises ``ValueError`` if the callback needs another
        one (so a typo fails before the model changes)."""

    def _wants_batches(self) -> bool:
        """Whether ``fit`` must call back after every batch."""
        return type(self).on_train_batch_end is not Callback.on_train_batch_end


# ------------------------------------------------------------------ argument checks


def _int_arg(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _float_arg(owner: str, name: str, value: Any) -> float:
    """A finite real number (``TypeError`` for non-numbers, ``ValueError``
    for NaN and infinities)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return out


def _bool_arg(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _str_arg(owner: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be a str, got {type(value).__name__}")
    return value


def _mode_arg(owner: str, mode: Any) -> str:
    mode = _str_arg(owner, "mode", mode)
    if mode not in ("auto", "min", "max"):
        raise ValueError(f'{owner}: mode must be "auto", "min" or "max", got {mode!r}')
    return mode


def _maximize(monitor: str, mode: str) -> bool:
    """Whether larger values of ``monitor`` are better. ``"auto"``: yes for
    accuracies and AUCs (names containing ``"acc"`` or ``"auc"``), no
    otherwise (losses, learning rates)."""
    if mode != "auto":
        return mode == "max"
    name = monitor.lower()
    return "acc" in name or "auc" in name


def _check_monitor(owner: str, monitor: str, keys: Sequence[str]) -> None:
    if monitor not in keys:
        hint = ""
        if monitor.startswith("val_"):
            hint = " (val_* keys need validation_data or validation_split)"
        elif monitor == "learning_rate":
            hint = " (learning_rate needs a scheduler passed to fit)"
        raise ValueError(
            f"{owner}: monitor={monitor!r} is not in the epoch logs; available: "
            f"{', '.join(keys)}{hint}"
        )


def _model_of(cb: Callback) -> BaseModel:
    if cb.model is None:
        raise RuntimeError(f"{type(cb).__name__} is not attached to a model (use it in fit)")
    return cb.model


def _log_learning_rate(model: BaseModel, logs: dict[str, float] | None, lr: float) -> None:
    """Puts the epoch's learning rate into the epoch logs (which ``fit``
    records in the History after the callbacks ran), unless ``fit`` or
    another callback already did."""
    del model
    if logs is not None:
        logs.setdefault("learning_rate", float(lr))


# ------------------------------------------------------------------ EarlyStopping


class EarlyStopping(Callback):
    """Stops training when a monitored metric has stopped improving (Keras's
    ``EarlyStopping``), and restores the best weights.

    Parameters
    ----------
    monitor:
        The epoch log to watch: ``"val_loss"`` (default), ``"loss"``,
        ``"val_accuracy"``, ... It must be one of the keys ``fit`` reports,
        otherwise ``fit`` raises ``ValueError`` before training.
    min_delta:
        The smallest change that counts as an improvement (its absolute
        value is used).
    patience:
        Number of epochs without improvement after which training stops.
    verbose:
        0 silent; 1 prints a line when it stops or restores weights.
    mode:
        ``"min"``, ``"max"`` or ``"auto"`` (maximize accuracies and AUCs,
        i.e. monitors containing ``"acc"`` or ``"auc"``; minimize otherwise).
    baseline:
        A value the monitor must beat: until it does, the patience counter
        is not reset by improvements.
    restore_best_weights:
        Restore the model's whole ``state_dict`` (parameters and buffers
        such as BatchNorm running statistics) from the best epoch at the end
        of training. Unlike Keras this defaults to ``True``, and the weights
        are restored whether or not training stopped early.
    start_from_epoch:
        Epochs before this (0-based) one are ignored: they are neither
        candidates for the best epoch nor counted against the patience.

    After ``fit``, :attr:`stopped_epoch` is the 0-based epoch after which
    training stopped (0 if it did not stop, as in Keras) and
    :attr:`best_epoch` the best one; the model's :class:`~ferrograd.History`
    gets ``stopped_epoch`` (``None`` if training was not stopped by this
    callback) and ``best_epoch`` (the epoch whose weights were restored).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = True,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.monitor = _str_arg(name, "monitor", monitor)
        self.min_delta = abs(_float_arg(name, "min_delta", min_delta))
        self.patience = _int_arg(name, "patience", patience, 0)
        self.verbose = _int_arg(name, "verbose", verbose, 0)
        self.mode = _mode_arg(name, mode)
        self.baseline = None if baseline is None else _float_arg(name, "baseline", baseline)
        self.restore_best_weights = _bool_arg(name, "restore_best_weights", restore_best_weights)
        self.start_from_epoch = _int_arg(name, "start_from_epoch", start_from_epoch, 0)
        self._maximize = _maximize(self.monitor, self.mode)
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best = -math.inf if self._maximize else math.inf
        self.best_weights: dict[str, np.ndarray] | None = None

    def _check_keys(self, keys: Sequence[str]) -> None:
        _check_monitor(type(self).__name__, self.monitor, keys)

    def _is_improvement(self, value: float, reference: float) -> bool:
        if self._maximize:
            return value - self.min_delta > reference
        return value + self.min_delta < reference

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        # Reset, so that one instance can serve several fit calls.
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best = -math.inf if self._maximize else math.inf
        self.best_weights = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        model = _model_of(self)
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(
                f"EarlyStopping: monitor {self.monitor!r} missing from the epoch logs "
                f"(available: {', '.join(logs or {})})",
                stacklevel=2,
            )
            return
        if epoch < self.start_from_epoch:
            return
        current = float(value)
        if self.restore_best_weights and self.best_weights is None:
            # Until something improves, the first watched epoch is the best.
            self.best_weights = model.state_dict()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = model.state_dict()
            # The patience restarts only once the baseline is beaten too.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        model = _model_of(self)
        restored = self.restore_best_weights and self.best_weights is not None
        if restored:
            assert self.best_weights is not None
            model.load_state_dict(self.best_weights)
        hist = model.history
        if hist is not None:
            if self.stopped_epoch > 0:
                hist.stopped_epoch = self.stopped_epoch
            if restored:
                hist.best_epoch = self.best_epoch
        if self.verbose > 0:
            parts = []
            if self.stopped_epoch > 0:
                parts.append(f"Epoch {self.stopped_epoch + 1}: early stopping")
            if restored:
                parts.append(
                    f"restoring model weights from the end of the best epoch: {self.best_epoch + 1}"
                )
            if parts:
                text = "; ".join(parts)
                print(text[0].upper() + text[1:] + ".")


# ------------------------------------------------------------------ ReduceLROnPlateau


class ReduceLROnPlateau(Callback):
    """Reduces the learning rate when a metric has stopped improving (Keras's
    ``ReduceLROnPlateau``).

    Parameters
    ----------
    monitor:
        The epoch log to watch (default ``"val_loss"``); it must be one of
        the keys ``fit`` reports.
    factor:
        ``new_lr = lr * factor``, in (0, 1).
    patience:
        Number of epochs without improvement after which the rate is reduced.
    verbose:
        0 silent; 1 prints a line on every reduction.
    mode:
        ``"min"``, ``"max"`` or ``"auto"`` (as :class:`EarlyStopping`).
    min_delta:
        The smallest change that counts as an improvement (absolute value).
    cooldown:
        Number of epochs to wait after a reduction before counting epochs
        without improvement again.
    min_lr:
        Lower bound on the learning rate.

    It sets ``self.model.optimizer.lr`` and reports the epoch's learning
    rate as ``logs["learning_rate"]`` (and in the :class:`~ferrograd.History`).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.monitor = _str_arg(name, "monitor", monitor)
        self.factor = _float_arg(name, "factor", factor)
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"{name}: factor must be in (0, 1), got {factor!r}")
        self.patience = _int_arg(name, "patience", patience, 0)
        self.verbose = _int_arg(name, "verbose", verbose, 0)
        self.mode = _mode_arg(name, mode)
        self.min_delta = abs(_float_arg(name, "min_delta", min_delta))
        self.cooldown = _int_arg(name, "cooldown", cooldown, 0)
        self.min_lr = _float_arg(name, "min_lr", min_lr)
        if self.min_lr < 0:
            raise ValueError(f"{name}: min_lr must be >= 0, got {min_lr!r}")
        self._maximize = _maximize(self.monitor, self.mode)
        self._reset()

    def _reset(self) -> None:
        self.best = -math.inf if self._maximize else math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _check_keys(self, keys: Sequence[str]) -> None:
        _check_monitor(type(self).__name__, self.monitor, keys)

    def _is_improvement(self, value: float) -> bool:
        if self._maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def in_cooldown(self) -> bool:
        """Whether a reduction happened less than ``cooldown`` epochs ago."""
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        model = _model_of(self)
        opt = model.optimizer
        if opt is None:
            raise RuntimeError("ReduceLROnPlateau: the model has no optimizer (use it in fit)")
        _log_learning_rate(model, logs, opt.lr)
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(
                f"ReduceLROnPlateau: monitor {self.monitor!r} missing from the epoch logs "
                f"(available: {', '.join(logs or {})})",
                stacklevel=2,
            )
            return
        current = float(value)
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = opt.lr
                if old_lr > self.min_lr:
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    opt.lr = new_lr
                    if self.verbose > 0:
                        print(
                            f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                            f"to {new_lr}."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


# ------------------------------------------------------------------ LearningRateScheduler


def _schedule_arity(schedule: Callable[..., Any]) -> int:
    """2 for ``schedule(epoch, lr)``, 1 for ``schedule(epoch)``."""
    try:
        sig = inspect.signature(schedule)
    except (TypeError, ValueError):  # some builtins: assume Keras's current API
        return 2
    for arity, args in ((2, (0, 0.0)), (1, (0,))):
        try:
            sig.bind(*args)
        except TypeError:
            continue
        return arity
    raise TypeError(
        f"LearningRateScheduler: schedule must accept (epoch, lr) or (epoch), "
        f"got a callable with signature {sig}"
    )


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of every epoch (Keras's
    ``LearningRateScheduler``).

    Parameters
    ----------
    schedule:
        ``schedule(epoch, lr) -> new_lr`` with the 0-based epoch and the
        current learning rate, or ``schedule(epoch) -> new_lr``. The result
        must be a finite number >= 0.
    verbose:
        0 silent; 1 prints the rate it sets every epoch.

    The epoch's learning rate is reported as ``logs["learning_rate"]`` (and
    in the :class:`~ferrograd.History`).
    """

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"LearningRateScheduler: schedule must be callable, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.verbose = _int_arg(type(self).__name__, "verbose", verbose, 0)
        self._arity = _schedule_arity(schedule)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        opt = _model_of(self).optimizer
        if opt is None:
            raise RuntimeError("LearningRateScheduler: the model has no optimizer (use it in fit)")
        if self._arity == 2:
            lr = self.schedule(epoch, opt.lr)
        else:
            lr = self.schedule(epoch)
        if isinstance(lr, (bool, np.bool_)) or not isinstance(
            lr, (int, float, np.integer, np.floating)
        ):
            raise TypeError(
                f"LearningRateScheduler: schedule({epoch}) must return a number, "
                f"got {type(lr).__name__}"
            )
        new_lr = float(lr)
        if not (math.isfinite(new_lr) and new_lr >= 0):
            raise ValueError(
                f"LearningRateScheduler: schedule({epoch}) returned {lr!r}; "
                "the learning rate must be a finite number >= 0"
            )
        opt.lr = new_lr
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new_lr}.")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        model = _model_of(self)
        if model.optimizer is not None:
            _log_learning_rate(model, logs, model.optimizer.lr)


# ------------------------------------------------------------------ CSVLogger


class CSVLogger(Callback):
    """Streams the epoch logs to a CSV file (Keras's ``CSVLogger``).

    The first row is a header: ``epoch`` (0-based), then the log keys in
    sorted order (as of the first epoch; a key missing later is written
    ``NA``). Each row is flushed as soon as its epoch ends; the file is
    closed when training ends. In a data-parallel job
    (:mod:`ferrograd.distributed`) only rank 0 writes (the logs are the
    same on every rank).

    Parameters
    ----------
    filename:
        Path of the file (``str`` or ``os.PathLike``).
    separator:
        The one-character field separator.
    append:
        Append to an existing file (continuing a training run), without a
        second header if it already has one; ``False`` overwrites the file.
    """

    def __init__(
        self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(
                f"{name}: filename must be a str or os.PathLike, got {type(filename).__name__}"
            )
        self.filename = os.fspath(filename)
        if not isinstance(self.filename, str):
            raise TypeError(f"{name}: filename must be a text path, got {self.filename!r}")
        self.sep = _str_arg(name, "separator", separator)
        if len(self.sep) != 1 or self.sep in '\r\n"':
            raise ValueError(
                f"{name}: separator must be one character other than a quote or a "
                f"line break, got {separator!r}"
            )
        self.append = _bool_arg(name, "append", append)
        self.keys: list[str] | None = None
        self.append_header = True
        self.csv_file: IO[str] | None = None
        self._writer: Any = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.append_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, encoding="utf-8", newline="") as f:
                self.append_header = not f.readline()
        mode = "a" if self.append else "w"
        target = self.filename if _parallel.is_writer() else os.devnull
        self.csv_file = open(target, mode, encoding="utf-8", newline="")
        self._writer = csv.writer(self.csv_file, delimiter=self.sep, lineterminator="\n")
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.csv_file is None or self.csv_file.closed:
            raise RuntimeError("CSVLogger: the file is not open (on_train_begin was not called)")
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if self.append_header:
                self._writer.writerow(["epoch", *self.keys])
        self._writer.writerow([epoch, *(logs.get(k, "NA") for k in self.keys)])
        self.csv_file.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self._writer = None


# ------------------------------------------------------------------ LambdaCallback


class LambdaCallback(Callback):
    """A callback built from plain functions (Keras's ``LambdaCallback``).

    Each function is optional; ``logs`` is the dict ``fit`` passes.

    Parameters
    ----------
    on_epoch_begin, on_epoch_end:
        ``f(epoch, logs)``, with the 0-based epoch.
    on_train_begin, on_train_end:
        ``f(logs)``.
    on_train_batch_end:
        ``f(batch, logs)``, with the 0-based batch index within the epoch
        and the epoch's running ``loss`` (and ``accuracy``). Only when it is
        given does ``fit`` call back after every batch (which is slower).

    Example::

        LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(
        self,
        on_epoch_begin: Callable[[int, dict[str, float]], Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], Any] | None = None,
        on_train_begin: Callable[[dict[str, float]], Any] | None = None,
        on_train_end: Callable[[dict[str, float]], Any] | None = None,
        on_train_batch_end: Callable[[int, dict[str, float]], Any] | None = None,
    ) -> None:
        super().__init__()
        hooks = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_end": on_train_batch_end,
        }
        for name, fn in hooks.items():
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"LambdaCallback: {name} must be callable or None, got {type(fn).__name__}"
                )
        self._on_epoch_begin = on_epoch_begin
        self._on_epoch_end = on_epoch_end
        self._on_train_begin = on_train_begin
        self._on_train_end = on_train_end
        self._on_train_batch_end = on_train_batch_end

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self._on_train_begin is not None:
            self._on_train_begin(logs if logs is not None else {})

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._on_train_end is not None:
            self._on_train_end(logs if logs is not None else {})

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self._on_epoch_begin is not None:
            self._on_epoch_begin(epoch, logs if logs is not None else {})

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self._on_epoch_end is not None:
            self._on_epoch_end(epoch, logs if logs is not None else {})

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self._on_train_batch_end is not None:
            self._on_train_batch_end(batch, logs if logs is not None else {})

    def _wants_batches(self) -> bool:
        return self._on_train_batch_end is not None


# ------------------------------------------------------------------ ModelCheckpoint


class ModelCheckpoint(Callback):
    """Saves the model after epochs (Keras's ``ModelCheckpoint``).

    Parameters
    ----------
    filepath:
        Where to save; may hold Keras-style fields filled from the epoch
        (1-based, as Keras names files) and the epoch logs, e.g.
        ``"ckpt-{epoch:02d}-{val_loss:.4f}.safetensors"``. A field that is
        not ``epoch`` or one of the epoch logs makes ``fit`` raise
        ``ValueError`` before training.
    monitor:
        The epoch log that decides what is best (with ``save_best_only``).
    verbose:
        0 silent; 1 prints a line per save.
    save_best_only:
        Save only when ``monitor`` improved on the best value so far (the
        first epoch always saves).
    mode:
        ``"min"``, ``"max"`` or ``"auto"`` (as :class:`EarlyStopping`).
    save_weights_only:
        ``True``: :meth:`~ferrograd.Sequential.save_weights` (the
        ``state_dict``, which torch reads); ``False`` (default):
        :meth:`~ferrograd.Sequential.save` with the optimizer and the
        scheduler of the ``fit`` call, so :func:`ferrograd.load` resumes
        training exactly.

    Files are written atomically: a crash while saving leaves the previous
    checkpoint intact. :attr:`best` is the best monitored value so far and
    :attr:`last_path` the latest file written.
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        mode: str = "auto",
        save_weights_only: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"{name}: filepath must be a str or os.PathLike")
        self.filepath = os.fspath(filepath)
        self.monitor = _str_arg(name, "monitor", monitor)
        self.verbose = _int_arg(name, "verbose", verbose, 0)
        self.save_best_only = _bool_arg(name, "save_best_only", save_best_only)
        self.mode = _mode_arg(name, mode)
        self.save_weights_only = _bool_arg(name, "save_weights_only", save_weights_only)
        self._maximize = _maximize(self.monitor, self.mode)
        self.best = -math.inf if self._maximize else math.inf
        self.last_path: str | None = None
        self._fields = self._parse_fields(self.filepath)

    @staticmethod
    def _parse_fields(path: str) -> list[str]:
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(path) if f is not None]
        except ValueError as e:
            raise ValueError(
                f"ModelCheckpoint: filepath {path!r} is not a valid format: {e}"
            ) from None
        out = []
        for f in fields:
            if not f or not f.isidentifier():
                raise ValueError(
                    f"ModelCheckpoint: filepath fields must be names like {{epoch}}, got {{{f}}}"
                )
            out.append(f)
        return out

    def _check_keys(self, keys: Sequence[str]) -> None:
        name = type(self).__name__
        if self.save_best_only:
            _check_monitor(name, self.monitor, keys)
        for f in self._fields:
            if f != "epoch" and f not in keys:
                raise ValueError(
                    f"{name}: filepath field {{{f}}} is not in the epoch logs; available: "
                    f"epoch, {', '.join(keys)}"
                )

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.best = -math.inf if self._maximize else math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        model = _model_of(self)
        logs = logs or {}
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                return
            current = float(value)
            better = current > self.best if self._maximize else current < self.best
            if not better:
                if self.verbose > 0:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            previous, self.best = self.best, current
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_weights_only:
            model.save_weights(path)
        else:
            opt = model.optimizer
            sched = model.scheduler
            if sched is not None and getattr(sched, "optimizer", None) is not opt:
                sched = None
            model.save(path, optimizer=opt, scheduler=sched)
        self.last_path = path
        if self.verbose > 0 and _parallel.is_writer():
            if self.save_best_only:
                print(
                    f"Epoch {epoch + 1}: {self.monitor} improved from {previous:.5f} to "
                    f"{self.best:.5f}, saving model to {path}"
                )
            else:
                print(f"Epoch {epoch + 1}: saving model to {path}")

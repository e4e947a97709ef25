"""Tests for ferrograd.callbacks: EarlyStopping, ReduceLROnPlateau,
LearningRateScheduler, CSVLogger, LambdaCallback, and the callback protocol
of Sequential.fit (hook order, 0-based epochs, stop_training, initial_epoch).

Most tests script the monitored value: a callback placed before the one
under test overwrites ``logs["val_loss"]`` (fit hands every callback the same
logs dict), so each test controls exactly which epoch improves while the
model really trains. Everything runs on tiny synthetic data, in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import callbacks as C
from ferrograd import layers as L

# ------------------------------------------------------------------ helpers


def blobs(n: int = 96, d: int = 4, classes: int = 3, seed: int = 0):
    """A small, mostly separable classification problem: Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0.0, 1.0, size=(n, d))
    return x.astype(np.float32), y


X, Y = blobs()
XV, YV = blobs(48, seed=1)


def make_model(seed: int = 0, bn: bool = False, dropout: bool = False) -> fg.Sequential:
    layers: list[L.Layer] = [L.Dense(4, 8)]
    if bn:
        layers.append(L.BatchNorm1D(8))
    layers.append(L.ReLU())
    if dropout:
        layers.append(L.Dropout(0.3))
    layers.append(L.Dense(8, 3))
    return fg.Sequential(layers, seed=seed)


def train(model, callbacks, epochs, lr=0.05, validation=True, opt=None, **kw):
    opt = opt if opt is not None else fg.optim.SGD(model.parameters(), lr=lr)
    if validation:
        kw.setdefault("validation_data", (XV, YV))
    kw.setdefault("batch_size", 16)
    return model.fit(
        X, Y, "cross_entropy", opt, epochs=epochs, callbacks=callbacks, verbose=0, **kw
    )


class Script(C.Callback):
    """Overwrites ``logs[key]`` with ``values[epoch]`` (put it before the
    callback under test)."""

    def __init__(self, values: Sequence[float], key: str = "val_loss") -> None:
        super().__init__()
        self.values = list(values)
        self.key = key

    def on_epoch_end(self, epoch, logs=None):
        assert logs is not None
        logs[self.key] = self.values[epoch]


class Snapshots(C.Callback):
    """The model's state_dict at the end of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, dict[str, np.ndarray]] = {}

    def on_epoch_end(self, epoch, logs=None):
        assert self.model is not None
        self.states[epoch] = self.model.state_dict()


class LRLog(C.Callback):
    """The optimizer's learning rate at every epoch's start, and
    ``logs["learning_rate"]`` at its end (put it after the callback under test)."""

    def __init__(self) -> None:
        super().__init__()
        self.begin: list[float] = []
        self.logged: list[float | None] = []

    def on_epoch_begin(self, epoch, logs=None):
        assert self.model is not None and self.model.optimizer is not None
        self.begin.append(self.model.optimizer.lr)

    def on_epoch_end(self, epoch, logs=None):
        self.logged.append((logs or {}).get("learning_rate"))


def state_bytes(state) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in state.items()}


def assert_same_state(a, b) -> None:
    assert list(a) == list(b)
    assert state_bytes(a) == state_bytes(b)


def assert_different_state(a, b) -> None:
    assert state_bytes(a) != state_bytes(b)


# ------------------------------------------------------------------ EarlyStopping


@pytest.mark.parametrize("patience, stopped", [(0, 3), (1, 3), (2, 4), (3, 5)])
def test_early_stopping_stops_after_patience_epochs_without_improvement(patience, stopped):
    es = C.EarlyStopping(patience=patience)
    values = [1.0, 0.9, 0.8] + [0.85] * 7  # best at epoch 2, then a plateau
    model = make_model()
    hist = train(model, [Script(values), es], epochs=10)

    assert hist.epoch == list(range(stopped + 1))
    assert model.epochs_trained == stopped + 1
    assert es.stopped_epoch == stopped
    assert es.best_epoch == 2
    assert es.best == 0.8
    assert hist.stopped_epoch == stopped
    assert hist.best_epoch == 2
    assert model.history is hist


def test_early_stopping_on_a_really_rising_validation_loss():
    # Validating on the training inputs with shifted labels: the better the
    # model fits the training labels, the worse the validation loss gets.
    es = C.EarlyStopping(patience=2)
    model = make_model()
    opt = fg.optim.Adam(model.parameters(), lr=0.05)
    hist = train(model, [es], epochs=40, opt=opt, validation_data=(X, (Y + 1) % 3))

    vl = hist["val_loss"]
    assert len(hist.epoch) < 40
    best = int(np.argmin(vl))
    assert hist.best_epoch == es.best_epoch == best
    assert hist.stopped_epoch == es.stopped_epoch == len(vl) - 1 == max(best + 2, 1)
    assert all(v >= vl[best] for v in vl[best + 1 :])
    # the restored weights are the best epoch's: evaluate reproduces its val_loss
    assert model.evaluate(X, (Y + 1) % 3, "cross_entropy")["loss"] == pytest.approx(
        vl[best], rel=1e-6
    )


def test_early_stopping_restores_the_exact_best_state_dict_with_buffers():
    snaps = Snapshots()
    es = C.EarlyStopping(patience=2)
    model = make_model(bn=True, dropout=True)
    hist = train(model, [Script([1.0, 0.7, 0.5, 0.6, 0.9, 0.9]), snaps, es], epochs=6)

    assert hist.epoch == [0, 1, 2, 3, 4]
    assert "1.running_mean" in snaps.states[2]
    assert_different_state(snaps.states[2], snaps.states[4])  # training went on
    assert_same_state(model.state_dict(), snaps.states[2])
    assert hist.best_epoch == 2 and hist.stopped_epoch == 4


def test_early_stopping_restores_also_without_an_early_stop():
    snaps = Snapshots()
    es = C.EarlyStopping(patience=10)
    model = make_model(bn=True)
    hist = train(model, [Script([1.0, 0.5, 0.7, 0.8]), snaps, es], epochs=4)

    assert hist.epoch == [0, 1, 2, 3]
    assert es.stopped_epoch == 0
    assert hist.stopped_epoch is None
    assert hist.best_epoch == es.best_epoch == 1
    assert_different_state(snaps.states[1], snaps.states[3])
    assert_same_state(model.state_dict(), snaps.states[1])


def test_early_stopping_without_restore_keeps_the_last_weights():
    snaps = Snapshots()
    es = C.EarlyStopping(patience=1, restore_best_weights=False)
    model = make_model()
    hist = train(model, [Script([1.0, 0.5, 0.7, 0.8]), snaps, es], epochs=4)

    assert hist.epoch == [0, 1, 2]
    assert es.best_weights is None
    assert es.best_epoch == 1
    assert hist.best_epoch is None  # nothing was restored
    assert hist.stopped_epoch == 2
    assert_different_state(snaps.states[1], snaps.states[2])
    assert_same_state(model.state_dict(), snaps.states[2])


@pytest.mark.parametrize(
    "mode, stopped, best",
    [("max", 3, 1), ("auto", 3, 1), ("min", 2, 0)],
)
def test_early_stopping_mode_on_val_accuracy(mode, stopped, best):
    es = C.EarlyStopping(monitor="val_accuracy", mode=mode, patience=2)
    script = Script([0.5, 0.7, 0.6, 0.65, 0.69, 0.9], key="val_accuracy")
    hist = train(make_model(), [script, es], epochs=6)
    assert hist.epoch[-1] == es.stopped_epoch == stopped
    assert es.best_epoch == best


@pytest.mark.parametrize(
    "monitor, maximize",
    [
        ("val_accuracy", True),
        ("accuracy", True),
        ("loss", False),
        ("val_loss", False),
        ("learning_rate", False),
    ],
)
def test_early_stopping_auto_mode_direction(monitor, maximize):
    es = C.EarlyStopping(monitor=monitor)
    assert es.best == (-math.inf if maximize else math.inf)


@pytest.mark.parametrize(
    "baseline, epochs_run",
    [
        (None, 6),  # the plateau at epoch 3 lasts one epoch < patience
        (0.5, 4),  # never beats the baseline: the patience was never reset
        (0.95, 6),  # beats it from epoch 1 on: as without a baseline
    ],
)
def test_early_stopping_baseline(baseline, epochs_run):
    es = C.EarlyStopping(patience=3, baseline=baseline)
    hist = train(make_model(), [Script([1.0, 0.9, 0.8, 0.85, 0.7, 0.6]), es], epochs=6)
    assert len(hist.epoch) == epochs_run
    assert hist.stopped_epoch == (3 if epochs_run == 4 else None)


def test_early_stopping_start_from_epoch_ignores_earlier_epochs():
    values = [0.1, 0.2, 0.9, 0.8, 0.85, 0.86, 0.87]
    snaps = Snapshots()
    es = C.EarlyStopping(patience=2, start_from_epoch=2)
    model = make_model()
    hist = train(model, [Script(values), snaps, es], epochs=7)
    assert hist.epoch == [0, 1, 2, 3, 4, 5]
    assert hist.best_epoch == 3
    assert_same_state(model.state_dict(), snaps.states[3])

    es0 = C.EarlyStopping(patience=2)
    hist0 = train(make_model(), [Script(values), es0], epochs=7)
    assert hist0.epoch == [0, 1, 2]
    assert hist0.best_epoch == 0


@pytest.mark.parametrize("min_delta, stopped, best", [(0.1, 2, 0), (-0.1, 2, 0), (0.0, None, 4)])
def test_early_stopping_min_delta(min_delta, stopped, best):
    es = C.EarlyStopping(patience=2, min_delta=min_delta)
    hist = train(make_model(), [Script([1.0, 0.95, 0.92, 0.91, 0.9]), es], epochs=5)
    assert hist.stopped_epoch == stopped
    assert hist.best_epoch == best
    assert es.min_delta == abs(min_delta)


def test_early_stopping_can_be_reused_across_fits():
    es = C.EarlyStopping(patience=1)
    model = make_model()
    train(model, [Script([1.0, 2.0, 3.0]), es], epochs=3)
    assert es.stopped_epoch == 1 and es.best == 1.0

    hist = train(model, [Script([5.0, 4.0, 3.0]), es], epochs=3)
    assert hist.epoch == [0, 1, 2]
    assert es.stopped_epoch == 0
    assert es.best == 3.0 and es.best_epoch == 2
    assert hist.stopped_epoch is None and hist.best_epoch == 2


def test_early_stopping_resets_its_patience_counter_for_a_new_fit():
    # with a baseline that is never beaten, improvements do not reset `wait`
    es = C.EarlyStopping(patience=3, baseline=0.0)
    model = make_model()
    train(model, [Script([1.0, 0.9]), es], epochs=2)
    assert es.wait == 2 and es.stopped_epoch == 0
    hist = train(model, [Script([1.0, 1.1, 1.2, 1.3]), es], epochs=4)
    assert hist.stopped_epoch == 2  # not 1, as a counter carried over would give


def test_early_stopping_verbose_prints_one_line(capsys):
    train(
        make_model(),
        [Script([1.0, 0.5, 0.7, 0.8]), C.EarlyStopping(patience=1, verbose=1)],
        epochs=4,
    )
    out = capsys.readouterr().out
    assert out == (
        "Epoch 3: early stopping; restoring model weights from the end of the best epoch: 2.\n"
    )
    train(make_model(), [Script([1.0, 0.5, 0.7]), C.EarlyStopping(patience=5, verbose=1)], epochs=3)
    assert capsys.readouterr().out == "Restoring model weights from the end of the best epoch: 2.\n"
    train(make_model(), [Script([1.0, 0.5, 0.7]), C.EarlyStopping(patience=5)], epochs=3)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ monitor keys


@pytest.mark.parametrize(
    "cb, validation, match",
    [
        (
            C.EarlyStopping(monitor="val_los"),
            True,
            "val_los.*available: loss, accuracy, val_loss, val_accuracy",
        ),
        (C.EarlyStopping(), False, "val_loss.*available: loss, accuracy.*validation_data"),
        (C.ReduceLROnPlateau(monitor="acc"), True, "acc.*available: loss, accuracy, val_loss"),
        (C.ReduceLROnPlateau(monitor="learning_rate"), True, "learning_rate.*scheduler"),
    ],
)
def test_unknown_monitor_fails_before_training(cb, validation, match):
    model = make_model(bn=True)
    opt = fg.optim.Adam(model.parameters(), lr=0.01)
    before = model.state_dict()
    calls = []
    spy = C.LambdaCallback(on_train_begin=lambda logs: calls.append("begin"))
    with pytest.raises(ValueError, match=match):
        train(model, [spy, cb], epochs=2, opt=opt, validation=validation)
    assert calls == []
    assert_same_state(model.state_dict(), before)
    assert opt.steps == 0
    assert opt.lr == 0.01
    assert model.epochs_trained == 0
    assert model.history is None and model.optimizer is None


def test_learning_rate_monitor_is_accepted_when_fit_has_a_scheduler():
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.08)
    lrlog = LRLog()
    rl = C.ReduceLROnPlateau(monitor="val_loss", patience=10)
    es = C.EarlyStopping(monitor="learning_rate", patience=10)
    hist = train(
        model,
        [rl, lrlog, es],
        epochs=3,
        opt=opt,
        scheduler=fg.optim.lr_scheduler.ExponentialLR(opt, 0.5),
    )
    # fit's value (the epoch's rate) is kept, and the History has one per epoch
    assert lrlog.begin == [0.08, 0.04, 0.02]
    assert lrlog.logged == [0.08, 0.04, 0.02]
    assert hist["learning_rate"] == [0.08, 0.04, 0.02]
    assert es.best == 0.02 and hist.best_epoch == 2


# ------------------------------------------------------------------ ReduceLROnPlateau


def test_reduce_lr_on_plateau_reduces_after_patience():
    lrlog = LRLog()
    rl = C.ReduceLROnPlateau(patience=2, factor=0.5)
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    hist = train(model, [Script([1.0, 0.9] + [0.9] * 5), rl, lrlog], epochs=7, opt=opt)

    expected = [0.1, 0.1, 0.1, 0.1, 0.1 * 0.5, 0.1 * 0.5, 0.1 * 0.5 * 0.5]
    assert lrlog.begin == expected
    assert lrlog.logged == expected
    assert hist["learning_rate"] == expected
    assert opt.lr == 0.1 * 0.5 * 0.5
    assert rl.best == 0.9


def test_reduce_lr_on_plateau_min_delta():
    # improvements of 0.05 count with min_delta=0.01, not with min_delta=0.1
    values = [1.0, 0.95, 0.9, 0.85]
    for min_delta, expected_last in [(0.01, 0.1), (0.1, 0.1 * 0.1 * 0.1)]:
        model = make_model()
        opt = fg.optim.SGD(model.parameters(), lr=0.1)
        train(
            model,
            [Script(values), C.ReduceLROnPlateau(patience=1, min_delta=min_delta)],
            epochs=4,
            opt=opt,
        )
        assert opt.lr == pytest.approx(expected_last, rel=1e-12)


def test_reduce_lr_on_plateau_cooldown():
    values = [1.0, 0.9] + [0.9] * 5
    lrlog = LRLog()
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    train(
        model,
        [Script(values), C.ReduceLROnPlateau(patience=1, factor=0.5, cooldown=2), lrlog],
        epochs=7,
        opt=opt,
    )
    h = 0.1 * 0.5
    assert lrlog.begin == [0.1, 0.1, 0.1, h, h, h * 0.5, h * 0.5]
    assert opt.lr == h * 0.5 * 0.5

    lrlog0 = LRLog()
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    train(
        model,
        [Script(values), C.ReduceLROnPlateau(patience=1, factor=0.5), lrlog0],
        epochs=7,
        opt=opt,
    )
    assert lrlog0.begin == [0.1, 0.1, 0.1, h, h * 0.5, h * 0.25, h * 0.125]


def test_reduce_lr_on_plateau_min_lr():
    lrlog = LRLog()
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    rl = C.ReduceLROnPlateau(patience=1, factor=0.1, min_lr=0.002)
    hist = train(model, [Script([1.0] * 6), rl, lrlog], epochs=6, opt=opt)
    assert lrlog.begin == [0.1, 0.1, 0.1 * 0.1, 0.002, 0.002, 0.002]
    assert hist["learning_rate"] == lrlog.begin
    assert opt.lr == 0.002


def test_reduce_lr_on_plateau_can_be_reused_across_fits():
    rl = C.ReduceLROnPlateau(patience=1, factor=0.5)
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    train(model, [Script([0.5, 0.4]), rl], epochs=2, opt=opt)
    assert rl.best == 0.4
    train(model, [Script([1.0, 0.9, 0.8]), rl], epochs=3, opt=opt)
    assert rl.best == 0.8
    assert opt.lr == 0.1  # the best of the first fit was forgotten


def test_reduce_lr_on_plateau_mode_max_and_verbose(capsys):
    lrlog = LRLog()
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    rl = C.ReduceLROnPlateau(monitor="val_accuracy", patience=1, factor=0.5, verbose=1)
    train(model, [Script([0.5, 0.6, 0.55, 0.7], key="val_accuracy"), rl, lrlog], epochs=4, opt=opt)
    assert lrlog.begin == [0.1, 0.1, 0.1, 0.05]
    assert capsys.readouterr().out == "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.05.\n"


# ------------------------------------------------------------------ LearningRateScheduler


def test_learning_rate_scheduler_two_argument_schedule():
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr * 0.5 if epoch >= 2 else lr

    lrlog = LRLog()
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    hist = train(model, [C.LearningRateScheduler(schedule), lrlog], epochs=4, opt=opt)
    assert seen == [(0, 0.1), (1, 0.1), (2, 0.1), (3, 0.05)]
    assert lrlog.begin == [0.1, 0.1, 0.05, 0.025]
    assert hist["learning_rate"] == [0.1, 0.1, 0.05, 0.025]
    assert len(hist["learning_rate"]) == len(hist["loss"]) == 4


def test_learning_rate_scheduler_one_argument_schedule_and_initial_epoch():
    seen = []

    def schedule(epoch):
        seen.append(epoch)
        return 0.1 / (epoch + 1)

    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.5)
    hist = train(model, [C.LearningRateScheduler(schedule)], epochs=5, opt=opt, initial_epoch=2)
    assert seen == [2, 3, 4]
    assert hist.epoch == [2, 3, 4]
    assert hist["learning_rate"] == [0.1 / 3, 0.1 / 4, 0.1 / 5]
    assert opt.lr == 0.1 / 5


def test_learning_rate_scheduler_rate_is_used_by_training():
    model = make_model()
    before = model.state_dict()
    train(model, [C.LearningRateScheduler(lambda epoch: 0.0)], epochs=2, lr=0.1)
    assert_same_state(model.state_dict(), before)
    train(model, [C.LearningRateScheduler(lambda epoch: 0.1)], epochs=1)
    assert_different_state(model.state_dict(), before)


def test_learning_rate_scheduler_verbose(capsys):
    train(make_model(), [C.LearningRateScheduler(lambda e, lr: 0.25, verbose=1)], epochs=2)
    assert capsys.readouterr().out == (
        "Epoch 1: LearningRateScheduler setting learning rate to 0.25.\n"
        "Epoch 2: LearningRateScheduler setting learning rate to 0.25.\n"
    )


@pytest.mark.parametrize(
    "schedule, exc, match",
    [
        (lambda e: "0.1", TypeError, r"schedule\(0\) must return a number"),
        (lambda e: None, TypeError, "must return a number"),
        (lambda e: True, TypeError, "must return a number"),
        (lambda e: -0.1, ValueError, "finite number >= 0"),
        (lambda e: float("nan"), ValueError, "finite number >= 0"),
    ],
)
def test_learning_rate_scheduler_bad_schedule_output(schedule, exc, match):
    model = make_model()
    before = model.state_dict()
    with pytest.raises(exc, match=match):
        train(model, [C.LearningRateScheduler(schedule)], epochs=2)
    assert_same_state(model.state_dict(), before)


def test_learning_rate_scheduler_does_not_swallow_type_errors_of_the_schedule():
    def schedule(epoch, lr):
        raise TypeError("bug inside the schedule")

    with pytest.raises(TypeError, match="bug inside the schedule"):
        train(make_model(), [C.LearningRateScheduler(schedule)], epochs=1)


# ------------------------------------------------------------------ CSVLogger


def read(path) -> str:
    """The file's exact text (no newline translation)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def expected_csv(hist, sep=",", header=True) -> str:
    keys = sorted(hist.history)
    lines = [sep.join(["epoch", *keys])] if header else []
    for i, e in enumerate(hist.epoch):
        lines.append(sep.join([str(e), *(repr(hist[k][i]) for k in keys)]))
    return "".join(line + "\n" for line in lines)


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_csv_logger_exact_content(tmp_path, sep):
    path = tmp_path / "log.csv"
    logger = C.CSVLogger(path, separator=sep)
    hist = train(make_model(), [logger], epochs=3)
    text = read(path)
    assert text.splitlines()[0] == sep.join(
        ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    )
    assert text == expected_csv(hist, sep)
    assert logger.csv_file is not None and logger.csv_file.closed


def test_csv_logger_flushes_every_epoch(tmp_path):
    path = tmp_path / "log.csv"
    lines_seen = []
    peek = C.LambdaCallback(
        on_epoch_end=lambda e, logs: lines_seen.append(len(read(path).splitlines()))
    )
    train(make_model(), [C.CSVLogger(str(path)), peek], epochs=3, validation=False)
    assert lines_seen == [2, 3, 4]
    assert read(path).splitlines()[0] == "epoch,accuracy,loss"


def test_csv_logger_append_and_overwrite(tmp_path):
    path = tmp_path / "log.csv"
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.05)
    h1 = train(model, [C.CSVLogger(path, append=True)], epochs=2, opt=opt)  # new file: header
    h2 = train(model, [C.CSVLogger(path, append=True)], epochs=4, opt=opt, initial_epoch=2)
    text = read(path)
    assert text == expected_csv(h1) + expected_csv(h2, header=False)
    assert text.count("epoch") == 1
    assert [line.split(",")[0] for line in text.splitlines()[1:]] == ["0", "1", "2", "3"]

    h3 = train(model, [C.CSVLogger(path)], epochs=1, opt=opt)  # append=False overwrites
    assert read(path) == expected_csv(h3)


def test_csv_logger_includes_columns_added_by_earlier_callbacks(tmp_path):
    path = tmp_path / "log.csv"
    sched = C.LearningRateScheduler(lambda e: 0.01 * (e + 1))
    train(make_model(), [sched, C.CSVLogger(path)], epochs=2, validation=False)
    rows = [line.split(",") for line in read(path).splitlines()]
    assert rows[0] == ["epoch", "accuracy", "learning_rate", "loss"]
    assert [float(r[2]) for r in rows[1:]] == [0.01, 0.02]


# ------------------------------------------------------------------ LambdaCallback and the protocol


def test_lambda_callback_hooks_get_0_based_epochs_and_logs():
    events = []
    cb = C.LambdaCallback(
        on_train_begin=lambda logs: events.append(("train_begin", dict(logs))),
        on_epoch_begin=lambda e, logs: events.append(("epoch_begin", e, dict(logs))),
        on_epoch_end=lambda e, logs: events.append(("epoch_end", e, dict(logs))),
        on_train_end=lambda logs: events.append(("train_end", dict(logs))),
    )
    assert not cb._wants_batches()
    model = make_model()
    hist = train(model, [cb], epochs=3)

    per_epoch = [{k: v[i] for k, v in hist.history.items()} for i in range(3)]
    assert set(per_epoch[0]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert events == [
        ("train_begin", {}),
        *[ev for e in range(3) for ev in (("epoch_begin", e, {}), ("epoch_end", e, per_epoch[e]))],
        ("train_end", per_epoch[2]),
    ]
    assert cb.model is model
    assert cb.params == {"epochs": 3, "steps": 6, "verbose": 0}
    assert hist.params == {"epochs": 3, "steps": 6, "verbose": 0}


def test_on_train_batch_end_called_once_per_batch():
    batches = []
    epoch_logs = []
    cb = C.LambdaCallback(
        on_train_batch_end=lambda b, logs: batches.append((b, dict(logs))),
        on_epoch_end=lambda e, logs: epoch_logs.append(dict(logs)),
    )
    assert cb._wants_batches()
    hist = train(make_model(), [cb], epochs=2, batch_size=10)  # 96 samples: 10 steps
    steps = hist.params["steps"]
    assert steps == 10
    assert [b for b, _ in batches] == list(range(steps)) * 2
    assert all(set(logs) == {"loss", "accuracy"} for _, logs in batches)
    # the running loss of an epoch's last batch is the epoch's loss
    for e in range(2):
        last = batches[(e + 1) * steps - 1][1]
        assert last["loss"] == pytest.approx(epoch_logs[e]["loss"], rel=1e-5)
        assert last["accuracy"] == pytest.approx(epoch_logs[e]["accuracy"], rel=1e-5)


def test_base_class_wants_batches_only_when_overridden():
    class Batchy(C.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    assert Batchy()._wants_batches()
    assert not C.Callback()._wants_batches()
    for cb in [
        C.EarlyStopping(),
        C.ReduceLROnPlateau(),
        C.CSVLogger("x.csv"),
        C.LearningRateScheduler(lambda e: 0.1),
    ]:
        assert not cb._wants_batches()


def test_stop_training_in_on_train_batch_end_ends_the_epoch_after_that_batch():
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.05)
    events = []

    def on_batch(b, logs):
        events.append(("batch", b))
        if b == 2:
            model.stop_training = True

    cb = C.LambdaCallback(
        on_train_batch_end=on_batch,
        on_epoch_end=lambda e, logs: events.append(("epoch_end", e)),
        on_train_end=lambda logs: events.append(("train_end",)),
    )
    hist = train(model, [cb], epochs=3, opt=opt)
    assert events == [("batch", 0), ("batch", 1), ("batch", 2), ("epoch_end", 0), ("train_end",)]
    assert hist.epoch == [0]
    assert opt.steps == 3
    assert model.epochs_trained == 1
    assert model.stop_training


def test_stop_training_in_on_epoch_end_stops_after_that_epoch():
    model = make_model()
    ends = []

    def on_end(e, logs):
        ends.append(e)
        if e == 1:
            model.stop_training = True

    hist = train(model, [C.LambdaCallback(on_epoch_end=on_end)], epochs=5)
    assert ends == [0, 1]
    assert hist.epoch == [0, 1]
    assert len(hist["loss"]) == 2
    # the next fit starts afresh
    hist = train(model, [], epochs=2)
    assert hist.epoch == [0, 1]


def test_initial_epoch_and_epochs_trained_across_fits():
    begins = []
    cb = C.LambdaCallback(on_epoch_begin=lambda e, logs: begins.append(e))
    model = make_model()
    opt = fg.optim.SGD(model.parameters(), lr=0.05)
    h1 = train(model, [cb], epochs=2, opt=opt)
    assert model.epochs_trained == 2
    h2 = train(model, [cb], epochs=5, opt=opt, initial_epoch=2)
    assert begins == [0, 1, 2, 3, 4]
    assert h1.epoch == [0, 1] and h2.epoch == [2, 3, 4]
    assert h2.params["epochs"] == 5
    assert model.epochs_trained == 5
    h3 = train(model, [cb], epochs=3, opt=opt, initial_epoch=3)  # nothing to do
    assert h3.epoch == [] and model.epochs_trained == 5
    train(model, [], epochs=1, opt=opt)
    assert model.epochs_trained == 6


def test_two_fits_of_one_epoch_equal_one_fit_of_two():
    def run(splits):
        model = make_model(seed=7, bn=True, dropout=True)
        opt = fg.optim.Adam(model.parameters(), lr=0.01)
        for n in splits:
            train(model, [], epochs=n, opt=opt, shuffle=True, validation=False)
        return model.state_dict()

    once = run([2])
    assert_same_state(run([1, 1]), once)
    assert_different_state(run([1]), once)


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "cls, kwargs, exc, match",
    [
        (C.EarlyStopping, {"patience": -1}, ValueError, "patience"),
        (C.EarlyStopping, {"patience": 1.5}, TypeError, "patience"),
        (C.EarlyStopping, {"min_delta": float("nan")}, ValueError, "min_delta"),
        (C.EarlyStopping, {"min_delta": float("inf")}, ValueError, "min_delta"),
        (C.EarlyStopping, {"min_delta": "0.1"}, TypeError, "min_delta"),
        (C.EarlyStopping, {"mode": "maximum"}, ValueError, "mode"),
        (C.EarlyStopping, {"mode": None}, TypeError, "mode"),
        (C.EarlyStopping, {"baseline": float("nan")}, ValueError, "baseline"),
        (C.EarlyStopping, {"restore_best_weights": 1}, TypeError, "restore_best_weights"),
        (C.EarlyStopping, {"start_from_epoch": -1}, ValueError, "start_from_epoch"),
        (C.EarlyStopping, {"monitor": 3}, TypeError, "monitor"),
        (C.EarlyStopping, {"verbose": -1}, ValueError, "verbose"),
        (C.ReduceLROnPlateau, {"factor": 1.0}, ValueError, "factor"),
        (C.ReduceLROnPlateau, {"factor": 0.0}, ValueError, "factor"),
        (C.ReduceLROnPlateau, {"factor": 2}, ValueError, "factor"),
        (C.ReduceLROnPlateau, {"factor": "0.5"}, TypeError, "factor"),
        (C.ReduceLROnPlateau, {"patience": -1}, ValueError, "patience"),
        (C.ReduceLROnPlateau, {"cooldown": -1}, ValueError, "cooldown"),
        (C.ReduceLROnPlateau, {"cooldown": 0.5}, TypeError, "cooldown"),
        (C.ReduceLROnPlateau, {"min_delta": float("nan")}, ValueError, "min_delta"),
        (C.ReduceLROnPlateau, {"min_lr": -1e-3}, ValueError, "min_lr"),
        (C.ReduceLROnPlateau, {"min_lr": float("inf")}, ValueError, "min_lr"),
        (C.ReduceLROnPlateau, {"mode": "up"}, ValueError, "mode"),
        (C.LearningRateScheduler, {"schedule": 0.1}, TypeError, "schedule must be callable"),
        (
            C.LearningRateScheduler,
            {"schedule": lambda: 0.1},
            TypeError,
            r"\(epoch, lr\) or \(epoch\)",
        ),
        (C.LearningRateScheduler, {"schedule": lambda e, lr, x: 0.1}, TypeError, "schedule"),
        (
            C.LearningRateScheduler,
            {"schedule": lambda e: 0.1, "verbose": "1"},
            TypeError,
            "verbose",
        ),
        (C.CSVLogger, {"filename": 3}, TypeError, "filename"),
        (C.CSVLogger, {"filename": "a.csv", "separator": ""}, ValueError, "separator"),
        (C.CSVLogger, {"filename": "a.csv", "separator": ";;"}, ValueError, "separator"),
        (C.CSVLogger, {"filename": "a.csv", "separator": 1}, TypeError, "separator"),
        (C.CSVLogger, {"filename": "a.csv", "append": "yes"}, TypeError, "append"),
        (C.LambdaCallback, {"on_epoch_end": 3}, TypeError, "on_epoch_end"),
        (C.LambdaCallback, {"on_train_batch_end": "f"}, TypeError, "on_train_batch_end"),
    ],
)
def test_bad_arguments(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_schedule_signatures_accepted():
    import functools

    def with_default(epoch, lr=None):
        return 0.1

    for fn, arity in [
        (lambda e: 0.1, 1),
        (lambda e, lr: lr, 2),
        (with_default, 2),
        (functools.partial(lambda scale, e, lr: scale * lr, 0.5), 2),
        (lambda *args: 0.1, 2),
    ]:
        assert C.LearningRateScheduler(fn)._arity == arity


def test_callback_list_items_must_be_callbacks():
    model = make_model()
    with pytest.raises(TypeError, match=r"callbacks\[1\].*Callback"):
        train(model, [C.Callback(), lambda epoch, logs: None], epochs=1)
    assert model.epochs_trained == 0

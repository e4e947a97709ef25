"""Error handling at every public entry point.

The contract: bad input raises ``ValueError`` or ``TypeError`` (or one of
ferrograd's subclasses: ``ShapeError``, ``NonFiniteError`` and ``StateError``
are ``ValueError`` s) with a message that names the problem; never a panic,
an abort, a hang or a silently wrong result; and a call that fails leaves the
model exactly as it was (every parameter and every gradient, bitwise).

Unusual but valid input (other numeric dtypes, read-only, strided, reversed,
Fortran-ordered or misaligned arrays, the same array as X and y) must work
and give exactly the result of the equivalent contiguous array.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

N = 24  # samples in the small data sets


# ------------------------------------------------------------------ helpers


def classifier(seed: int = 0, dtype: str = "float32") -> fg.Sequential:
    """4 features -> 3 classes."""
    return fg.Sequential([L.Dense(4, 8), L.ReLU(), L.Dense(8, 3)], seed=seed, dtype=dtype)


def regressor(seed: int = 0) -> fg.Sequential:
    """4 features -> 2 outputs."""
    return fg.Sequential([L.Dense(4, 8), L.Tanh(), L.Dense(8, 2)], seed=seed)


def with_grads(model: fg.Sequential, n_in: int = 4) -> fg.Sequential:
    """Gives every parameter a non-zero gradient, so that a call that
    wrongly touches gradients is caught as well."""
    x = np.linspace(-1.0, 1.0, 5 * n_in, dtype=np.float32).reshape(5, n_in)
    out = model.forward(x, training=True)
    model.backward(np.ones_like(out))
    assert any(np.any(p.grad != 0) for p in model.parameters())
    return model


def snapshot(model: fg.Sequential) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    state = {k: v.copy() for k, v in model.state_dict().items()}
    grads = [p.grad.copy() for p in model.parameters()]
    return state, grads


def assert_same_model(model: fg.Sequential, snap: tuple[dict, list]) -> None:
    state, grads = snap
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert now[k].shape == v.shape, k
        assert now[k].dtype == v.dtype, k
        assert now[k].tobytes() == v.tobytes(), f"parameter {k} changed"
    for p, g in zip(model.parameters(), grads):
        assert p.grad.tobytes() == g.tobytes(), f"gradient of {p.name} changed"


@contextlib.contextmanager
def unchanged(model: fg.Sequential) -> Iterator[None]:
    """Asserts that the model's parameters and gradients are bitwise the same
    after the block (put ``pytest.raises`` inside it)."""
    snap = snapshot(model)
    yield
    assert_same_model(model, snap)


def assert_states_equal(a: fg.Sequential, b: fg.Sequential) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].tobytes() == sb[k].tobytes(), f"{k} differs"


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, 4)).astype(np.float32)
    y = rng.integers(0, 3, N).astype(np.int64)
    return x, y


@pytest.fixture
def reg_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, 4)).astype(np.float32)
    y = (x @ rng.standard_normal((4, 2))).astype(np.float32)
    return x, y


def run_entry(entry: str, model: fg.Sequential, x, y, loss: str = "cross_entropy"):
    if entry == "fit":
        opt = fg.optim.SGD(model.parameters(), lr=0.1)
        try:
            return model.fit(x, y, loss, opt, epochs=2, batch_size=8, verbose=0)
        finally:
            run_entry.last_steps = opt.steps  # type: ignore[attr-defined]
    if entry == "evaluate":
        return model.evaluate(x, y, loss)
    if entry == "predict":
        return model.predict(x)
    if entry == "forward":
        return model.forward(x, training=True)
    raise AssertionError(entry)


def fit_fresh(x, y, loss="cross_entropy", make=classifier, **kw) -> fg.Sequential:
    """A fresh, seeded model trained two epochs on (x, y)."""
    model = make()
    opt = fg.optim.Adam(model.parameters(), lr=0.01)
    model.fit(x, y, loss, opt, epochs=2, batch_size=8, verbose=0, **kw)
    return model


# ------------------------------------------------------------------ bad X

ALL_ENTRIES = ("fit", "evaluate", "predict", "forward")


def _bad_x(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "1d":
        return x[:, 0].copy()
    if kind == "3d_wrong_last_dim":
        return x.reshape(N, 2, 2).copy()
    if kind == "5_features":
        return np.concatenate([x, x[:, :1]], axis=1)
    if kind == "3_features":
        return x[:, :3].copy()
    if kind == "nan":
        out = x.copy()
        out[5, 2] = np.nan
        return out
    if kind == "inf":
        out = x.copy()
        out[7, 0] = np.inf
        return out
    if kind == "neg_inf_float64":
        out = x.astype(np.float64)
        out[0, 3] = -np.inf
        return out
    raise AssertionError(kind)


BAD_X = [
    ("1d", fg.ShapeError, r"shape \(N, features"),
    ("3d_wrong_last_dim", fg.ShapeError, r"last dimension is 4"),
    ("5_features", fg.ShapeError, r"last dimension is 4.*\[5\]"),
    ("3_features", fg.ShapeError, r"last dimension is 4.*\[3\]"),
    ("nan", fg.NonFiniteError, r"NaN or inf.*sample 5, feature 2"),
    ("inf", fg.NonFiniteError, r"NaN or inf.*sample 7, feature 0"),
    ("neg_inf_float64", fg.NonFiniteError, r"NaN or inf"),
]


@pytest.mark.parametrize("entry", ALL_ENTRIES)
@pytest.mark.parametrize(("kind", "exc", "match"), BAD_X, ids=[c[0] for c in BAD_X])
def test_bad_x_raises_and_changes_nothing(data, entry, kind, exc, match):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(exc, match=match):
        run_entry(entry, model, _bad_x(kind, x), y)
    assert issubclass(exc, ValueError)
    if entry == "fit":
        assert run_entry.last_steps == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("entry", ALL_ENTRIES)
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda x: x.astype(object), "object"),
        (lambda x: x.astype(str), "string"),
        (lambda x: x.astype(np.complex64), "complex"),
        (lambda x: [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], "numeric array"),
    ],
    ids=["object", "str", "complex", "ragged_list"],
)
def test_non_numeric_x_is_a_type_error(data, entry, make, match):
    x, y = data
    model = with_grads(classifier())
    bad = make(x)
    yy = y if entry != "fit" or not isinstance(bad, list) else y[:2]
    with unchanged(model), pytest.raises(TypeError, match=match):
        run_entry(entry, model, bad, yy)


@pytest.mark.parametrize("entry", ALL_ENTRIES)
def test_empty_data_raises(data, entry):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(ValueError, match=r"empty \(0 samples\)"):
        run_entry(entry, model, x[:0], y[:0])


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
@pytest.mark.parametrize("n_y", [N - 1, N + 1])
def test_x_y_length_mismatch(data, entry, n_y):
    x, y = data
    y = np.resize(y, n_y)
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(fg.ShapeError, match=rf"different lengths: {N} samples"):
        run_entry(entry, model, x, y)


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
def test_mse_target_of_wrong_width(reg_data, entry):
    x, y = reg_data
    model = with_grads(regressor())
    with unchanged(model), pytest.raises(fg.ShapeError, match=r"expected \[24, 2\]"):
        run_entry(entry, model, x, np.concatenate([y, y[:, :1]], axis=1), loss="mse")


# ------------------------------------------------------------------ bad y

BAD_LABELS = [
    ("too_big", np.full(N, 3, np.int64), ValueError, r"class label 3 .*out of range.*\[0, 3\)"),
    ("negative", np.full(N, -1, np.int64), ValueError, r"class label -1 .*out of range"),
    ("float_fraction", np.full(N, 0.5), ValueError, r"must be integers.*0\.5"),
    ("float_nan", np.full(N, np.nan), fg.NonFiniteError, r"NaN or inf"),
    ("float_inf", np.full(N, np.inf), fg.NonFiniteError, r"NaN or inf"),
    ("float_too_big", np.full(N, 7.0), ValueError, r"class label 7 .*out of range"),
    ("uint8_too_big", np.full(N, 200, np.uint8), ValueError, r"class label 200 .*out of range"),
    # 1e20 is an integer-valued float far outside int64: the message must
    # name a bad label, without a numpy cast warning on the way.
    ("float_huge", np.full(N, 1e20), ValueError, r"label"),
]


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
@pytest.mark.parametrize(("kind", "y", "exc", "match"), BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
def test_bad_class_labels(data, entry, kind, y, exc, match):
    x, _ = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(exc, match=match):
        run_entry(entry, model, x, y)


def test_one_bad_label_among_good_ones_is_found(data):
    x, y = data
    y = y.copy()
    y[17] = 9
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(ValueError, match=r"class label 9 at index 17"):
        model.fit(x, y, "cross_entropy", "adam", verbose=0)


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (np.nan, fg.NonFiniteError, "NaN or inf"),
        (-np.inf, fg.NonFiniteError, "NaN or inf"),
    ],
    ids=["nan", "-inf"],
)
def test_non_finite_regression_targets(reg_data, entry, value, exc, match):
    x, y = reg_data
    y = y.copy()
    y[3, 1] = value
    model = with_grads(regressor())
    with unchanged(model), pytest.raises(exc, match=match):
        run_entry(entry, model, x, y, loss="mse")


def test_non_finite_probability_targets_for_cross_entropy(data):
    x, _ = data
    p = np.full((N, 3), 1 / 3, np.float32)
    p[2, 2] = np.nan
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(fg.NonFiniteError, match="NaN or inf"):
        model.fit(x, p, "cross_entropy", "sgd", verbose=0)


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
@pytest.mark.parametrize("bad", [1.5, -0.25, 2.0])
def test_binary_cross_entropy_targets_outside_unit_interval(data, entry, bad):
    x, _ = data
    model = with_grads(fg.Sequential([L.Dense(4, 2)], seed=0))
    y = np.zeros((N, 2), np.float32)
    y[4, 1] = bad
    with unchanged(model), pytest.raises(ValueError, match=rf"in \[0, 1\], got {bad:g}"):
        run_entry(entry, model, x, y, loss="binary_cross_entropy")


def test_binary_cross_entropy_accepts_the_interval_ends(data):
    x, _ = data
    model = fg.Sequential([L.Dense(4, 1)], seed=0)
    y = (np.arange(N) % 2).astype(np.float32)  # 1-d, reshaped to (N, 1)
    hist = model.fit(x, y, "bce", "sgd", epochs=1, verbose=0)
    assert math.isfinite(hist["loss"][0])


@pytest.mark.parametrize(
    "y",
    [np.array(["a"] * N), np.full(N, 1 + 1j), np.array([object()] * N)],
    ids=["str", "complex", "object"],
)
def test_non_numeric_y_is_a_type_error(data, y):
    x, _ = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(TypeError, match=r"y has dtype"):
        model.fit(x, y, "cross_entropy", "sgd", verbose=0)
    with unchanged(model), pytest.raises(TypeError, match=r"y has dtype"):
        model.evaluate(x, y, "cross_entropy")


def test_scalar_y_is_rejected(data):
    x, _ = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(fg.ShapeError, match="batch dimension"):
        model.evaluate(x, np.int64(1), "cross_entropy")


def test_float64_values_that_overflow_float32_are_not_silently_used(data):
    """1e39 is finite in float64 but infinite in a float32 model: the data
    must be rejected (naming X), not turned into NaN outputs or a loss."""
    x, y = data
    x64 = x.astype(np.float64)
    x64[3, 1] = 1e39
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(ValueError, match=r"\bX\b"):
        model.predict(x64)
    with unchanged(model), pytest.raises(ValueError, match=r"\bX\b"):
        model.evaluate(x64, y, "cross_entropy")
    with unchanged(model), pytest.raises(ValueError, match=r"\bX\b"):
        model.fit(x64, y, "cross_entropy", "sgd", verbose=0)


# ------------------------------------------------------------------ validation data


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda x, y: (x[:, :3], y), fg.ShapeError, r"validation.*last dimension is 4"),
        (lambda x, y: (x[:, 0], y), fg.ShapeError, r"validation X must have shape"),
        (lambda x, y: (x, y[:-2]), fg.ShapeError, r"validation.*different lengths"),
        (lambda x, y: (x[:0], y[:0]), ValueError, r"validation.*empty"),
        (lambda x, y: (np.where(x > 1, np.nan, x), y), fg.NonFiniteError, r"validation.*NaN"),
        (lambda x, y: (x, np.full_like(y, 5)), ValueError, r"validation.*out of range"),
        (lambda x, y: (x.astype(str), y), TypeError, r"validation X has dtype"),
        (lambda x, y: x, TypeError, r"validation_data must be a pair"),
        (lambda x, y: (x, y, y), TypeError, r"validation_data must be a pair"),
    ],
    ids=[
        "features",
        "ndim",
        "length",
        "empty",
        "nan",
        "labels",
        "str",
        "not_pair",
        "triple",
    ],
)
def test_bad_validation_data(data, make, exc, match):
    x, y = data
    model = with_grads(classifier())
    opt = fg.optim.Adam(model.parameters())
    with unchanged(model), pytest.raises(exc, match=match):
        model.fit(x, y, "cross_entropy", opt, validation_data=make(x, y), verbose=0)
    assert opt.steps == 0


# ------------------------------------------------------------------ fit arguments


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be >= 1, got 0"),
        ({"batch_size": -4}, ValueError, r"batch_size must be >= 1, got -4"),
        ({"batch_size": 2.0}, TypeError, r"batch_size must be an int, got float"),
        ({"batch_size": "8"}, TypeError, r"batch_size must be an int"),
        ({"batch_size": True}, TypeError, r"batch_size must be an int, got bool"),
        ({"batch_size": None}, TypeError, r"batch_size must be an int"),
        ({"epochs": -1}, ValueError, r"epochs must be >= 0, got -1"),
        ({"epochs": 1.5}, TypeError, r"epochs must be an int"),
        ({"verbose": -1}, ValueError, r"verbose must be >= 0"),
        ({"validation_split": 1.0}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"validation_split": -0.1}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"validation_split": 1.5}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"validation_split": float("nan")}, ValueError, r"validation_split.*nan"),
        ({"validation_split": "half"}, TypeError, r"validation_split must be a number"),
        ({"validation_split": 1e-17}, ValueError, r"leaves 24 training and 0 validation"),
        ({"validation_split": 0.99}, ValueError, r"leaves 0 training and 24 validation"),
        ({"metrics": ["precision"]}, ValueError, r"unknown metric 'precision'"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_bad_fit_arguments(data, kwargs, exc, match):
    x, y = data
    model = with_grads(classifier())
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    with unchanged(model), pytest.raises(exc, match=match):
        model.fit(x, y, "cross_entropy", opt, **{"verbose": 0, **kwargs})
    assert opt.steps == 0


def test_validation_split_and_data_together(data):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(ValueError, match="not both"):
        model.fit(
            x, y, "cross_entropy", "sgd", validation_split=0.25, validation_data=(x, y), verbose=0
        )


def test_accuracy_metric_with_mse_is_rejected(reg_data):
    x, y = reg_data
    model = with_grads(regressor())
    with unchanged(model), pytest.raises(ValueError, match="accuracy.*mse"):
        model.fit(x, y, "mse", "sgd", metrics=["accuracy"], verbose=0)


def test_optimizer_of_another_model_is_rejected(data):
    x, y = data
    model, other = with_grads(classifier()), classifier(seed=1)
    with unchanged(model), pytest.raises(ValueError, match="another model"):
        model.fit(x, y, "cross_entropy", fg.optim.SGD(other.parameters(), lr=0.1), verbose=0)


@pytest.mark.parametrize(
    ("loss", "exc", "match"),
    [("hinge", ValueError, r"unknown loss 'hinge'"), (42, TypeError, r"loss must be a name")],
)
def test_unknown_loss(data, loss, exc, match):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(exc, match=match):
        model.fit(x, y, loss, "sgd", verbose=0)
    with unchanged(model), pytest.raises(exc, match=match):
        model.evaluate(x, y, loss)


@pytest.mark.parametrize(
    ("opt", "exc", "match"),
    [
        ("adamax", ValueError, r"unknown optimizer 'adamax'"),
        (0.1, TypeError, r"optimizer must be a name"),
    ],
)
def test_unknown_optimizer(data, opt, exc, match):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(exc, match=match):
        model.fit(x, y, "cross_entropy", opt, verbose=0)


@pytest.mark.parametrize("method", ["evaluate", "predict"])
@pytest.mark.parametrize(
    ("bs", "exc"), [(0, ValueError), (-1, ValueError), (2.5, TypeError), (None, TypeError)]
)
def test_bad_inference_batch_size(data, method, bs, exc):
    x, y = data
    model = with_grads(classifier())
    args = (x, y, "cross_entropy") if method == "evaluate" else (x,)
    with unchanged(model), pytest.raises(exc, match="batch_size"):
        getattr(model, method)(*args, batch_size=bs)


def test_epochs_zero_trains_nothing(data):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model):
        hist = model.fit(x, y, "cross_entropy", "sgd", epochs=0, verbose=0)
    assert hist.epoch == [] and hist.history == {}


# ------------------------------------------------------------------ divergence


def test_diverging_training_stops_with_non_finite_error(reg_data):
    x, y = reg_data
    model = regressor()
    opt = fg.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(fg.NonFiniteError, match=r"(NaN|inf).*epoch 1, step \d+") as info:
        model.fit(x, y * 100, "mse", opt, epochs=3, batch_size=8, verbose=0)
    assert isinstance(info.value, ValueError)
    step = int(info.value.args[0].split("step ")[1].split()[0])
    # The step whose loss was not finite was not applied.
    assert opt.steps == step - 1
    assert model.predict(x).shape == (N, 2)


def test_divergence_in_a_later_epoch_names_that_epoch(reg_data):
    """SGD with lr=3 on a linear least-squares problem diverges slowly: the
    loss overflows float32 only after dozens of one-step epochs."""
    x, y = reg_data
    model = fg.Sequential([L.Dense(4, 2)], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=3.0)
    with pytest.raises(fg.NonFiniteError, match=r"epoch \d+, step 1 \(of 1\)") as info:
        model.fit(x, y, "mse", opt, epochs=200, batch_size=N, verbose=0)
    epoch = int(info.value.args[0].split("epoch ")[1].split(",")[0])
    assert epoch > 1
    assert opt.steps == epoch - 1  # every earlier epoch's single step was applied


# ------------------------------------------------------------------ valid unusual input


def _predict_and_fit_equal(make_x, x, y, loss="cross_entropy", make=classifier):
    """``make_x(x)`` must give bitwise the results of ``x`` itself."""
    xv = make_x(x)
    ref_model = make()
    ref_pred = ref_model.predict(np.ascontiguousarray(xv, dtype=np.float32))
    model = make()
    np.testing.assert_array_equal(model.predict(xv), ref_pred)
    np.testing.assert_array_equal(model.forward(xv), ref_pred)
    ev_ref = ref_model.evaluate(np.ascontiguousarray(xv, dtype=np.float32), y, loss)
    assert model.evaluate(xv, y, loss) == ev_ref
    trained = fit_fresh(xv, y, loss, make=make)
    ref = fit_fresh(np.ascontiguousarray(xv, dtype=np.float32), y, loss, make=make)
    assert_states_equal(trained, ref)


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.int8, np.bool_, np.float16, np.float64]
)
def test_other_numeric_dtypes_are_converted(data, dtype):
    x, y = data
    base = (x * 3).astype(dtype)
    _predict_and_fit_equal(lambda a: a, base, y)


def test_nested_lists_are_accepted(data):
    x, y = data
    model, ref = classifier(), classifier()
    np.testing.assert_array_equal(model.predict(x.tolist()), ref.predict(x))
    assert_states_equal(fit_fresh(x.tolist(), y.tolist()), fit_fresh(x, y))


@pytest.mark.parametrize(
    "label_dtype", [np.int32, np.uint8, np.int16, np.float32, np.float64, np.uint64]
)
def test_label_dtypes_are_converted(data, label_dtype):
    x, y = data
    assert_states_equal(fit_fresh(x, y.astype(label_dtype)), fit_fresh(x, y))


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def _misaligned(a: np.ndarray) -> np.ndarray:
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _misaligned_readonly(a: np.ndarray) -> np.ndarray:
    raw = b"\x00" + np.ascontiguousarray(a).tobytes()
    out = np.frombuffer(raw, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    assert not out.flags.aligned and not out.flags.writeable
    return out


LAYOUTS = {
    "readonly": _readonly,
    "strided_columns": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "strided_rows": lambda a: np.repeat(a, 2, axis=0)[::2],
    "reversed": lambda a: a[::-1].copy()[::-1],
    "fortran": np.asfortranarray,
    "transposed_view": lambda a: np.ascontiguousarray(a.T).T,
    "misaligned": _misaligned,
    "misaligned_readonly": _misaligned_readonly,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_unusual_memory_layouts_of_x_give_identical_results(data, layout):
    x, y = data
    xv = LAYOUTS[layout](x)
    np.testing.assert_array_equal(xv, x)  # the same values, another layout
    if layout in ("strided_columns", "strided_rows", "reversed", "fortran", "transposed_view"):
        assert not xv.flags.c_contiguous
    _predict_and_fit_equal(lambda a: LAYOUTS[layout](a), x, y)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_unusual_memory_layouts_of_y_give_identical_results(reg_data, layout):
    x, y = reg_data
    yv = LAYOUTS[layout](y)
    np.testing.assert_array_equal(yv, y)
    trained = fit_fresh(x, yv, "mse", make=regressor)
    assert_states_equal(trained, fit_fresh(x, y.copy(), "mse", make=regressor))


def test_reversed_x_is_x_reversed(data):
    """A negative-stride view is read in its logical order, not memory order."""
    x, _ = data
    model = classifier()
    np.testing.assert_array_equal(model.predict(x[::-1]), model.predict(x)[::-1])
    np.testing.assert_array_equal(model.predict(x[:, ::-1]), model.predict(x[:, ::-1].copy()))


def test_every_other_column_of_a_wider_array(data):
    x, y = data
    wide = np.random.default_rng(5).standard_normal((N, 8)).astype(np.float32)
    view = wide[:, ::2]
    assert view.shape == (N, 4) and not view.flags.c_contiguous
    model = classifier()
    np.testing.assert_array_equal(model.predict(view), model.predict(view.copy()))
    assert_states_equal(fit_fresh(view, y), fit_fresh(view.copy(), y))


def test_same_array_as_x_and_y_for_an_autoencoder(reg_data):
    x, _ = reg_data

    def auto() -> fg.Sequential:
        return fg.Sequential([L.Dense(4, 3), L.Tanh(), L.Dense(3, 4)], seed=3)

    before = x.copy()
    a = fit_fresh(x, x, "mse", make=auto)
    b = fit_fresh(x, x.copy(), "mse", make=auto)
    assert_states_equal(a, b)
    np.testing.assert_array_equal(x, before)  # the data is not written to
    assert a.evaluate(x, x, "mse") == b.evaluate(x, x.copy(), "mse")
    # The same for a read-only array.
    ro = _readonly(x)
    assert_states_equal(fit_fresh(ro, ro, "mse", make=auto), a)


def test_fit_does_not_write_to_its_inputs(data):
    x, y = data
    xr, yr = _readonly(x), _readonly(y)
    model = fit_fresh(xr, yr, validation_data=(xr, yr))
    assert all(np.isfinite(v).all() for v in model.state_dict().values())


# ------------------------------------------------------------------ optimizers


OPTIMIZERS = [fg.optim.SGD, fg.optim.Adam, fg.optim.AdamW, fg.optim.RMSprop]


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_learning_rate(cls, lr):
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(ValueError, match="learning rate"):
        cls(model.parameters(), lr=lr)


@pytest.mark.parametrize("cls", [fg.optim.Adam, fg.optim.AdamW], ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("betas", "which"),
    [((1.0, 0.999), "beta1"), ((-0.1, 0.999), "beta1"), ((0.9, 1.0), "beta2"), ((0.9, 2), "beta2")],
)
def test_bad_betas(cls, betas, which):
    model = classifier()
    with pytest.raises(ValueError, match=rf"{which}.*\[0, 1\)"):
        cls(model.parameters(), betas=betas)


@pytest.mark.parametrize("betas", [0.9, (0.9,), "ab", None])
def test_betas_not_a_pair(betas):
    with pytest.raises(TypeError, match="beta"):
        fg.optim.Adam(classifier().parameters(), betas=betas)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.1, "momentum": -0.5}, "momentum"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
        ({"lr": 0.1, "nesterov": True}, "Nesterov"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lr": True}, "lr must be a number"),
    ],
)
def test_bad_sgd_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fg.optim.SGD(classifier().parameters(), **kwargs)


def test_bad_optimizer_parameter_lists():
    model, other = classifier(), classifier(seed=1)
    with pytest.raises(ValueError, match="empty parameter list"):
        fg.optim.Adam([])
    with pytest.raises(TypeError, match=r"model.parameters\(\)"):
        fg.optim.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="same model"):
        fg.optim.Adam(model.parameters()[:1] + other.parameters()[1:])


def test_unknown_optimizer_name_via_get():
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'"):
        fg.optim.get("lbfgs", classifier().parameters())


@pytest.mark.parametrize(
    ("lr", "exc"), [(-1.0, ValueError), (float("nan"), ValueError), ("x", TypeError)]
)
def test_failed_lr_assignment_keeps_the_old_lr(lr, exc):
    opt = fg.optim.Adam(classifier().parameters(), lr=0.003)
    with pytest.raises(exc, match=r"learning rate|lr"):
        opt.lr = lr
    assert opt.lr == 0.003
    assert opt.defaults["lr"] == 0.003


def test_a_schedule_may_anneal_the_learning_rate_to_zero():
    opt = fg.optim.SGD(classifier().parameters(), lr=0.1, momentum=0.9)
    opt.lr = 0.0
    assert opt.lr == 0.0
    opt.momentum = 0.85
    assert opt.momentum == 0.85 and opt.defaults["momentum"] == 0.85
    adam = fg.optim.Adam(classifier().parameters())
    adam.momentum = 0.95
    assert adam.momentum == 0.95 and adam.defaults["beta1"] == 0.95
    with pytest.raises(ValueError, match=r"beta1.*\[0, 1\)"):
        adam.momentum = 1.0
    assert adam.momentum == 0.95


# ------------------------------------------------------------------ layers and models


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_dropout_rate(p):
    with pytest.raises(ValueError, match=r"Dropout: p must be"):
        L.Dropout(p)


def test_dropout_rate_not_a_number():
    with pytest.raises(TypeError, match="Dropout: p must be a number"):
        L.Dropout("half")


@pytest.mark.parametrize("init", ["orthogonal", "HE", "", None])
def test_unknown_init(init):
    with pytest.raises(ValueError, match="unknown init"):
        L.Dense(4, 2, init=init)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((0, 2), ValueError, r"in_features must be >= 1, got 0"),
        ((4, 0), ValueError, r"out_features must be >= 1, got 0"),
        ((-3, 2), ValueError, r"in_features must be >= 1, got -3"),
        ((2.5, 2), TypeError, r"in_features must be an int"),
        ((4, "8"), TypeError, r"out_features must be an int"),
        ((True, 2), TypeError, r"in_features must be an int"),
    ],
)
def test_bad_dense_sizes(args, exc, match):
    with pytest.raises(exc, match=match):
        L.Dense(*args)


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (lambda: L.LeakyReLU(float("nan")), "negative_slope must be finite"),
        (lambda: L.Rescaling(float("inf")), "scale must be finite"),
        (lambda: L.Rescaling(1.0, offset=float("nan")), "offset must be finite"),
    ],
)
def test_non_finite_layer_settings(layer, match):
    with pytest.raises(ValueError, match=match):
        layer()


@pytest.mark.parametrize(
    "stack",
    [
        [L.Dense(4, 8), L.Dense(5, 2)],
        [L.Dense(4, 8), L.ReLU(), L.Dropout(0.2), L.Dense(5, 2)],
        [L.Dense(4, 8), L.Dense(8, 3), L.Softmax(), L.Dense(2, 1)],
    ],
    ids=["adjacent", "through_activations", "later"],
)
def test_layer_sizes_that_do_not_chain(stack):
    with pytest.raises(fg.ShapeError, match="do not chain"):
        fg.Sequential(stack)


def test_bad_sequential_arguments():
    with pytest.raises(ValueError, match="at least one layer"):
        fg.Sequential([])
    with pytest.raises(TypeError, match="layer 1 is a str"):
        fg.Sequential([L.Dense(4, 2), "relu"])
    with pytest.raises(ValueError, match="seed must be >= 0"):
        fg.Sequential([L.Dense(4, 2)], seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        fg.Sequential([L.Dense(4, 2)], seed=1.5)


@pytest.mark.parametrize("dtype", ["float16", "int32", "double precision", np.int8, "f32"])
def test_unknown_dtype(dtype):
    with pytest.raises(ValueError, match="unknown dtype"):
        fg.Sequential([L.Dense(4, 2)], dtype=dtype)


def test_seed_too_large_for_the_engine():
    """Out-of-range seeds must be a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match="seed"):
        fg.Sequential([L.Dense(4, 2)], seed=2**64)


@pytest.mark.parametrize(
    "sizes", ["10**7, 10**7", "2**31, 2**31"], ids=["400_terabytes", "overflowing"]
)
def test_impossibly_large_model_raises_instead_of_aborting(sizes):
    """Run in a child process: an abort would take the test session down."""
    code = textwrap.dedent(
        f"""
        import ferrograd as fg
        try:
            fg.Sequential([fg.layers.Dense({sizes})], seed=0)
        except (MemoryError, ValueError) as e:
            print("RAISED", type(e).__name__, e)
        else:
            print("BUILT")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"child died (rc={proc.returncode}): {proc.stderr[:200]} ... {proc.stderr[-200:]}"
    )
    assert "RAISED" in proc.stdout, proc.stdout + proc.stderr[:200] + " ... " + proc.stderr[-200:]


# ------------------------------------------------------------------ gradcheck and losses


def test_gradcheck_needs_float64(data):
    x, y = data
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(ValueError, match="float64"):
        fg.gradcheck(model, "cross_entropy", x[:4], y[:4])
    with pytest.raises(TypeError, match="Sequential"):
        fg.gradcheck("model", "cross_entropy", x, y)


def test_loss_objects_validate(data):
    x, y = data
    loss = fg.losses.CrossEntropy()
    with pytest.raises(fg.StateError, match=r"backward\(\) needs a preceding call"):
        loss.backward()
    out = classifier().predict(x)
    bad = out.copy()
    bad[1, 1] = np.nan
    with pytest.raises(fg.NonFiniteError, match="NaN or inf"):
        loss(bad, y)
    with pytest.raises(TypeError, match="float32 or float64"):
        loss(out.tolist(), y)
    with pytest.raises(ValueError, match="out of range"):
        loss(out, np.full(N, 3))
    with pytest.raises(fg.ShapeError, match="different lengths"):
        loss(out, y[:-1])
    with pytest.raises(ValueError, match="empty"):
        loss(out[:0], y[:0])
    with pytest.raises(ValueError, match=r"unknown loss 'l1'"):
        fg.losses.get("l1")


# ------------------------------------------------------------------ state_dict


def _new_state(model: fg.Sequential) -> dict[str, np.ndarray]:
    """Valid replacement values, different from the current ones."""
    return {k: v + 1 for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("edit", "exc", "match"),
    [
        (lambda s: s.pop("2.bias"), ValueError, r'missing key "2\.bias"'),
        (
            lambda s: s.update({"4.weight": np.zeros((3, 3))}),
            ValueError,
            r'unexpected key "4\.weight"',
        ),
        (
            lambda s: s.update({"0.weight": s["0.weight"].T}),
            fg.ShapeError,
            r'"0\.weight" has shape \[4, 8\]',
        ),
        (
            lambda s: s.update({"2.bias": s["2.bias"][:2]}),
            fg.ShapeError,
            r'"2\.bias" has shape \[2\]',
        ),
        (
            lambda s: s.update({"2.bias": np.float32(1)}),
            fg.ShapeError,
            r'"2\.bias" has shape .*expected \[3\]',
        ),
        (
            lambda s: s["2.bias"].__setitem__(1, np.nan),
            fg.NonFiniteError,
            r'"2\.bias" contains NaN',
        ),
        (
            lambda s: s["0.weight"].__setitem__((7, 3), -np.inf),
            fg.NonFiniteError,
            r'"0\.weight".*NaN or inf',
        ),
        (lambda s: s.update({"2.bias": ["a", "b", "c"]}), TypeError, r"'2\.bias' has dtype"),
        (
            lambda s: s.update({"2.bias": [1.0, [2.0], 3.0]}),
            (TypeError, ValueError),
            r"inhomogeneous|sequence",
        ),
        (lambda s: s.update({0: np.zeros(3)}), TypeError, r"keys must be strings"),
    ],
    ids=[
        "missing",
        "extra",
        "transposed",
        "short",
        "scalar",
        "nan",
        "inf",
        "strings",
        "ragged",
        "int_key",
    ],
)
def test_load_state_dict_is_all_or_nothing(edit, exc, match):
    model = with_grads(classifier())
    state = _new_state(model)
    # The last entry is bad in most cases, so earlier valid entries must not
    # have been written when the error is found.
    edit(state)
    with unchanged(model), pytest.raises(exc, match=match):
        model.load_state_dict(state)


@pytest.mark.parametrize("state", [[("0.weight", np.zeros((8, 4)))], None, "weights", 3])
def test_load_state_dict_needs_a_mapping(state):
    model = with_grads(classifier())
    with unchanged(model), pytest.raises(TypeError, match="must be a mapping"):
        model.load_state_dict(state)


def test_load_state_dict_non_strict_still_checks_what_it_loads():
    model = with_grads(classifier())
    state = _new_state(model)
    state["0.weight"] = state["0.weight"][:, :3]
    state["9.bias"] = np.zeros(2)  # ignored when not strict
    with unchanged(model), pytest.raises(fg.ShapeError, match=r'"0\.weight"'):
        model.load_state_dict(state, strict=False)
    # ... and a valid partial update works.
    model.load_state_dict({"2.bias": np.array([1.0, 2.0, 3.0])}, strict=False)
    np.testing.assert_array_equal(model.state_dict()["2.bias"], np.float32([1, 2, 3]))


def test_parameter_value_assignment_is_checked():
    model = with_grads(classifier())
    p = model.parameters()[0]
    with unchanged(model), pytest.raises(fg.ShapeError, match=r'"0\.weight"'):
        p.value = np.zeros((4, 8))
    with unchanged(model), pytest.raises(fg.NonFiniteError):
        p.value = np.full((8, 4), np.nan)


def test_load_state_dict_accepts_a_valid_round_trip():
    model = with_grads(classifier())
    other = classifier(seed=9)
    model.load_state_dict(other.state_dict())
    assert_states_equal(model, other)


# ------------------------------------------------------------------ step API


def test_backward_before_any_training_forward(data):
    x, _ = data
    model = classifier()
    with (
        unchanged(model),
        pytest.raises(fg.StateError, match=r"forward\(x, training=True\)") as info,
    ):
        model.backward(np.ones((N, 3), np.float32))
    assert isinstance(info.value, ValueError)
    # An inference-mode forward does not make backward valid either.
    model.forward(x, training=False)
    with unchanged(model), pytest.raises(fg.StateError):
        model.backward(np.ones((N, 3), np.float32))
    # Nor does a completed fit (it leaves no pass to backpropagate).
    model.fit(x, np.zeros(N, np.int64), "cross_entropy", "sgd", verbose=0)
    with unchanged(model), pytest.raises(fg.StateError):
        model.backward(np.ones((N, 3), np.float32))


@pytest.mark.parametrize("shape", [(N, 4), (N - 1, 3), (N,), (N * 3,), (3, N)], ids=str)
def test_backward_with_a_wrong_shaped_gradient(data, shape):
    x, _ = data
    model = with_grads(classifier())
    model.forward(x, training=True)
    with unchanged(model), pytest.raises(fg.ShapeError, match="gradient"):
        model.backward(np.ones(shape, np.float32))
    # The pass is still there: a correct gradient works afterwards.
    model.backward(np.ones((N, 3), np.float32))


def test_backward_with_a_non_finite_gradient(data):
    x, _ = data
    model = with_grads(classifier())
    model.forward(x, training=True)
    g = np.ones((N, 3), np.float32)
    g[2, 1] = np.nan
    with unchanged(model), pytest.raises(fg.NonFiniteError, match="NaN or inf"):
        model.backward(g)


@pytest.mark.parametrize("bad", ["features", "nan", "empty"])
def test_failed_forward_keeps_the_previous_pass(data, bad):
    x, _ = data
    model = classifier()
    ref = classifier()
    model.forward(x, training=True)
    ref.forward(x, training=True)
    xb = {"features": x[:, :3], "nan": np.where(x > 1, np.nan, x), "empty": x[:0]}[bad]
    with pytest.raises(ValueError):
        model.forward(xb, training=True)
    g = np.ones((N, 3), np.float32)
    model.backward(g)
    ref.backward(g)
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("n", [0, -1, -(2**40)])
def test_set_num_threads_non_positive(n):
    before = fg.get_num_threads()
    with pytest.raises(ValueError, match=rf"threads must be >= 1, got {n}"):
        fg.set_num_threads(n)
    assert fg.get_num_threads() == before


@pytest.mark.parametrize("n", [1.5, 2.0, "2", None, True])
def test_set_num_threads_non_int(n):
    before = fg.get_num_threads()
    with pytest.raises(TypeError, match="must be an int"):
        fg.set_num_threads(n)
    assert fg.get_num_threads() == before


def test_set_num_threads_too_large_for_the_engine():
    """Out-of-range thread counts must be a ValueError, not an OverflowError."""
    before = fg.get_num_threads()
    with pytest.raises(ValueError, match="threads"):
        fg.set_num_threads(2**64)
    assert fg.get_num_threads() == before


# ------------------------------------------------------------------ datasets


def test_read_idx_rejects_broken_files(tmp_path):
    good = bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4])
    (tmp_path / "ok").write_bytes(good)
    assert fg.datasets.read_idx(tmp_path / "ok").tolist() == [1, 2, 3, 4]
    cases = {
        "truncated": (good[:-1], "truncated IDX data"),
        "magic": (b"\x01\x02" + good[2:], "not an IDX file"),
        "type_code": (good[:2] + b"\x07" + good[3:], "unknown IDX data type code 0x07"),
        "trailing": (good + b"\x00", "extra trailing bytes"),
        "short_header": (good[:6], "truncated IDX header"),
        "gzip": (gzip.compress(good)[:-6], "corrupt gzip"),
    }
    for name, (raw, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=match) as info:
            fg.datasets.read_idx(path)
        assert name in str(info.value)  # the message names the file


def test_real_mnist_uint8_errors_and_conversions(mnist):
    (x_train, y_train), _ = mnist
    x, y = x_train[:512], y_train[:512]
    assert x.dtype == np.uint8 and y.dtype == np.uint8

    def make() -> fg.Sequential:
        return fg.Sequential(
            [L.Flatten(), L.Rescaling(1 / 255), L.Dense(784, 32), L.ReLU(), L.Dense(32, 10)],
            seed=0,
        )

    model = with_grads(make(), n_in=784)
    # Images without Flatten do not fit a Dense(784) layer.
    bare = fg.Sequential([L.Dense(784, 10)], seed=0)
    with pytest.raises(fg.ShapeError, match="last dimension is 784"):
        bare.predict(x)
    # A label shifted out of range is caught before anything changes.
    bad = y.astype(np.int64)
    bad[100] = 10
    with unchanged(model), pytest.raises(ValueError, match=r"class label 10 at index 100"):
        model.fit(x, bad, "cross_entropy", "adam", verbose=0)
    # uint8 images are read directly and give the float32 results exactly.
    np.testing.assert_array_equal(model.predict(x), model.predict(x.astype(np.float32)))
    a, b = make(), make()
    a.fit(x, y, "cross_entropy", "adam", epochs=1, batch_size=64, verbose=0)
    b.fit(
        x.astype(np.float32),
        y.astype(np.int64),
        "cross_entropy",
        "adam",
        epochs=1,
        batch_size=64,
        verbose=0,
    )
    assert_states_equal(a, b)

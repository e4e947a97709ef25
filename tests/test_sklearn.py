"""ferrograd.sklearn: scikit-learn's estimator checks, the sklearn tools
(Pipeline, GridSearchCV, cross_val_score), labels, weights, incremental and
warm-started training, pickling, custom CNN stacks and bad input."""

from __future__ import annotations

import contextlib
import copy
import pickle
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_blobs, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import (  # noqa: E402
    GridSearchCV,
    cross_val_score,
    train_test_split,
)
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from ferrograd import _core  # noqa: E402
from ferrograd import layers as L  # noqa: E402
from ferrograd.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Small, converging instances for scikit-learn's checks. float64: the
# sample-weight equivalence check compares fits on weighted and on repeated
# samples to rtol 1e-7, which float32 rounding alone exceeds (they agree to
# about 1e-6 in float32).
_CHECK = dict(
    hidden_layer_sizes=(32,),
    learning_rate_init=0.01,
    max_iter=2000,
    tol=1e-3,
    n_iter_no_change=5,
    dtype="float64",
)


@parametrize_with_checks([MLPClassifier(**_CHECK), MLPRegressor(**_CHECK)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, centers=3, n_features=4, random_state=0)
    return StandardScaler().fit_transform(X), y


@contextlib.contextmanager
def warnings_allowed(category):
    """Allows (ignores) warnings of one category inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield


def _small(**kw):
    kw.setdefault("hidden_layer_sizes", (16,))
    kw.setdefault("learning_rate_init", 0.01)
    kw.setdefault("max_iter", 300)
    kw.setdefault("tol", 1e-3)
    kw.setdefault("n_iter_no_change", 5)
    kw.setdefault("random_state", 0)
    return kw


# ---------------------------------------------------------------- real data


def test_digits_accuracy_fast(digits):
    X_train, X_test, y_train, y_test = digits
    start = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=(128,), random_state=0, early_stopping=True)
    clf.fit(X_train, y_train)
    elapsed = time.perf_counter() - start
    assert clf.score(X_test, y_test) > 0.9
    assert elapsed < 20
    assert clf.n_iter_ < 200  # stopped on the validation score
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None
    assert clf.out_activation_ == "softmax"
    assert clf.n_features_in_ == 64
    assert clf.n_outputs_ == 10 and clf.n_layers_ == 3
    assert clf.t_ == clf.n_iter_ * (len(X_train) - int(np.ceil(0.1 * len(X_train))))


def test_initialization_and_first_epoch_match_sklearn(digits):
    X_train, _, y_train, _ = digits
    # A vanishing learning rate keeps the initial weights: scikit-learn's draw.
    kw = dict(hidden_layer_sizes=(20,), random_state=3, max_iter=1, learning_rate_init=1e-12)
    with pytest.warns(ConvergenceWarning):
        ours = MLPClassifier(**kw).fit(X_train, y_train)
    with pytest.warns(ConvergenceWarning):
        ref = SkMLPClassifier(**kw).fit(X_train, y_train)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Same loss (log-loss plus scikit-learn's L2 term) at these weights.
    np.testing.assert_allclose(ours.loss_curve_[0], ref.loss_curve_[0], rtol=1e-5)


def test_regression_1d_and_2d():
    X, y = make_regression(n_samples=300, n_features=6, noise=0.1, random_state=0)
    y = y / y.std()
    reg = MLPRegressor(**_small(hidden_layer_sizes=(32,), max_iter=500)).fit(X, y)
    assert reg.predict(X).shape == (300,)
    assert reg.predict(X).dtype == np.float64
    assert reg.score(X, y) > 0.95
    assert reg.out_activation_ == "identity"
    Y = np.column_stack([y, -2 * y])
    reg2 = MLPRegressor(**_small(hidden_layer_sizes=(32,), max_iter=500)).fit(X, Y)
    assert reg2.predict(X).shape == (300, 2)
    assert reg2.n_outputs_ == 2
    assert reg2.score(X, Y) > 0.95
    col = MLPRegressor(**_small()).fit(X, y[:, None])
    assert col.predict(X).shape == (300, 1)


# ---------------------------------------------------------------- sklearn tools


def test_pipeline_gridsearch_cross_val(blobs):
    X, y = blobs
    X = X * 50 + 10  # badly scaled: the scaler matters
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**_small()))
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.95
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9
    grid = GridSearchCV(
        pipe,
        {"mlpclassifier__alpha": [1e-4, 1e-2], "mlpclassifier__hidden_layer_sizes": [(8,), (16,)]},
        cv=2,
    )
    grid.fit(X, y)
    assert grid.best_score_ > 0.9
    assert set(grid.best_params_) == {
        "mlpclassifier__alpha",
        "mlpclassifier__hidden_layer_sizes",
    }


def test_clone_and_params():
    clf = MLPClassifier(hidden_layer_sizes=(5, 3), dropout=0.2, dtype="float64")
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert "dropout=0.2" in repr(clf)
    defaults = SkMLPClassifier().get_params()
    ours = MLPClassifier().get_params()
    for key, value in defaults.items():
        assert ours[key] == value, key
    assert {k for k in ours if k not in defaults} == {"dropout", "dtype", "layers"}


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("n_classes", [2, 3])
def test_string_labels(blobs, n_classes):
    X, y = blobs
    keep = y < n_classes
    names = np.array(["cat", "dog", "emu"])[y[keep]]
    clf = MLPClassifier(**_small()).fit(X[keep], names)
    assert list(clf.classes_) == ["cat", "dog", "emu"][:n_classes]
    pred = clf.predict(X[keep])
    assert pred.dtype == names.dtype
    assert np.mean(pred == names) > 0.95
    proba = clf.predict_proba(X[keep])
    assert proba.shape == (keep.sum(), n_classes) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[keep])), proba)
    assert clf.out_activation_ == ("logistic" if n_classes == 2 else "softmax")
    assert clf.n_outputs_ == (1 if n_classes == 2 else n_classes)


def test_multilabel(blobs):
    X, y = blobs
    Y = np.column_stack([y == 0, y != 1, X[:, 0] > 0]).astype(int)
    clf = MLPClassifier(**_small(hidden_layer_sizes=(32,), max_iter=500)).fit(X, Y)
    pred = clf.predict(X)
    assert pred.shape == Y.shape
    assert np.mean(pred == Y) > 0.95
    assert clf.predict_proba(X).shape == Y.shape
    assert clf.out_activation_ == "logistic"


# ---------------------------------------------------------------- weights


def test_sample_weight_changes_the_fit(blobs):
    X, y = blobs
    yb = (y == 0).astype(int)
    plain = MLPClassifier(**_small()).fit(X, yb)
    w = np.where(yb == 1, 20.0, 1.0)
    heavy = MLPClassifier(**_small()).fit(X, yb, sample_weight=w)
    p_plain = plain.predict_proba(X)[:, 1]
    p_heavy = heavy.predict_proba(X)[:, 1]
    # Up-weighting the positives raises their predicted probability on the negatives.
    assert p_heavy[yb == 0].mean() > p_plain[yb == 0].mean()
    np.testing.assert_array_equal(w, np.where(yb == 1, 20.0, 1.0))  # not modified


def test_sample_weight_zero_equals_removal(blobs):
    X, y = blobs
    X, y = X[:120], y[:120]  # one full batch
    w = np.ones(len(X))
    w[::3] = 0.0
    kw = _small(dtype="float64", max_iter=50, tol=0.0)
    with pytest.warns(ConvergenceWarning):
        weighted = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    with pytest.warns(ConvergenceWarning):
        removed = MLPClassifier(**kw).fit(X[w > 0], y[w > 0])
    np.testing.assert_allclose(weighted.predict_proba(X), removed.predict_proba(X), rtol=1e-9)
    np.testing.assert_allclose(weighted.loss_curve_, removed.loss_curve_, rtol=1e-9)


def test_sample_weight_errors(blobs):
    X, y = blobs
    clf = MLPClassifier(**_small(max_iter=5))
    with pytest.raises(ValueError, match="zero"):
        clf.fit(X, y, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="[Nn]egative"):
        clf.fit(X, y, sample_weight=-np.ones(len(X)))
    with pytest.raises(ValueError, match="shape"):
        clf.fit(X, y, sample_weight=np.ones(3))


# ---------------------------------------------------------------- incremental


def test_partial_fit_equals_fit_epochs(blobs):
    X, y = blobs
    kw = _small(max_iter=6, tol=0.0)
    with pytest.warns(ConvergenceWarning):
        full = MLPClassifier(**kw).fit(X, y)
    inc = MLPClassifier(**kw)
    for _ in range(6):
        inc.partial_fit(X, y, classes=np.unique(y))
    assert inc.n_iter_ == 1 and inc.t_ == 6 * len(X) == full.t_
    assert inc.model_.epochs_trained == 6
    # Six one-epoch calls train exactly as one six-epoch fit.
    np.testing.assert_array_equal(inc.predict_proba(X), full.predict_proba(X))
    assert inc.loss_curve_ == full.loss_curve_


def test_epoch_loop_equals_one_ferrograd_fit(blobs):
    """fit(max_iter=k) runs k one-epoch Sequential.fit calls; together they
    train exactly as one fit(epochs=k) of the same network and optimizer."""
    from sklearn.utils import check_random_state

    X, y = blobs
    est = MLPClassifier(**_small(max_iter=4, tol=0.0, dropout=0.2))
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    ref = MLPClassifier(**_small(max_iter=4, tol=0.0, dropout=0.2))
    model = ref._build([16], 4, 3, check_random_state(0))
    opt = ref._make_optimizer(model, 1e-4 / 200)
    model.fit(X, y, "cross_entropy", opt, epochs=4, batch_size=200, verbose=0)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(est.model_.state_dict()[name], value)
    assert est.model_.epochs_trained == 4


def test_partial_fit_streaming(blobs):
    X, y = blobs
    labels = np.array(["a", "b", "c"])[y]
    clf = MLPClassifier(**_small())
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X[:50], labels[:50])
    for _ in range(15):
        for i in range(0, len(X), 60):
            clf.partial_fit(X[i : i + 60], labels[i : i + 60], classes=["a", "b", "c"])
    assert list(clf.classes_) == ["a", "b", "c"]
    assert clf.score(X, labels) > 0.95
    # A chunk holding only some of the classes is fine; unknown ones are not.
    clf.partial_fit(X[labels == "a"], labels[labels == "a"])
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(X[:5], np.array(["a", "b", "z", "a", "a"]))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:5, :2], labels[:5])
    with pytest.raises(ValueError, match="not the same"):
        clf.partial_fit(X[:5], labels[:5], classes=["a", "b"])
    reg = MLPRegressor(**_small())
    for _ in range(30):
        reg.partial_fit(X, X[:, 0] - X[:, 1])
    assert reg.score(X, X[:, 0] - X[:, 1]) > 0.9


def test_warm_start(blobs):
    X, y = blobs
    kw = _small(max_iter=5, tol=0.0)
    clf = MLPClassifier(warm_start=True, **kw)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    first = list(clf.loss_curve_)
    model = clf.model_
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert clf.model_ is model  # continued, not rebuilt
    assert clf.loss_curve_[:5] == first and len(clf.loss_curve_) == 10
    assert clf.loss_curve_[5] < first[0]
    assert clf.n_iter_ == 5 and clf.t_ == 10 * len(X)
    with pytest.raises(ValueError, match="warm_start"):
        clf.fit(X[y < 2], y[y < 2])
    cold = MLPClassifier(warm_start=False, **kw)
    with pytest.warns(ConvergenceWarning):
        cold.fit(X, y)
    model = cold.model_
    with pytest.warns(ConvergenceWarning):
        cold.fit(X, y)
    assert cold.model_ is not model and len(cold.loss_curve_) == 5


# ---------------------------------------------------------------- convergence


def test_convergence_rule_and_warning(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\)"):
        clf = MLPClassifier(**_small(max_iter=3)).fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    clf = MLPClassifier(**_small(max_iter=1000, tol=1e-2, n_iter_no_change=3)).fit(X, y)
    assert clf.n_iter_ < 1000
    best = clf.best_loss_
    assert best == min(clf.loss_curve_)
    # scikit-learn's rule, replayed on the curve: stop once the loss has not
    # beaten the best so far by tol for more than n_iter_no_change epochs.
    best, count, stop = np.inf, 0, None
    for i, loss in enumerate(clf.loss_curve_):
        count = count + 1 if loss > best - clf.tol else 0
        best = min(best, loss)
        if count > clf.n_iter_no_change:
            stop = i + 1
            break
    assert stop == clf.n_iter_
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None


def test_verbose_prints_sklearn_lines(blobs, capsys):
    X, y = blobs
    with pytest.warns(ConvergenceWarning):
        MLPClassifier(**_small(max_iter=2), verbose=True).fit(X, y)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("Iteration 1, loss = ")
    with pytest.warns(ConvergenceWarning):
        MLPClassifier(**_small(max_iter=2)).fit(X, y)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
def test_sgd(blobs, schedule):
    X, y = blobs
    clf = MLPClassifier(
        **_small(learning_rate_init=0.1, max_iter=200), solver="sgd", learning_rate=schedule
    )
    with warnings_allowed(ConvergenceWarning):
        clf.fit(X, y)
    assert clf.score(X, y) > 0.9
    if schedule == "invscaling":
        assert clf._optimizer.lr == pytest.approx(0.1 / (clf.t_ + 1) ** 0.5)


def test_dropout_and_dtype(blobs):
    X, y = blobs
    a = MLPClassifier(**_small(dropout=0.3)).fit(X, y)
    b = MLPClassifier(**_small(dropout=0.3)).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))  # deterministic
    assert any(isinstance(layer, L.Dropout) for layer in a.model_.layers)
    assert a.score(X, y) > 0.95
    c = MLPClassifier(**_small(dtype="float64")).fit(X.astype(np.float32), y)
    assert c.model_.dtype == np.float64
    assert c.coefs_[0].dtype == np.float64 and c.coefs_[0].shape == (4, 16)


# ---------------------------------------------------------------- pickling


def _roundtrips(est):
    yield pickle.loads(pickle.dumps(est))
    yield copy.deepcopy(est)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pickle_roundtrip_bitwise(blobs, dtype):
    X, y = blobs
    clf = MLPClassifier(**_small(dtype=dtype, dropout=0.1)).fit(X, np.array(["x", "y", "z"])[y])
    reg = MLPRegressor(**_small(dtype=dtype)).fit(X, X[:, :2])
    for est, method in ((clf, "predict_proba"), (reg, "predict")):
        expected = getattr(est, method)(X)
        for copy_ in _roundtrips(est):
            assert copy_.model_ is not est.model_
            np.testing.assert_array_equal(getattr(copy_, method)(X), expected)
            assert copy_.loss_curve_ == est.loss_curve_
            for name, value in est.model_.state_dict().items():
                np.testing.assert_array_equal(copy_.model_.state_dict()[name], value)
    # Training goes on after unpickling (with a fresh optimizer, documented).
    again = pickle.loads(pickle.dumps(clf))
    again.partial_fit(X, np.array(["x", "y", "z"])[y])
    assert again.score(X, np.array(["x", "y", "z"])[y]) > 0.9
    unfitted = pickle.loads(pickle.dumps(MLPClassifier(alpha=0.5)))
    assert unfitted.alpha == 0.5 and not hasattr(unfitted, "model_")


def test_pickled_continuation_matches_shuffling(blobs):
    """The generator state travels with the pickle: fit on with warm_start
    after a round trip shuffles as the original does."""
    X, y = blobs
    kw = _small(max_iter=3, tol=0.0, solver="sgd", momentum=0.0, warm_start=True)
    with pytest.warns(ConvergenceWarning):
        a = MLPClassifier(**kw).fit(X, y)
    b = pickle.loads(pickle.dumps(a))
    with pytest.warns(ConvergenceWarning):
        a.fit(X, y)
    with pytest.warns(ConvergenceWarning):
        b.fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.skipif(
    not hasattr(_core.Optimizer, "get_state"),
    reason="this ferrograd build exports no optimizer state",
)
def test_pickle_keeps_the_partial_fit_optimizer(blobs):
    X, y = blobs
    a = MLPClassifier(**_small())
    for _ in range(3):
        a.partial_fit(X, y, classes=[0, 1, 2])
    b = pickle.loads(pickle.dumps(a))
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


# ---------------------------------------------------------------- custom layers


def small_cnn(n_channels, n_outputs):
    """A module-level builder, so the estimator pickles."""
    return [
        L.Conv2D(n_channels, 8, 3, padding="same"),
        L.ReLU(),
        L.MaxPool2D(2),
        L.Flatten(),
        L.Dense(8 * 4 * 4, n_outputs),
    ]


def test_cnn_layers(digits):
    X_train, X_test, y_train, y_test = digits
    images = X_train.reshape(-1, 1, 8, 8)
    clf = MLPClassifier(
        layers=small_cnn, learning_rate_init=0.01, batch_size=64, max_iter=40, random_state=0
    )
    with warnings_allowed(ConvergenceWarning):
        clf.fit(images, y_train)
    assert isinstance(clf.model_.layers[0], L.Conv2D)
    assert clf.n_features_in_ == 1
    assert clf.score(X_test.reshape(-1, 1, 8, 8), y_test) > 0.9
    proba = clf.predict_proba(X_test.reshape(-1, 1, 8, 8))
    for copy_ in _roundtrips(clf):
        np.testing.assert_array_equal(copy_.predict_proba(X_test.reshape(-1, 1, 8, 8)), proba)
    with pytest.raises(ValueError, match="Reshape your data|dimension"):
        clf.predict(X_test[0])
    with pytest.raises(ValueError):
        MLPClassifier().fit(images, y_train)  # the built-in MLP takes 2-d X only


def test_layers_with_wrong_output_width(blobs):
    X, y = blobs
    clf = MLPClassifier(layers=lambda n_in, n_out: [L.Dense(n_in, n_out + 1)])
    with pytest.raises(ValueError, match="outputs shape"):
        clf.fit(X, y)
    reg = MLPRegressor(layers=lambda n_in, n_out: [L.Dense(n_in, 8), L.Tanh(), L.Dense(8, n_out)])
    with warnings_allowed(ConvergenceWarning):
        reg.set_params(max_iter=20, random_state=0).fit(X, X[:, 0])
    assert reg.n_layers_ == 4


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "lbfgs"}, "lbfgs.*not supported"),
        ({"solver": "newton"}, "solver"),
        ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes must be > 0"),
        ({"hidden_layer_sizes": -3}, "hidden_layer_sizes must be > 0"),
        ({"hidden_layer_sizes": "wide"}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": (2.5,)}, "hidden_layer_sizes"),
        ({"activation": "softplus"}, "activation"),
        ({"alpha": -1.0}, "alpha"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "big"}, "batch_size"),
        ({"learning_rate": "cyclic"}, "learning_rate"),
        ({"learning_rate_init": 0.0}, "learning_rate_init"),
        ({"max_iter": 0}, "max_iter"),
        ({"momentum": 1.5}, "momentum"),
        ({"beta_2": 1.0}, "beta_2"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"n_iter_no_change": 0}, "n_iter_no_change"),
        ({"dropout": 1.0}, "dropout"),
        ({"dtype": "float16"}, "dtype"),
        ({"layers": "cnn"}, "layers"),
        ({"shuffle": "yes"}, "shuffle"),
    ],
)
def test_bad_parameters(blobs, params, match):
    X, y = blobs
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**params).fit(X, y)


def test_bad_input(blobs):
    X, y = blobs
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    with pytest.raises(ValueError, match="2 classes"):
        MLPClassifier().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, X[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier().fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPRegressor(early_stopping=True, validation_fraction=0.01).fit(X[:30], y[:30])
    with pytest.raises(ValueError, match="poisson|squared_error"):
        MLPRegressor(loss="poisson").fit(X, y)
    with pytest.warns(UserWarning, match="clipped"), warnings_allowed(ConvergenceWarning):
        MLPClassifier(**_small(max_iter=2), batch_size=1000).fit(X, y)
    fitted = MLPRegressor(**_small(max_iter=300)).fit(X, y.astype(float))
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :3])
    with pytest.raises(ValueError, match="outputs"):
        fitted.partial_fit(X, np.column_stack([y, y]).astype(float))


def test_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = make_blobs(n_samples=60, centers=2, n_features=3, random_state=0)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    clf = MLPClassifier(**_small()).fit(df, y)
    assert list(clf.feature_names_in_) == ["a", "b", "c"]


# ---------------------------------------------------------------- packaging


def test_ferrograd_does_not_import_sklearn():
    code = "import sys, ferrograd; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_sklearn_names_the_extra():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "try:\n    import ferrograd.sklearn\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install 'ferrograd[sklearn]'" in out.stdout

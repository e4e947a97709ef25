"""Weighted and smoothed losses with torch's semantics, and fit's Keras-style
class_weight / sample_weight: values against formulas written out in numpy,
gradients against finite differences (float64), torch itself when it imports,
and every bad option refused with the model unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L


def log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def ce_reference(x, y, weight=None, smoothing=0.0):
    """torch's CrossEntropyLoss(weight, label_smoothing), mean reduction:
    (1 - s) * sum_i w[y_i] nll_i / W + s / C * sum_i sum_c w_c (-log p_ic) / W,
    W = sum_i w[y_i] (labels); for probability targets t: the smoothed targets
    t' = (1 - s) t + s / C, loss = -sum_i sum_c w_c t'_ic log p_ic / N."""
    lp = log_softmax(x)
    n, c = x.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=float)
    if y.ndim == 1:
        wy = w[y]
        nll = -lp[np.arange(n), y]
        smooth = -(lp * w).sum(axis=1)
        return (1 - smoothing) * (
            wy * nll
        ).sum() / wy.sum() + smoothing / c * smooth.sum() / wy.sum()
    t = (1 - smoothing) * y + smoothing / c
    return -(lp * t * w).sum() / n


def bce_reference(x, t, pos_weight):
    sig = 1 / (1 + np.exp(-x))
    return np.mean(-(pos_weight * t * np.log(sig) + (1 - t) * np.log(1 - sig)))


def numeric_grad(loss_fn, x, y, sw=None, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (loss_fn(xp, y, sw) - loss_fn(xm, y, sw)) / (2 * eps)
    return g


RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 4))
LABELS = np.array([0, 3, 1, 1, 2, 3])
PROBS = np.exp(RNG.normal(size=(6, 4)))
PROBS /= PROBS.sum(axis=1, keepdims=True)
WEIGHT = [2.0, 0.5, 1.0, 3.0]


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.7, 1.0])
@pytest.mark.parametrize("weight", [None, WEIGHT])
@pytest.mark.parametrize("targets", ["labels", "probs"])
def test_cross_entropy_options_value_and_gradient(weight, smoothing, targets) -> None:
    y = LABELS if targets == "labels" else PROBS
    loss_fn = fg.losses.CrossEntropy(weight=weight, label_smoothing=smoothing)
    value = loss_fn(X, y)
    assert value == pytest.approx(ce_reference(X, y, weight, smoothing), rel=1e-13)
    g = loss_fn.backward()
    np.testing.assert_allclose(g, numeric_grad(loss_fn, X, y), rtol=1e-6, atol=1e-9)


def test_binary_cross_entropy_pos_weight() -> None:
    t = (RNG.uniform(size=(6, 4)) > 0.5).astype(float)
    pw = np.array([3.0, 0.5, 1.0, 2.0])
    loss_fn = fg.losses.BinaryCrossEntropy(pos_weight=pw)
    assert loss_fn(X, t) == pytest.approx(bce_reference(X, t, pw), rel=1e-13)
    np.testing.assert_allclose(
        loss_fn.backward(), numeric_grad(loss_fn, X, t), rtol=1e-6, atol=1e-9
    )
    # pos_weight of ones is the plain loss
    plain = fg.losses.BinaryCrossEntropy()(X, t)
    assert fg.losses.BinaryCrossEntropy(pos_weight=np.ones(4))(X, t) == pytest.approx(
        plain, rel=1e-15
    )


@pytest.mark.parametrize(
    "loss_fn",
    [fg.losses.CrossEntropy(WEIGHT, 0.2), fg.losses.MSE(), fg.losses.BinaryCrossEntropy()],
)
def test_sample_weights_multiply_each_term(loss_fn) -> None:
    y = LABELS if loss_fn.name == "cross_entropy" else PROBS
    sw = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 3.0])
    weighted = loss_fn(X, y, sample_weight=sw)
    g = loss_fn.backward()
    # Each sample's own term times its weight, over the unweighted
    # denominator: the class weights of the labels for cross-entropy, the
    # element count otherwise (a one-sample call divides by its own share).
    if loss_fn.name == "cross_entropy":
        share = np.asarray(WEIGHT)[LABELS]
    else:
        share = np.full(len(X), X.shape[1], dtype=float)
    terms = [loss_fn(X[i : i + 1], y[i : i + 1]) * share[i] for i in range(len(X))]
    assert weighted == pytest.approx(float(np.dot(sw, terms) / share.sum()), rel=1e-12)
    numeric = numeric_grad(lambda a, b, w: loss_fn(a, b, sample_weight=w), X, y, sw)
    np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-9)


def test_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w = torch.from_numpy(X), torch.tensor(WEIGHT, dtype=torch.float64)
    for s in (0.0, 0.3):
        want = F.cross_entropy(x, torch.from_numpy(LABELS), weight=w, label_smoothing=s).item()
        assert fg.losses.CrossEntropy(WEIGHT, s)(X, LABELS) == pytest.approx(want, rel=1e-13)
        want = F.cross_entropy(x, torch.from_numpy(PROBS), weight=w, label_smoothing=s).item()
        assert fg.losses.CrossEntropy(WEIGHT, s)(X, PROBS) == pytest.approx(want, rel=1e-13)
    t = (PROBS > 0.25).astype(float)
    pw = np.array([3.0, 0.5, 1.0, 2.0])
    want = F.binary_cross_entropy_with_logits(
        x, torch.from_numpy(t), pos_weight=torch.from_numpy(pw)
    ).item()
    assert fg.losses.BinaryCrossEntropy(pw)(X, t) == pytest.approx(want, rel=1e-13)


def test_gradcheck_through_a_weighted_smoothed_loss() -> None:
    model = fg.Sequential([L.Dense(4, 6), L.Tanh(), L.Dense(6, 4)], seed=3, dtype="float64")
    report = fg.gradcheck(model, fg.losses.CrossEntropy(WEIGHT, 0.2), X, LABELS, eps=1e-5)
    assert all(v < 1e-6 for v in report.values()), report


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1) + (rng.uniform(size=n) < 0.1)).clip(0, 2).astype(np.int64)
    return x, y


def fresh(seed=1):
    return fg.Sequential([L.Dense(5, 8), L.ReLU(), L.Dense(8, 3)], seed=seed)


def fit(x, y, **kw):
    model = fresh()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    hist = model.fit(
        x, y, kw.pop("loss", "cross_entropy"), opt, epochs=2, batch_size=16, verbose=0, **kw
    )
    return model, hist


def same(a, b) -> bool:
    return all(a.state_dict()[k].tobytes() == b.state_dict()[k].tobytes() for k in a.state_dict())


def test_class_weight_is_a_weight_per_sample() -> None:
    x, y = data()
    cw = {0: 1.0, 1: 4.0, 2: 0.5}
    a, ha = fit(x, y, class_weight=cw)
    b, hb = fit(x, y, sample_weight=np.array([cw[int(c)] for c in y], np.float32))
    assert same(a, b) and ha.history == hb.history
    # A list of per-class weights, and classes left out of a mapping weigh 1.
    c, _ = fit(x, y, class_weight=[1.0, 4.0, 0.5])
    assert same(a, c)
    d, _ = fit(x, y, class_weight={1: 4.0, 2: 0.5})
    assert same(a, d)
    # class_weight and sample_weight multiply.
    sw = np.linspace(0.5, 1.5, len(y)).astype(np.float32)
    e, _ = fit(x, y, class_weight=cw, sample_weight=sw)
    f, _ = fit(x, y, sample_weight=sw * np.array([cw[int(c)] for c in y], np.float32))
    assert same(e, f)
    # And the weights change training (the comparison is not vacuous).
    plain, _ = fit(x, y)
    assert not same(a, plain)


def test_sample_weight_with_validation_split_and_one_hot_targets() -> None:
    x, y = data()
    onehot = np.eye(3, dtype=np.float32)[y]
    a, _ = fit(x, onehot, class_weight={0: 2.0})
    b, _ = fit(x, y, class_weight={0: 2.0})
    assert same(a, b)
    sw = np.ones(len(y), np.float32)
    c, hc = fit(x, y, sample_weight=sw, validation_split=0.25)
    d, hd = fit(x, y, validation_split=0.25)
    assert same(c, d) and hc.history == hd.history


def test_weighted_loss_in_fit_reports_the_weighted_mean() -> None:
    x, y = data(64)
    model = fresh()
    loss_fn = fg.losses.CrossEntropy(weight=[1.0, 2.0, 3.0], label_smoothing=0.1)
    opt = fg.optim.SGD(model.parameters(), lr=1e-9)  # nearly frozen weights
    before = model.predict(x)
    hist = model.fit(x, y, loss_fn, opt, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert hist["loss"][0] == pytest.approx(
        ce_reference(before.astype(np.float64), y, [1, 2, 3], 0.1), rel=1e-5
    )
    assert model.evaluate(x, y, loss_fn)["loss"] == pytest.approx(
        loss_fn(model.predict(x), y), rel=1e-6
    )


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (
            lambda: fg.losses.CrossEntropy(label_smoothing=1.5),
            ValueError,
            r"label_smoothing must be in \[0, 1\], got 1.5",
        ),
        (
            lambda: fg.losses.CrossEntropy(label_smoothing=-0.1),
            ValueError,
            r"label_smoothing must be in \[0, 1\]",
        ),
        (
            lambda: fg.losses.CrossEntropy(label_smoothing=float("nan")),
            ValueError,
            r"label_smoothing",
        ),
        (
            lambda: fg.losses.CrossEntropy(label_smoothing="a"),
            TypeError,
            r"label_smoothing must be a number",
        ),
        (lambda: fg.losses.CrossEntropy(weight="abc"), TypeError, r"weight must be a 1-d sequence"),
        (
            lambda: fg.losses.BinaryCrossEntropy(pos_weight=[[1.0]]),
            TypeError,
            r"pos_weight must be a 1-d",
        ),
    ],
)
def test_bad_loss_options(make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        make()


def test_bad_weights_at_use_leave_the_model_unchanged() -> None:
    x, y = data()
    model = fresh()
    state = model.state_dict()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    cases = [
        (
            dict(loss=fg.losses.CrossEntropy(weight=[1.0, 2.0])),
            r"CrossEntropy weight has 2 entries, expected 3",
        ),
        (
            dict(loss=fg.losses.CrossEntropy(weight=[1.0, -2.0, 1.0])),
            r"must be finite and >= 0, got -2 at index 1",
        ),
        (dict(class_weight=[1.0, 2.0]), r"class_weight has 2 weights, expected 3"),
        (dict(class_weight={0: -1.0}), r"class_weight must be finite and >= 0, got -1 for class 0"),
        (dict(class_weight={7: 1.0}), r"class_weight names class 7, but the model has 3 classes"),
        (dict(sample_weight=np.ones(5)), r"sample_weight has 5 entries, expected 96"),
        (
            dict(sample_weight=np.where(np.arange(96) == 4, np.nan, 1.0)),
            r"sample_weight must be finite and >= 0, got NaN at index 4",
        ),
        (
            dict(sample_weight=-np.ones(96)),
            r"sample_weight must be finite and >= 0, got -1 at index 0",
        ),
    ]
    for kw, match in cases:
        loss = kw.pop("loss", "cross_entropy")
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, loss, opt, verbose=0, **kw)
        for k, v in model.state_dict().items():
            assert v.tobytes() == state[k].tobytes(), (kw, k)
        assert opt.steps == 0
    with pytest.raises(TypeError, match="class_weight keys must be class indices"):
        model.fit(x, y, "cross_entropy", opt, verbose=0, class_weight={"cat": 1.0})
    with pytest.raises(TypeError, match="sample_weight must hold numbers"):
        model.fit(x, y, "cross_entropy", opt, verbose=0, sample_weight=["a"] * 96)

"""Training diagnostics: fit(diagnostics=True) against the same statistics
computed in numpy from a custom loop, training bits unchanged, and
fg.diagnostics.gradient_flow (no state change, verdicts, errors)."""

from __future__ import annotations

import numpy as np
import pytest

import ferrograd as fg

L = fg.layers


def data(n=60, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 2.0
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1.0)
    return x, y


def net(seed=3):
    return fg.Sequential(
        [
            L.Dense(5, 12),
            L.ReLU(),
            L.Dense(12, 7),
            L.Sigmoid(),
            L.Dense(7, 6),
            L.Tanh(),
            L.Dense(6, 3),
        ],
        seed=seed,
        dtype="float64",
    )


def numpy_hidden(state, x):
    """The three activation layers' outputs, from a state_dict."""
    h1 = np.maximum(x @ state["0.weight"].T + state["0.bias"], 0.0)
    h2 = 1.0 / (1.0 + np.exp(-(h1 @ state["2.weight"].T + state["2.bias"])))
    h3 = np.tanh(h2 @ state["4.weight"].T + state["4.bias"])
    return h1, h2, h3


def test_fit_diagnostics_equal_numpy_statistics_of_the_custom_loop():
    x, y = data()
    # Kill three ReLU units for sure: zero weights, negative bias.
    model = net()
    sd = model.state_dict()
    sd["0.weight"][:3] = 0.0
    sd["0.bias"][:3] = -1.0
    model.load_state_dict(sd)
    loop = net()
    loop.load_state_dict(sd)
    bs = 16  # 60 = 3 * 16 + 12: a short last batch
    opt = fg.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    h = model.fit(
        x, y, "cross_entropy", opt, epochs=2, batch_size=bs, shuffle=False, verbose=0,
        diagnostics=True,
    )  # fmt: skip
    d = h.diagnostics
    assert set(d) == {
        "grad_norm",
        "weight_norm",
        "update_ratio",
        "dead_fraction",
        "saturated_fraction",
    }
    assert list(d["grad_norm"]) == [n for n, _ in model.named_parameters()]
    assert set(d["dead_fraction"]) == {"1"} and set(d["saturated_fraction"]) == {"3", "5"}

    lopt = fg.optim.SGD(loop.parameters(), lr=0.2, momentum=0.9)
    loss = fg.losses.CrossEntropy()
    for epoch in range(2):
        stats: dict[str, list[list[float]]] = {}
        for i in range(0, len(x), bs):
            xb, yb = x[i : i + bs], y[i : i + bs]
            before = loop.state_dict()
            h1, h2, h3 = numpy_hidden(before, xb)
            lopt.zero_grad()
            loss(loop.forward(xb, training=True), yb)
            loop.backward(loss.backward())
            grads = {n: p.grad for n, p in loop.named_parameters()}
            lopt.step()
            after = loop.state_dict()
            for n in grads:
                w = np.linalg.norm(before[n])
                r = np.linalg.norm(after[n] - before[n]) / w if w > 0 else np.nan
                stats.setdefault(n, []).append([np.linalg.norm(grads[n]), w, r])
            stats.setdefault("dead", []).append([np.mean((h1 <= 0).all(axis=0))])
            stats.setdefault("sig", []).append([np.mean((h2 < 0.01) | (h2 > 0.99))])
            stats.setdefault("tanh", []).append([np.mean(np.abs(h3) > 0.99)])
        for n in grads:
            s = np.array(stats[n])
            for j, key in enumerate(("grad_norm", "weight_norm")):
                assert d[key][n][epoch] == pytest.approx(s[:, j].mean(), rel=1e-10), (key, n)
            ratios = s[:, 2][~np.isnan(s[:, 2])]
            want = ratios.mean() if len(ratios) else np.nan
            np.testing.assert_allclose(d["update_ratio"][n][epoch], want, rtol=1e-9, err_msg=n)
        assert d["dead_fraction"]["1"][epoch] == pytest.approx(np.mean(stats["dead"]), abs=1e-12)
        assert d["dead_fraction"]["1"][epoch] >= 3 / 12
        assert d["saturated_fraction"]["3"][epoch] == pytest.approx(
            np.mean(stats["sig"]), abs=1e-12
        )
        assert d["saturated_fraction"]["5"][epoch] == pytest.approx(
            np.mean(stats["tanh"]), abs=1e-12
        )
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, loop.state_dict()[k], err_msg=k)


def cnn(seed=0):
    return fg.Sequential(
        [
            L.Conv2D(1, 4, 3, padding=1),
            L.ReLU(),
            L.Conv2D(4, 6, 3, padding=1),
            L.BatchNorm2D(6),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dropout(0.2),
            L.Dense(6 * 16, 3),
        ],
        seed=seed,
    )


def test_diagnostics_leave_training_bits_unchanged_and_cover_cnns():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    runs = []
    for diag in (False, True):
        m = cnn()
        h = m.fit(
            x, y, "cross_entropy", "adam", epochs=2, batch_size=8, verbose=0, diagnostics=diag
        )
        runs.append((m.state_dict(), h))
    for k, v in runs[0][0].items():
        np.testing.assert_array_equal(v, runs[1][0][k], err_msg=k)
    assert runs[0][1].diagnostics == {}
    d = runs[1][1].diagnostics
    assert set(d["dead_fraction"]) == {"1", "4"}
    assert "saturated_fraction" not in d
    assert "3.weight" in d["grad_norm"] and "8.bias" in d["update_ratio"]
    for stat in d.values():
        for values in stat.values():
            assert len(values) == 2
    # Channels are the units: 5 steps per epoch, 4 channels.
    assert (d["dead_fraction"]["1"][0] * 4 * 5) == pytest.approx(
        round(d["dead_fraction"]["1"][0] * 20)
    )
    assert all(0 < v < 1 for v in d["update_ratio"]["0.weight"])


def deep(act, init="xavier", batchnorm=False, depth=10, width=32):
    layers: list = []
    d = 20
    for _ in range(depth - 1):
        layers.append(L.Dense(d, width, init=init))
        if batchnorm:
            layers.append(L.BatchNorm1D(width))
        layers.append(act())
        d = width
    layers.append(L.Dense(d, 2))
    return fg.Sequential(layers, seed=0)


def test_gradient_flow_verdicts_and_no_state_change():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    sig = deep(L.Sigmoid)
    report = fg.diagnostics.gradient_flow(sig, x, y, "cross_entropy")
    assert report.verdict.startswith("vanishing: the first layer's gradient norm is")
    first, last = report.grad_norm["0.weight"], report.grad_norm["16.weight"]
    assert first < 1e-2 * last
    assert list(report.saturated_fraction) == [str(i) for i in range(1, 18, 2)]
    text = str(report)
    assert "0.weight" in text and "Sigmoid" in text and "vanishing" in text

    relu = deep(L.ReLU, init="he")
    r2 = fg.diagnostics.gradient_flow(relu, x, y, fg.losses.CrossEntropy())
    assert r2.verdict.startswith("healthy")
    assert set(r2.dead_fraction) == {str(i) for i in range(1, 18, 2)}

    bn = deep(L.Sigmoid, batchnorm=True)
    bn.fit(x, y, "cross_entropy", "adam", epochs=1, batch_size=64, verbose=0)
    state, rng_state = bn.state_dict(), bn._core.get_rng_state()
    grads = [p.grad for p in bn.parameters()]
    r3 = fg.diagnostics.gradient_flow(bn, x[:64], y[:64], "cross_entropy")
    assert r3.grad_norm["0.weight"] > 0
    for k, v in bn.state_dict().items():  # running statistics included
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    for p, g in zip(bn.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)
    assert bn._core.get_rng_state() == rng_state
    # The same batch gives the same report (fixed dropout mask, no drift).
    again = fg.diagnostics.gradient_flow(bn, x[:64], y[:64], "cross_entropy")
    assert again.grad_norm == r3.grad_norm


def test_gradient_flow_norms_equal_the_step_api():
    x, y = data()
    model = net()
    report = fg.diagnostics.gradient_flow(model, x, y, "cross_entropy")
    loss = fg.losses.CrossEntropy()
    model.zero_grad()
    loss(model.forward(x, training=True), y)
    model.backward(loss.backward())
    for n, p in model.named_parameters():
        assert report.grad_norm[n] == pytest.approx(np.linalg.norm(p.grad), rel=1e-12)
        assert report.weight_norm[n] == pytest.approx(np.linalg.norm(p.value), rel=1e-12)


def test_diagnostics_errors():
    x, y = data()
    with pytest.raises(TypeError, match="Sequential"):
        fg.diagnostics.gradient_flow("model", x, y, "cross_entropy")
    with pytest.raises(fg.ShapeError):
        fg.diagnostics.gradient_flow(net(), x[:, :3], y, "cross_entropy")
    with pytest.raises(ValueError, match="label"):
        fg.diagnostics.gradient_flow(net(), x, y + 5, "cross_entropy")
    with pytest.raises(TypeError, match="diagnostics must be a bool"):
        net().fit(x, y, "cross_entropy", "sgd", verbose=0, diagnostics="yes")

"""Graph models through the core binding: a graph's JSON in, gradients
checked against finite differences (float64), several inputs and outputs
with loss weights, a chain graph training bitwise like the Sequential of
the same layers, and bad graphs refused when the model is built.

These tests drive ``ferrograd._core.Model(graph=...)`` directly; the
Python functional API (``fg.Input``, ``fg.Model``) is tested in
``tests/test_functional.py``."""

import json

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import _core


def dense(i, o):
    return {"type": "Dense", "in_features": i, "out_features": o, "bias": True, "init": "xavier"}


def graph(inputs, layers, nodes, outputs):
    return json.dumps(
        {
            "inputs": [{"name": n, "shape": s} for n, s in inputs],
            "layers": [{"name": n, "spec": s} for n, s in layers],
            "nodes": [{"layer": layer, "inputs": ins} for layer, ins in nodes],
            "outputs": outputs,
        }
    )


def residual_two_heads():
    """Two inputs; a residual block with fan-out; a shared layer; a
    concatenation; two outputs."""
    return graph(
        [("image", [4]), ("table", [3])],
        [
            ("a", dense(4, 3)),  # 0
            ("b", dense(3, 3)),  # 1
            ("add", {"type": "Add"}),  # 2
            ("tanh", {"type": "Tanh"}),  # 3
            ("shared", dense(3, 3)),  # 4
            ("cat", {"type": "Concatenate", "axis": -1}),  # 5
            ("mul", {"type": "Multiply"}),  # 6
            ("class", dense(6, 4)),  # 7
            ("value", dense(3, 2)),  # 8
        ],
        [
            (0, [0]),  # value 2
            (1, [1]),  # 3
            (2, [2, 3]),  # 4: a + b
            (3, [4]),  # 5
            (4, [5]),  # 6: shared(tanh)
            (4, [6]),  # 7: shared again
            (6, [7, 4]),  # 8: product with the sum (fan-out)
            (5, [8, 3]),  # 9: concat with b
            (7, [9]),  # 10: class head
            (8, [8]),  # 11: value head
        ],
        [10, 11],
    )


def test_graph_gradients_float64():
    m = _core.Model([], "float64", 3, True, graph=residual_two_heads())
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    labels, values = np.arange(6) % 4, rng.normal(size=(6, 2))
    report = m.gradcheck(
        [x1, x2], [labels, values], '["cross_entropy", "mse"]', 1e-6, loss_weights=[0.5, 2.0]
    )
    names = [r[0] for r in report]
    assert names == [
        f"{n}.{p}" for n in ("a", "b", "shared", "class", "value") for p in ("weight", "bias")
    ]
    for name, rel, _ in report:
        assert rel < 1e-5, (name, rel)


def test_graph_predict_and_weighted_loss():
    m = _core.Model([], "float64", 3, True, graph=residual_two_heads())
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(5, 4)), rng.normal(size=(5, 3))]
    out = m.predict(x, 2)
    assert isinstance(out, list) and [o.shape for o in out] == [(5, 4), (5, 2)]
    y = [np.arange(5) % 4, rng.normal(size=(5, 2))]
    one, _, _ = m.evaluate(x, y, '["cross_entropy", "mse"]', 5, loss_weights=[1.0, 0.0])
    two, _, _ = m.evaluate(x, y, '["cross_entropy", "mse"]', 5, loss_weights=[0.0, 1.0])
    both, _, outputs = m.evaluate(x, y, '["cross_entropy", "mse"]', 5, loss_weights=[0.5, 3.0])
    assert both == pytest.approx(0.5 * one + 3.0 * two)
    mse = np.mean((out[1] - y[1]) ** 2)
    assert two == pytest.approx(mse)
    # Each output's own (unweighted) loss, and accuracy for the classifier only.
    assert outputs[0][0] == pytest.approx(one) and outputs[1] == (pytest.approx(mse), None)
    assert outputs[0][1] == pytest.approx(np.mean(out[0].argmax(axis=1) == y[0]))


def test_chain_graph_trains_like_sequential():
    layers = [fg.layers.Dense(6, 8), fg.layers.ReLU(), fg.layers.Dense(8, 3)]
    seq = fg.Sequential(layers, seed=4)
    specs = [json.loads(ly._spec()) for ly in layers]
    g = graph(
        [("x", [6])],
        [(f"l{i}", s) for i, s in enumerate(specs)],
        [(i, [i]) for i in range(3)],
        [3],
    )
    core = _core.Model([], "float32", 4, True, graph=g)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    opts = {"loss": "cross_entropy", "batch_size": 8, "shuffle": True, "epoch": 1}
    for model in (seq._core, core):
        cfg = {
            "lr": 0.05,
            "momentum": 0.9,
            "dampening": 0.0,
            "nesterov": False,
            "weight_decay": 0.0,
        }
        opt = _core.Optimizer(model, "SGD", cfg, list(range(4)))
        for _ in range(3):
            model.train_epoch(x, y, optimizer=opt, **opts)
    for i in range(4):
        np.testing.assert_array_equal(seq._core.get_param(i), core.get_param(i))
    assert [n for n, _ in core.param_info()] == ["l0.weight", "l0.bias", "l2.weight", "l2.bias"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g["nodes"].append({"layer": 0, "inputs": [0]}), "does not lead to any output"),
        (
            lambda g: g["inputs"].append({"name": "extra", "shape": [4]}),
            "is not used by any output",
        ),
        (lambda g: g["layers"][1].update(name="a"), '"a" is used twice'),
        (lambda g: g["nodes"][2].update(inputs=[2, 0]), "fed by layer"),
    ],
)
def test_bad_graphs_refused(change, message):
    g = json.loads(residual_two_heads())
    g["inputs"] = g["inputs"][:1]
    g["layers"] = [
        {"name": "a", "spec": dense(4, 3)},
        {"name": "b", "spec": dense(3, 3)},
        {"name": "add", "spec": {"type": "Add"}},
    ]
    g["nodes"] = [
        {"layer": 0, "inputs": [0]},
        {"layer": 1, "inputs": [1]},
        {"layer": 2, "inputs": [1, 2]},
    ]
    g["outputs"] = [3]
    _core.Model([], "float32", 0, True, graph=json.dumps(g))  # the base graph is fine
    change(g)
    with pytest.raises(ValueError, match=message):
        _core.Model([], "float32", 0, True, graph=json.dumps(g))


def test_input_errors_name_the_problem():
    m = _core.Model([], "float64", 3, True, graph=residual_two_heads())
    x = [np.zeros((5, 4)), np.zeros((4, 3))]
    with pytest.raises(ValueError, match="different sample counts"):
        m.predict(x, 2)
    with pytest.raises(ValueError, match="2 inputs"):
        m.predict(np.zeros((5, 4)), 2)

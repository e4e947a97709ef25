"""The functional API: ``fg.Input``, layers called on nodes, merge layers,
``fg.Model``: training, gradients (float64 finite differences), the same
weights as the equivalent Sequential, several inputs and outputs, shared
layers, bad graphs refused when built, files and pickling, torch parity
of a ResNet block, and the README's snippet."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

README = Path(__file__).resolve().parent.parent / "README.md"


def residual_mlp(dtype="float32", seed=0, width=16):
    x = fg.Input((8,), dtype=dtype, name="x")
    h = L.Dense(8, width, name="fc1")(x)
    h = L.ReLU(name="act")(h)
    h = L.Dense(width, 8, name="fc2")(h)
    s = L.Add(name="skip")([x, h])
    y = L.Dense(8, 1, name="head")(s)
    return fg.Model(x, y, seed=seed)


def toy(n=256, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(dtype)
    y = (np.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3]).astype(dtype)
    return x, y


# ---------------------------------------------------------------- nodes and layers


def test_input_and_call_shapes():
    x = fg.Input((1, 6, 6), name="img")
    assert isinstance(x, fg.Node) and x.shape == (1, 6, 6) and x.is_input
    c = L.Conv2D(1, 4, 3, padding=1)(x)
    assert c.shape == (4, 6, 6) and c.inputs == (x,)
    p = L.MaxPool2D(2)(c)
    f = L.Flatten()(p)
    assert p.shape == (4, 3, 3) and f.shape == (36,)
    assert L.Concatenate(axis=1)([c, c]).shape == (8, 6, 6)
    assert L.Concatenate(axis=-1)([c, c]).shape == (4, 6, 12)
    assert L.Concatenate(axis=2)([c, c]).shape == (4, 12, 6)


def test_shape_errors_raise_at_the_call_naming_layer_and_shapes():
    x = fg.Input((4,), name="feat")
    with pytest.raises(ValueError, match=r'Dense "bad" called on input "feat" \(N, 4\).*5'):
        L.Dense(5, 3, name="bad")(x)
    h = L.Dense(4, 3, name="h3")(x)
    with pytest.raises(fg.ShapeError, match=r'Add "plus" needs inputs of the same shape.*"h3"'):
        L.Add(name="plus")([x, h])
    with pytest.raises(ValueError, match="exactly 2 inputs"):
        L.Subtract()([x, x, x])
    with pytest.raises(ValueError, match="at least 2 inputs"):
        L.Multiply()([x])
    with pytest.raises(fg.ShapeError, match="match except on that axis"):
        L.Concatenate(axis=1)([fg.Input((2, 3)), fg.Input((2, 4))])
    with pytest.raises(ValueError, match="out of range"):
        L.Concatenate(axis=3)([x, h])
    with pytest.raises(ValueError, match="batch dimension"):
        L.Concatenate(axis=0)
    with pytest.raises(TypeError, match="list of nodes"):
        L.Add()(x)
    with pytest.raises(TypeError, match="expected a node"):
        L.Dense(4, 3)(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="different dtypes"):
        L.Add()([x, fg.Input((4,), dtype="float64")])


def test_default_names_follow_keras_scheme():
    first = L.Tanh()
    second = L.Tanh()
    base = first.name
    assert base.startswith("tanh")
    n = 0 if base == "tanh" else int(base.rsplit("_", 1)[1])
    assert second.name == f"tanh_{n + 1}"
    assert L.Dense(2, 2, name="block.fc").name == "block.fc"  # dots allowed
    with pytest.raises(ValueError, match="must not be empty"):
        L.ReLU(name="")
    with pytest.raises(TypeError, match="name must be a string"):
        L.ReLU(name=3)


# ---------------------------------------------------------------- training and gradients


def test_residual_mlp_trains_and_its_gradients_check():
    model = residual_mlp(seed=1)
    x, y = toy()
    before = model.evaluate(x, y, "mse")["loss"]
    opt = fg.optim.Adam(model.parameters(), lr=1e-2)
    hist = model.fit(x, y, "mse", opt, epochs=30, batch_size=32, verbose=0)
    after = model.evaluate(x, y, "mse")["loss"]
    assert after < 0.2 * before, (before, after)
    assert hist["loss"][-1] < hist["loss"][0]
    assert list(model.state_dict()) == [
        f"{n}.{p}" for n in ("fc1", "fc2", "head") for p in ("weight", "bias")
    ]
    m64 = residual_mlp(dtype="float64", seed=2, width=6)
    x64, y64 = toy(12, seed=3, dtype=np.float64)
    report = fg.gradcheck(m64, "mse", x64, y64)
    assert set(report) == {f"{n}.{p}" for n in ("fc1", "fc2", "head") for p in ("weight", "bias")}
    assert max(report.values()) < 1e-6, report


def test_predict_matches_numpy_with_the_state_dict():
    model = residual_mlp(dtype="float64", seed=3)
    x, _ = toy(10, dtype=np.float64)
    w = model.state_dict()
    h = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0) @ w["fc2.weight"].T + w["fc2.bias"]
    ref = (x + h) @ w["head.weight"].T + w["head.bias"]
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.forward(x), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.predict({"x": x}), ref, rtol=1e-12, atol=1e-12)


def test_chain_model_equals_sequential_bitwise_after_fit():
    def layers():
        return [L.Dense(8, 12), L.ReLU(), L.Dropout(0.2), L.Dense(12, 3)]

    seq = fg.Sequential(layers(), seed=7)
    x_in = fg.Input((8,))
    node = x_in
    for layer in layers():
        node = layer(node)
    graph = fg.Model(x_in, node, seed=7)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=100)
    for model in (seq, graph):
        opt = fg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.fit(x, y, "cross_entropy", opt, epochs=3, batch_size=16, verbose=0)
    a, b = list(seq.state_dict().values()), list(graph.state_dict().values())
    assert len(a) == len(b) == 4
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert list(graph.state_dict())[0].endswith(".weight")
    np.testing.assert_array_equal(seq.predict(x), graph.predict(x))


def test_two_inputs_concatenate():
    a = fg.Input((3,), name="a", dtype="float64")
    b = fg.Input((2,), name="b", dtype="float64")
    h = L.Concatenate(name="cat")([L.Dense(3, 4, name="da")(a), b])
    out = L.Dense(6, 1, name="out")(L.Tanh()(h))
    model = fg.Model([a, b], out, seed=0)
    rng = np.random.default_rng(5)
    xa, xb = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    y = (xa[:, :1] - xb[:, 1:]) * 0.5
    w = model.state_dict()
    cat = np.concatenate([xa @ w["da.weight"].T + w["da.bias"], xb], axis=1)
    ref = np.tanh(cat) @ w["out.weight"].T + w["out.bias"]
    np.testing.assert_allclose(model.predict([xa, xb]), ref, rtol=1e-12)
    np.testing.assert_allclose(model.predict({"b": xb, "a": xa}), ref, rtol=1e-12)
    report = fg.gradcheck(model, "mse", [xa[:8], xb[:8]], y[:8])
    assert max(report.values()) < 1e-6, report
    before = model.evaluate([xa, xb], y, "mse")["loss"]
    model.fit({"a": xa, "b": xb}, y, "mse", "adam", epochs=20, batch_size=8, verbose=0)
    assert model.evaluate([xa, xb], y, "mse")["loss"] < before
    with pytest.raises(ValueError, match="missing key"):
        model.predict({"a": xa})
    with pytest.raises(ValueError, match="unknown key"):
        model.predict({"a": xa, "b": xb, "c": xb})
    with pytest.raises(ValueError, match="expected 2"):
        model.predict([xa])
    with pytest.raises(fg.ShapeError, match='input "b" expects samples of shape'):
        model.predict([xa, xa])


def two_heads(dtype="float64", seed=0):
    x = fg.Input((5,), dtype=dtype, name="x")
    trunk = L.ReLU()(L.Dense(5, 8, name="trunk")(x))
    cls = L.Dense(8, 3, name="cls")(trunk)
    reg = L.Dense(8, 2, name="reg")(trunk)
    return fg.Model(x, [cls, reg], seed=seed)


def test_two_outputs_with_loss_weights():
    model = two_heads()
    assert model.output_names == ["cls", "reg"]
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 5))
    labels, values = rng.integers(0, 3, size=30), rng.normal(size=(30, 2))
    out = model.predict(x)
    assert isinstance(out, list) and [o.shape for o in out] == [(30, 3), (30, 2)]
    losses = ["cross_entropy", "mse"]
    ce = model.evaluate(x, [labels, values], losses, loss_weights=[1.0, 0.0])["loss"]
    mse = model.evaluate(x, [labels, values], losses, loss_weights=[0.0, 1.0])["loss"]
    assert mse == pytest.approx(np.mean((out[1] - values) ** 2))
    total = model.evaluate(
        x,
        {"reg": values, "cls": labels},
        {"reg": "mse", "cls": fg.losses.CrossEntropy()},
        loss_weights={"cls": 0.5, "reg": 3.0},
    )
    assert total["loss"] == pytest.approx(0.5 * ce + 3.0 * mse)
    report = fg.gradcheck(model, losses, x[:6], [labels[:6], values[:6]], loss_weights=[0.5, 3.0])
    assert max(report.values()) < 1e-6, report
    hist = model.fit(
        x, [labels, values], losses, "adam", epochs=5, loss_weights=[0.5, 3.0], verbose=0
    )
    assert set(hist.history) == {"loss", "cls_loss", "cls_accuracy", "reg_loss"}  # Keras's names
    assert hist["loss"][-1] < hist["loss"][0]
    with pytest.raises(ValueError, match="loss_weights: expected 2"):
        model.evaluate(x, [labels, values], losses, loss_weights=[1.0])
    with pytest.raises(ValueError, match="one output only"):
        model.evaluate(x, [labels, values], losses, metrics=["accuracy"])
    with pytest.raises(ValueError, match="applies to graph models"):
        fg.Sequential([L.Dense(5, 1)]).evaluate(x, values[:, :1], "mse", loss_weights=[1.0])


def test_shared_layer_is_one_set_of_weights():
    shared = L.Dense(4, 4, name="shared")
    x = fg.Input((4,), dtype="float64")
    h = shared(L.Tanh()(shared(x)))
    model = fg.Model(x, L.Dense(4, 1, name="o")(h), seed=2)
    assert list(model.state_dict()) == ["shared.weight", "shared.bias", "o.weight", "o.bias"]
    assert model.layers.count(shared) == 1
    rng = np.random.default_rng(7)
    xs, ys = rng.normal(size=(8, 4)), rng.normal(size=(8, 1))
    w = model.state_dict()

    def lin(v):
        return v @ w["shared.weight"].T + w["shared.bias"]

    ref = lin(np.tanh(lin(xs))) @ w["o.weight"].T + w["o.bias"]
    np.testing.assert_allclose(model.predict(xs), ref, rtol=1e-12)
    report = fg.gradcheck(model, "mse", xs, ys)
    assert max(report.values()) < 1e-6, report


# ---------------------------------------------------------------- bad graphs


def test_bad_graphs_are_refused_when_built():
    x = fg.Input((4,), name="x")
    other = fg.Input((4,), name="other")
    h = L.Dense(4, 2)(x)
    with pytest.raises(ValueError, match=r'output "dense.*" is not reachable from the model'):
        fg.Model(x, L.Dense(4, 2)(other))
    mixed = L.Add()([L.Dense(4, 2)(other), h])
    with pytest.raises(ValueError, match=r'depends on input\(s\) "other".*another fg.Input'):
        fg.Model(x, mixed)
    with pytest.raises(ValueError, match='input "other" is not used by any output'):
        fg.Model([x, other], h)
    with pytest.raises(ValueError, match="is the input"):
        fg.Model(x, x)
    with pytest.raises(ValueError, match="listed twice"):
        fg.Model([x, x], h)
    with pytest.raises(ValueError, match="layer output, not an fg.Input"):
        fg.Model(h, L.ReLU()(h))
    twin = L.Dense(2, 2, name="twin")(L.Dense(4, 2, name="twin")(x))
    with pytest.raises(ValueError, match='the name "twin" is used twice'):
        fg.Model(x, twin)
    with pytest.raises(ValueError, match='the name "x" is used twice'):
        fg.Model(x, L.ReLU(name="x")(x))
    with pytest.raises(TypeError, match="expected a node"):
        fg.Model(x, [h, "y"])
    with pytest.raises(ValueError, match="must not be empty"):
        fg.Model([], h)
    x64 = fg.Input((4,), dtype="float64", name="x64")
    with pytest.raises(ValueError, match="different dtypes"):
        fg.Model([x, x64], [h, L.ReLU()(x64)])


# ---------------------------------------------------------------- files


def test_save_load_and_pickle_round_trips(tmp_path):
    model = two_heads(dtype="float32", seed=3)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    y = [rng.integers(0, 3, size=20), rng.normal(size=(20, 2)).astype(np.float32)]
    opt = fg.optim.Adam(model.parameters(), lr=1e-2)
    model.fit(x, y, ["cross_entropy", "mse"], opt, epochs=2, verbose=0)
    path = tmp_path / "m.safetensors"
    model.save(path, optimizer=opt)
    for other in (
        fg.load(path),
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model),
    ):
        assert isinstance(other, fg.Model)
        assert other.output_names == model.output_names and other.name == model.name
        assert other.epochs_trained == 2
        for a, b in zip(model.predict(x), other.predict(x)):
            np.testing.assert_array_equal(a, b)
    # Training on from the file equals training on.
    loaded, lopt = fg.load(path, with_optimizer=True)
    for m, o in ((model, opt), (loaded, lopt)):
        m.fit(x, y, ["cross_entropy", "mse"], o, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- torch parity


def test_resnet_basic_block_matches_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.proj = nn.Conv2d(3, 8, 1, stride=2, bias=False)
            self.bnp = nn.BatchNorm2d(8)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            return torch.relu(h + self.bnp(self.proj(x)))

    x_in = fg.Input((3, 8, 8), dtype="float64")
    h = L.Conv2D(3, 8, 3, stride=2, padding=1, bias=False, name="conv1")(x_in)
    h = L.ReLU()(L.BatchNorm2D(8, name="bn1")(h))
    h = L.BatchNorm2D(8, name="bn2")(L.Conv2D(8, 8, 3, padding=1, bias=False, name="conv2")(h))
    p = L.BatchNorm2D(8, name="bnp")(L.Conv2D(3, 8, 1, stride=2, bias=False, name="proj")(x_in))
    model = fg.Model(x_in, L.ReLU()(L.Add()([h, p])), seed=0)

    torch.manual_seed(0)
    block = Block().double()
    assert set(model.state_dict()) == set(block.state_dict())
    model.load_state_dict({k: v.detach().numpy() for k, v in block.state_dict().items()})
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 3, 8, 8))
    grad = rng.normal(size=(4, 8, 4, 4))
    out = model.forward(x, training=True)
    model.zero_grad()
    model.backward(grad)
    xt = torch.tensor(x)
    ref = block.train()(xt)
    ref.backward(torch.tensor(grad))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = dict(block.named_parameters())
    for name, param in model.named_parameters():
        np.testing.assert_allclose(
            param.grad, grads[name].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name
        )
    for name, value in block.state_dict().items():  # running statistics too
        np.testing.assert_allclose(model.state_dict()[name], value.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- README


def test_readme_graph_models_snippet_runs():
    text = README.read_text()
    section = text.split("## Graph models", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)


def test_summary_repr_and_single_output_options():
    model = residual_mlp(seed=5)
    text = model.summary(print_fn=None)
    for row in ("x (Input)", "fc1 (Dense)", "skip (Add)", "head (Dense)", "x, fc2"):
        assert row in text
    assert f"Total params: {model.num_params():,}" in text
    assert "outputs=['head']" in repr(model)
    x, y = toy(64)
    labels = (y[:, 0] > 0).astype(np.int64)
    clf_head = L.Dense(8, 2, name="clf")(fg.Input((8,), name="xin"))
    clf = fg.Model(clf_head.inputs[0], clf_head, seed=0)
    hist = clf.fit(x, labels, "cross_entropy", "adam", class_weight={1: 2.0}, verbose=0)
    assert set(hist.history) == {"loss", "accuracy"}
    with pytest.raises(ValueError, match="Sequential models only"):
        model.fit(x, y, "mse", "adam", distributed=True, verbose=0)
    with pytest.raises(ValueError, match="one output only"):
        two_heads().fit(
            x[:, :5].astype(np.float64),
            [labels, np.zeros((64, 2))],
            ["cross_entropy", "mse"],
            "sgd",
            class_weight={1: 2.0},
            verbose=0,
        )


def test_a_malformed_graph_in_a_file_is_refused(tmp_path):
    from ferrograd import serialization

    model = residual_mlp(seed=6)
    tensors, meta = serialization.model_contents(model)
    info = json.loads(meta["ferrograd"])
    info["architecture"]["graph"]["nodes"][0]["layer"] = 99
    meta["ferrograd"] = json.dumps(info)
    with pytest.raises(ValueError, match="the graph is malformed"):
        serialization.model_from_contents(dict(tensors), meta, "bad.safetensors")


# ----------------------------------------------------------- models as blocks


def test_sequential_and_model_called_as_blocks_nest_their_names_and_weights():
    """A Sequential called on a node is a block named as torch's nested
    modules (``layer1.0.weight``), starting from the block's own weights; a
    Model called on nodes nests its layers under its name; ``model(x)`` on
    data is still the forward pass."""
    block = fg.Sequential([L.Dense(4, 8), L.ReLU(), L.Dense(8, 4)], name="layer1", seed=1)
    x = fg.Input((4,), name="x")
    y = L.Dense(4, 2, name="head")(L.Add()([x, block(x)]))
    model = fg.Model(x, y, seed=0, name="trunk")
    assert list(model.state_dict()) == [
        "layer1.0.weight", "layer1.0.bias", "layer1.2.weight", "layer1.2.bias",
        "head.weight", "head.bias",
    ]  # fmt: skip
    for key, value in block.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[f"layer1.{key}"], value)
    data = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    h = np.maximum(data @ block.state_dict()["0.weight"].T + block.state_dict()["0.bias"], 0)
    h = h @ block.state_dict()["2.weight"].T + block.state_dict()["2.bias"]
    sd = model.state_dict()
    want = (data + h) @ sd["head.weight"].T + sd["head.bias"]
    np.testing.assert_allclose(model.predict(data), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(block(data), h, rtol=1e-5, atol=1e-6)  # data: forward

    x2 = fg.Input((4,), name="x2")
    outer = fg.Model(x2, L.ReLU(name="act")(model(x2)), seed=3)
    assert [k for k in outer.state_dict()][:2] == ["trunk.layer1.0.weight", "trunk.layer1.0.bias"]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(outer.state_dict()[f"trunk.{key}"], value)
    np.testing.assert_allclose(outer.predict(data), np.maximum(model.predict(data), 0), rtol=1e-6)


def test_block_call_errors_name_the_problem():
    block = fg.Sequential([L.Dense(4, 2)], name="blk")
    x = fg.Input((3,), name="x3")
    with pytest.raises(ValueError, match="Dense"):
        block(x)  # 3 features into Dense(4, 2): the shape error names the layer
    x4 = fg.Input((4,), name="x4")
    inner = fg.Model(x4, block(x4), name="inner")
    with pytest.raises(ValueError, match='Model "inner" takes 1 input'):
        inner([x4, x4])
    with pytest.raises(ValueError, match='input "x4" takes samples of shape'):
        inner(fg.Input((5,)))
    with pytest.raises(TypeError, match="training= applies to data"):
        block(x4, training=True)
    # One block called twice shares its weights, as one layer called twice.
    y = fg.Input((4,), name="y")
    twice = fg.Model(y, L.Add()([block(y), block(y)]))
    assert list(twice.state_dict()) == ["blk.0.weight", "blk.0.bias"]


def test_torch_module_names_reproduced_exactly():
    """A torch model with nested modules loads into the same architecture
    written with ferrograd and matching names, and predicts the same."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer1 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
            self.head = nn.Linear(4, 2)

        def forward(self, t):
            return self.head(t + self.layer1(t))

    net = Net().double()
    x = fg.Input((4,), dtype="float64")
    block = fg.Sequential([L.Dense(4, 8), L.ReLU(), L.Dense(8, 4)], name="layer1")
    model = fg.Model(x, L.Dense(4, 2, name="head")(L.Add()([x, block(x)])))
    model.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    data = np.random.default_rng(1).normal(size=(6, 4))
    want = net(torch.from_numpy(data)).detach().numpy()
    np.testing.assert_allclose(model.predict(data), want, rtol=1e-12, atol=1e-12)


def test_logs_report_each_outputs_own_loss_as_keras_names_it():
    """With several outputs, ``loss`` is the weighted total and each output
    adds ``{name}_loss`` (unweighted) and, for classification,
    ``{name}_accuracy``; validation likewise with ``val_``; evaluate too."""
    x = fg.Input((4,), name="x")
    h = L.ReLU()(L.Dense(4, 8, name="trunk")(x))
    cls, reg = L.Dense(8, 3, name="cls")(h), L.Dense(8, 1, name="reg")(h)
    model = fg.Model(x, [cls, reg], seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = {"cls": (X[:, 0] > 0).astype(np.int64), "reg": X[:, 1:2]}
    seen = []
    cb = fg.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(dict(logs)))
    hist = model.fit(X, y, {"cls": "cross_entropy", "reg": "mse"}, "adam", epochs=2,
                     batch_size=16, loss_weights=[1.0, 0.5], validation_data=(X, y),
                     verbose=0, callbacks=[cb])  # fmt: skip
    for key in ("loss", "cls_loss", "cls_accuracy", "reg_loss", "val_loss", "val_cls_loss",
                "val_cls_accuracy", "val_reg_loss"):  # fmt: skip
        assert len(hist[key]) == 2 and key in seen[-1], key
    assert "reg_accuracy" not in seen[-1]
    ev = model.evaluate(X, y, {"cls": "cross_entropy", "reg": "mse"}, loss_weights=[1.0, 0.5])
    assert ev["loss"] == pytest.approx(ev["cls_loss"] + 0.5 * ev["reg_loss"], rel=1e-5)
    assert ev == pytest.approx(
        {k[4:]: v[-1] for k, v in hist.history.items() if k.startswith("val_")}
    )
    probs, score = model.predict(X)
    assert ev["reg_loss"] == pytest.approx(float(np.mean((score - y["reg"]) ** 2)), rel=1e-5)
    assert ev["cls_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == y["cls"])))


def test_step_api_with_several_inputs_and_outputs_equals_fit():
    """forward takes one array per input and returns one per output;
    backward takes one gradient per output (list or dict); a hand-written
    loop of SGD steps gives fit's weights."""

    def build():
        a, b = fg.Input((3,), name="a", dtype="float64"), fg.Input((2,), name="b", dtype="float64")
        h = L.Tanh()(L.Dense(5, 6, name="trunk")(L.Concatenate()([a, b])))
        return fg.Model([a, b], [L.Dense(6, 2, name="p")(h), L.Dense(6, 1, name="q")(h)], seed=4)

    rng = np.random.default_rng(3)
    xa, xb = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    yp, yq = rng.normal(size=(8, 2)), rng.normal(size=(8, 1))
    fitted = build()
    fitted.fit({"a": xa, "b": xb}, [yp, yq], "mse", fg.optim.SGD(fitted.parameters(), lr=0.1),
               epochs=1, batch_size=8, shuffle=False, verbose=0)  # fmt: skip
    model = build()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    mse = fg.losses.MSE()
    out_p, out_q = model.forward([xa, xb], training=True)
    mse(out_p, yp)
    gp = mse.backward()
    mse(out_q, yq)
    model.zero_grad()
    model.backward({"p": gp, "q": mse.backward()})
    opt.step()
    for key, value in fitted.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="grad \\(one per output\\): expected 2"):
        model.backward([gp])


def test_gradient_flow_and_fit_diagnostics_on_a_graph():
    """The diagnostics name a graph's parameters and layer calls by their
    graph names, blocks included."""
    block = fg.Sequential([L.Dense(8, 8), L.ReLU()], name="blk")
    x = fg.Input((4,), name="x")
    h = L.ReLU(name="act")(L.Dense(4, 8, name="inp")(x))
    y = L.Dense(8, 3, name="out")(L.Add()([h, block(h)]))
    model = fg.Model(x, y, seed=0)
    rng = np.random.default_rng(0)
    X, labels = rng.normal(size=(64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    report = fg.diagnostics.gradient_flow(model, X, labels, "cross_entropy")
    assert set(report.grad_norm) == set(model.state_dict())
    assert report.layers["blk.0"] == "Dense" and report.layers["act"] == "ReLU"
    assert set(report.dead_fraction) == {"act", "blk.1"}
    assert "blk.0.weight  Dense" in str(report)
    hist = model.fit(X, labels, "cross_entropy", "adam", epochs=1, diagnostics=True, verbose=0)
    assert set(hist.diagnostics["grad_norm"]) == set(model.state_dict())


def small_unet(dtype="float64"):
    """Down, up and a skip concatenation: conv -> pool -> conv -> transposed
    conv -> concat with the first conv's output -> 1x1 conv."""
    x = fg.Input((1, 8, 8), dtype=dtype, name="x")
    e1 = L.ReLU(name="act1")(L.Conv2D(1, 4, 3, padding=1, name="enc")(x))
    m = L.ReLU(name="act2")(
        L.Conv2D(4, 8, 3, padding=1, name="mid")(L.MaxPool2D(2, name="pool")(e1))
    )
    up = L.ConvTranspose2D(8, 4, 2, stride=2, name="up")(m)
    y = L.Conv2D(8, 2, 1, name="head")(L.Concatenate(axis=1, name="cat")([up, e1]))
    return fg.Model(x, y, seed=5)


def test_small_unet_gradcheck():
    model = small_unet()
    rng = np.random.default_rng(4)
    x, t = rng.normal(size=(3, 1, 8, 8)), rng.normal(size=(3, 2, 8, 8))
    report = fg.gradcheck(model, "mse", x, t)
    assert set(report) == set(model.state_dict()) and max(report.values()) < 1e-6, report


def test_small_unet_matches_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Conv2d(1, 4, 3, padding=1)
            self.mid = nn.Conv2d(4, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, t):
            e1 = torch.relu(self.enc(t))
            m = torch.relu(self.mid(nn.functional.max_pool2d(e1, 2)))
            return self.head(torch.cat([self.up(m), e1], dim=1))

    net = UNet().double()
    model = small_unet()
    model.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    rng = np.random.default_rng(5)
    x, t = rng.normal(size=(3, 1, 8, 8)), rng.normal(size=(3, 2, 8, 8))
    out = net(torch.from_numpy(x))
    torch.nn.functional.mse_loss(out, torch.from_numpy(t)).backward()
    np.testing.assert_allclose(model.predict(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    mse = fg.losses.MSE()
    model.zero_grad()
    mse(model.forward(x, training=True), t)
    model.backward(mse.backward())
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12)

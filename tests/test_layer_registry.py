"""The engine's layer registry and ``fg.layers`` agree: every registered
layer has a Python class with the same name and arguments, and vice versa;
parameter counts, shapes and JSON specs come from the engine."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import _core
from ferrograd import layers as L

REGISTRY = dict(_core.layer_types())
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# One example of each registered layer: (layer, per-sample input shape,
# expected parameter count, expected per-sample output shape). A new layer
# needs an entry here (test_every_layer_has_an_example says so).
EXAMPLES = {
    "Dense": (L.Dense(3, 2), (3,), 3 * 2 + 2, (2,)),
    "ReLU": (L.ReLU(), (4,), 0, (4,)),
    "LeakyReLU": (L.LeakyReLU(0.2), (4,), 0, (4,)),
    "Sigmoid": (L.Sigmoid(), (4,), 0, (4,)),
    "Tanh": (L.Tanh(), (4,), 0, (4,)),
    "GELU": (L.GELU(), (4,), 0, (4,)),
    "Softmax": (L.Softmax(), (4,), 0, (4,)),
    "Dropout": (L.Dropout(0.1), (4,), 0, (4,)),
    "Flatten": (L.Flatten(), (2, 3), 0, (6,)),
    "Rescaling": (L.Rescaling(0.5, 1.0), (4,), 0, (4,)),
    "Conv2D": (L.Conv2D(2, 3, 3, padding=1), (2, 5, 5), 3 * 2 * 9 + 3, (3, 5, 5)),
    "Conv1D": (L.Conv1D(2, 3, 3, bias=False), (2, 6), 3 * 2 * 3, (3, 4)),
    # (H - 1) * stride - 2 * padding + (kernel - 1) + output_padding + 1 = 3 * 2 - 2 + 2 + 1 + 1
    "ConvTranspose2D": (
        L.ConvTranspose2D(2, 3, 3, stride=2, padding=1, output_padding=1),
        (2, 4, 4),
        2 * 3 * 9 + 3,
        (3, 8, 8),
    ),
    "Upsample2D": (L.Upsample2D(2), (2, 3, 3), 0, (2, 6, 6)),
    "Identity": (L.Identity(), (4,), 0, (4,)),
    "MaxPool2D": (L.MaxPool2D(2), (2, 4, 4), 0, (2, 2, 2)),
    "AvgPool2D": (L.AvgPool2D(3, stride=1, padding=1), (2, 4, 4), 0, (2, 4, 4)),
    "MaxPool1D": (L.MaxPool1D(2), (2, 4), 0, (2, 2)),
    "AvgPool1D": (L.AvgPool1D(2), (2, 5), 0, (2, 2)),
    "GlobalAvgPool2D": (L.GlobalAvgPool2D(), (2, 3, 3), 0, (2,)),
    "BatchNorm1D": (L.BatchNorm1D(2), (2, 5), 4, (2, 5)),
    "BatchNorm2D": (L.BatchNorm2D(3, momentum=None), (3, 2, 2), 6, (3, 2, 2)),
}


def python_classes() -> dict[str, type[L.Layer]]:
    return L._layer_classes()


def init_arguments(cls: type) -> list[str]:
    init = getattr(cls, "__init__")  # noqa: B009 (mypy: not through an instance)
    if init is object.__init__:
        return []
    # `name=` is Python's (a layer's name in a graph model), not the engine's.
    return [p for p in inspect.signature(init).parameters if p not in ("self", "name")]


def test_every_registered_layer_has_a_python_class_with_its_arguments():
    classes = python_classes()
    for name, args in REGISTRY.items():
        cls = classes.get(name)
        assert cls is not None, (
            f"{name} is registered in the engine but fg.layers has no class for it"
        )
        assert cls.__name__ == name and getattr(L, name) is cls and name in L.__all__
        assert init_arguments(cls) == args, f"{name}: Python arguments differ from the engine's"
        assert cls.__doc__, f"{name} has no docstring"


def test_every_python_layer_is_registered():
    assert set(python_classes()) == set(REGISTRY)
    public = {n for n in L.__all__ if isinstance(getattr(L, n), type)}
    # Merge layers are graph-only and not LayerSpecs (the engine's MergeSpec).
    merges = {"Merge", "Add", "Subtract", "Multiply", "Average", "Concatenate"}
    assert {n for n in public if issubclass(getattr(L, n), L.Merge)} == merges
    assert public - {"Layer"} - merges == set(REGISTRY)


def test_every_layer_has_an_example():
    assert set(EXAMPLES) == set(REGISTRY), "add an example of each new layer to EXAMPLES"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_counts_shapes_and_spec_come_from_the_engine(name):
    layer, in_shape, count, out_shape = EXAMPLES[name]
    assert layer.num_params() == count
    info = _core.layer_info(layer._spec(), list(in_shape))
    assert info["num_params"] == count
    assert tuple(info["output_shape"]) == out_shape
    # The model built from the layer holds exactly the declared parameters.
    model = fg.Sequential([layer], dtype="float64")
    assert model.num_params() == count
    state = model.state_dict()
    for pname, shape in info["params"]:
        assert state[f"0.{pname}"].shape == tuple(shape)
    for bname, shape in info["buffers"]:
        assert state[f"0.{bname}"].shape == tuple(shape)
    assert len(state) == len(info["params"]) + len(info["buffers"])
    assert [tuple(s) for s in model._core.layer_shapes(list(in_shape))] == [out_shape]
    # The JSON spec: the registered arguments, in order, and back again.
    spec = json.loads(layer._spec())
    assert list(spec) == ["type", *REGISTRY[name]] and spec["type"] == name
    assert L.from_spec(spec) == layer
    x = np.random.default_rng(0).normal(size=(4, *in_shape))
    assert model.predict(x).shape == (4, *out_shape)


def test_layer_info_errors():
    with pytest.raises(ValueError, match="Dense: .*3"):
        _core.layer_info(L.Dense(3, 2)._spec(), [4])
    with pytest.raises(ValueError, match="unknown layer type"):
        _core.layer_info('{"type": "Swish"}')
    info = _core.layer_info(L.BatchNorm2D(4)._spec())
    assert info["output_shape"] is None
    assert [n for n, _ in info["buffers"]] == ["running_mean", "running_var", "num_batches_tracked"]


def test_saved_json_format_unchanged():
    """The exact text earlier versions wrote into model files."""
    assert L.Dense(3, 2)._spec() == (
        '{"type": "Dense", "in_features": 3, "out_features": 2, "bias": true, "init": "he"}'
    )
    assert L.Conv1D(1, 2, 3, padding="same")._spec() == (
        '{"type": "Conv1D", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "stride": 1,'
        ' "padding": "same", "dilation": 1, "bias": true, "init": "he"}'
    )
    assert L.MaxPool2D(2)._spec() == (
        '{"type": "MaxPool2D", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0]}'
    )
    assert L.BatchNorm1D(2, momentum=None)._spec() == (
        '{"type": "BatchNorm1D", "num_features": 2, "eps": 1e-05, "momentum": null}'
    )
    assert L.ReLU()._spec() == '{"type": "ReLU"}'


def test_files_saved_before_the_registry_load_and_predict_the_same():
    """tests/fixtures/make_fg_fixture.py's files, written by the version
    before the registry: every layer type of that time, both dtypes, an
    optimizer, training mode."""
    io = fg.load_file(FIXTURES / "fg_io.safetensors")
    cnn, opt = fg.load(FIXTURES / "fg_cnn.safetensors", with_optimizer=True)
    seq = fg.load(FIXTURES / "fg_seq.safetensors")
    kinds = {type(ly).__name__ for m in (cnn, seq) for ly in m.layers}
    # Every layer type registered then (a subset of today's).
    then = set(
        "Dense ReLU LeakyReLU Sigmoid Tanh GELU Softmax Dropout Flatten Rescaling Conv2D Conv1D"
        " MaxPool2D AvgPool2D MaxPool1D AvgPool1D GlobalAvgPool2D BatchNorm1D BatchNorm2D".split()
    )
    assert kinds == then and then <= set(REGISTRY)
    assert (cnn.dtype, cnn.epochs_trained, cnn.training) == (np.float32, 2, False)
    assert (seq.dtype, seq.epochs_trained, seq.training) == (np.float64, 2, True)
    x_cnn = io["x_cnn"].astype(np.uint8)
    np.testing.assert_allclose(cnn.predict(x_cnn), io["y_cnn"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(seq.predict(io["x_seq"]), io["y_seq"], rtol=1e-12, atol=1e-15)
    # The specs the layers write today are the text those files hold.
    for name, model in (("fg_cnn", cnn), ("fg_seq", seq)):
        meta = fg.serialization.read_metadata(FIXTURES / f"{name}.safetensors")
        saved = json.loads(meta["ferrograd"])["architecture"]
        assert [ly._spec() for ly in model.layers] == [json.dumps(s) for s in saved]
    assert cnn.num_params() == sum(p.value.size for p in cnn.parameters())
    # Training goes on from the saved optimizer state.
    before = cnn.state_dict()["1.weight"].copy()
    cnn.fit(x_cnn, np.arange(16) % 3, "cross_entropy", opt, epochs=1, batch_size=8, verbose=0)
    assert cnn.epochs_trained == 3 and not np.array_equal(before, cnn.state_dict()["1.weight"])


def test_loader_counts_an_overflowing_architecture_exactly(tmp_path):
    """A file whose architecture declares more parameters than 64 bits
    count is refused by the loader's guard, with the exact count."""
    src = FIXTURES / "fg_seq.safetensors"
    meta = fg.serialization.read_metadata(src)
    info = json.loads(meta["ferrograd"])
    info["architecture"][6].update(in_features=2**62, out_features=2**62)
    dst = tmp_path / "huge.safetensors"
    fg.save_file(fg.load_file(src), dst, metadata={**meta, "ferrograd": json.dumps(info)})
    declared = (
        2**124
        + 2**62
        + sum(
            v.size
            for k, v in fg.load(src).state_dict().items()
            if k.startswith(("0.", "2.w", "2.b", "8."))
        )
    )
    with pytest.raises(
        ValueError, match=f"huge.safetensors: the architecture declares {declared:,}"
    ):
        fg.load(dst)

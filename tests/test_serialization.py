"""Saving and loading: safetensors files (weights, whole models with their
optimizer and scheduler), torch interchange, optimizer state_dicts in
torch's layout, pickle and deepcopy, atomic writes, ModelCheckpoint, and bad
files refused with the model unchanged."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ferrograd as fg
from ferrograd import layers as L

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cnn(seed: int = 0, dtype: str = "float32") -> fg.Sequential:
    """The architecture of tests/fixtures/make_torch_fixture.py."""
    return fg.Sequential(
        [
            L.Conv2D(1, 2, 3, padding=1),
            L.BatchNorm2D(2),
            L.ReLU(),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(2 * 3 * 3, 3),
        ],
        seed=seed,
        dtype=dtype,
    )


def mlp(seed: int = 0) -> fg.Sequential:
    return fg.Sequential(
        [L.Dense(6, 16), L.ReLU(), L.Dropout(0.25), L.Dense(16, 16), L.Tanh(), L.Dense(16, 3)],
        seed=seed,
    )


def data(n: int = 64, shape: tuple[int, ...] = (6,), seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 3, n)


def same(a: fg.Sequential, b: fg.Sequential) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)


def trained_cnn() -> tuple[fg.Sequential, fg.optim.Optimizer]:
    model = cnn(1)
    x, y = data(32, (1, 6, 6))
    opt = fg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.fit(x, y, "cross_entropy", opt, epochs=2, batch_size=8, verbose=0)
    return model, opt


def header_file(header: dict | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


# ------------------------------------------------------------------ plain files


def test_save_file_load_file_round_trip(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([0.1, 0.2], dtype=np.float64),
        "c": np.array(7, dtype=np.int64),
        "d": np.array([True, False]),
        "e": np.array([1.5, -2.0], dtype=np.float16),
        "f": np.zeros((0, 4), dtype=np.float32),
    }
    fg.save_file(tensors, path, metadata={"note": "hi"})
    out = fg.load_file(path)
    assert list(out) == sorted(tensors)
    assert out["a"].dtype == np.float32 and np.array_equal(out["a"], tensors["a"])
    assert out["b"].dtype == np.float64 and np.array_equal(out["b"], tensors["b"])
    assert out["c"].dtype == np.int64 and out["c"].shape == () and out["c"] == 7
    assert out["d"].dtype == np.int64 and list(out["d"]) == [1, 0]
    assert out["e"].dtype == np.float32 and list(out["e"]) == [1.5, -2.0]
    assert out["f"].shape == (0, 4)
    assert fg.serialization.read_metadata(path) == {"note": "hi"}


def test_save_file_type_errors(tmp_path):
    with pytest.raises(TypeError, match="mapping"):
        fg.save_file([np.zeros(2)], tmp_path / "x")
    with pytest.raises(TypeError, match="names must be strings"):
        fg.save_file({1: np.zeros(2)}, tmp_path / "x")
    with pytest.raises(TypeError, match="dtype"):
        fg.save_file({"s": np.array(["a"])}, tmp_path / "x")
    with pytest.raises(TypeError, match="metadata"):
        fg.save_file({"a": np.zeros(2)}, tmp_path / "x", metadata={"k": 1})
    with pytest.raises(FileNotFoundError):
        fg.load_file(tmp_path / "missing.safetensors")
    with pytest.raises(OSError):
        fg.save_file({"a": np.zeros(2)}, tmp_path / "no" / "such" / "dir.safetensors")


# ------------------------------------------------------------------ weights


def test_save_weights_load_weights(tmp_path):
    model, _ = trained_cnn()
    path = tmp_path / "w.safetensors"
    model.save_weights(path)
    other = cnn(99)
    assert not same(model, other)
    other.load_weights(path)
    assert same(model, other)
    x, _ = data(5, (1, 6, 6), seed=3)
    assert np.array_equal(model.predict(x), other.predict(x))
    assert fg.serialization.read_metadata(path) == {"format": "pt"}
    assert fg.load_file(path)["1.num_batches_tracked"].dtype == np.int64


def test_torch_written_fixture_loads_and_predicts_as_torch():
    io = fg.load_file(FIXTURES / "torch_cnn_io.safetensors")
    model = cnn(5)
    model.load_weights(FIXTURES / "torch_cnn.safetensors")
    np.testing.assert_allclose(model.predict(io["x"]), io["y"], rtol=1e-5, atol=1e-6)
    assert model.state_dict()["1.num_batches_tracked"] == 3
    for tag in ("f16", "bf16"):
        half = cnn(5)
        half.load_weights(FIXTURES / f"torch_cnn_{tag}.safetensors")
        np.testing.assert_allclose(half.predict(io["x"]), io[f"y_{tag}"], rtol=1e-5, atol=1e-6)
        # The rounding is real: the half-precision model differs from float32.
        assert not np.array_equal(half.predict(io["x"]), model.predict(io["x"]))


def test_torch_round_trip_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_torch_fixture import build
    finally:
        sys.path.pop(0)
    torch.manual_seed(3)
    tm = build()
    with torch.no_grad():
        tm(torch.randn(16, 1, 6, 6))  # moves the BatchNorm statistics
    tm.eval()
    st.save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, tmp_path / "t.st")
    ours = cnn(0)
    ours.load_weights(tmp_path / "t.st")
    x = np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.predict(x), want, rtol=1e-5, atol=1e-6)
    # And back: our file into a fresh torch model.
    trained, _ = trained_cnn()
    trained.save_weights(tmp_path / "o.st")
    tm2 = build().eval()
    tm2.load_state_dict(st.load_file(tmp_path / "o.st"))
    with torch.no_grad():
        got = tm2(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, trained.predict(x), rtol=1e-5, atol=1e-6)


def test_load_weights_mismatch_names_keys_and_changes_nothing(tmp_path):
    model, _ = trained_cnn()
    before = model.state_dict()
    sd = dict(before)
    del sd["5.weight"]
    sd["9.extra"] = np.zeros(2, np.float32)
    fg.save_file(sd, tmp_path / "bad.st")
    with pytest.raises(ValueError, match=r"5\.weight|9\.extra") as e:
        model.load_weights(tmp_path / "bad.st")
    assert "bad.st" in str(e.value)
    sd = dict(before)
    sd["5.weight"] = np.zeros((3, 17), np.float32)
    fg.save_file(sd, tmp_path / "shape.st")
    with pytest.raises(ValueError, match=r"5\.weight"):
        model.load_weights(tmp_path / "shape.st")
    assert same_state(model.state_dict(), before)


def same_state(a, b) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


BAD_FILES = {
    "empty": b"",
    "short": b"\x01\x02",
    "pickle": pickle.dumps({"0.weight": np.zeros(3)}),
    "header past the end": struct.pack("<Q", 10_000) + b"{}",
    "huge header length": struct.pack("<Q", 2**63),
    "invalid json": header_file("{not json"),
    "not an object": header_file("[1, 2]"),
    "unknown dtype": header_file(
        {"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
    ),
    "negative shape": header_file(
        {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4
    ),
    "overflowing shape": header_file(
        {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}, b"\0" * 4
    ),
    "offsets outside the data": header_file(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8
    ),
    "overlapping offsets": header_file(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    ),
    "shape does not match its bytes": header_file(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8
    ),
    "trailing bytes": header_file(
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9
    ),
}


def torch_save_like_zip(path: Path) -> None:
    """What torch.save writes: a zip archive holding a pickle."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": 1}))
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("name", [*BAD_FILES, "torch.save zip", "truncated"])
def test_bad_files_raise_value_error_and_change_nothing(tmp_path, name):
    path = tmp_path / "bad.safetensors"
    if name == "torch.save zip":
        torch_save_like_zip(path)
    elif name == "truncated":
        model, _ = trained_cnn()
        model.save(tmp_path / "good.st")
        path.write_bytes((tmp_path / "good.st").read_bytes()[:-5])
    else:
        path.write_bytes(BAD_FILES[name])
    model, opt = trained_cnn()
    before = model.state_dict()
    for load in (model.load_weights, fg.load, fg.load_file):
        with pytest.raises(ValueError, match="bad.safetensors"):
            load(path)
    assert same_state(model.state_dict(), before)
    with pytest.raises(ValueError):
        fg.serialization.loads(path.read_bytes())


def test_value_errors_name_the_problem(tmp_path):
    msgs = {}
    for name, raw in BAD_FILES.items():
        p = tmp_path / "f.st"
        p.write_bytes(raw)
        with pytest.raises(ValueError) as e:
            fg.load_file(p)
        msgs[name] = str(e.value)
    assert "past the end" in msgs["header past the end"]
    assert "100 MB" in msgs["huge header length"]
    assert "JSON" in msgs["invalid json"]
    assert "overlap" in msgs["overlapping offsets"]
    assert "shape" in msgs["shape does not match its bytes"]
    assert "overflow" in msgs["overflowing shape"]


# ------------------------------------------------------------------ whole models


def test_save_and_load_a_model(tmp_path):
    model, opt = trained_cnn()
    model.train()
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = fg.load(path)
    assert same(model, loaded)
    assert loaded.layers == model.layers
    assert (loaded.seed, loaded.dtype, loaded.epochs_trained) == (1, np.float32, 2)
    assert loaded.training is True
    x, _ = data(5, (1, 6, 6))
    assert np.array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="holds no optimizer"):
        fg.load(path, with_optimizer=True)
    # float64 models stay float64.
    m64 = cnn(2, dtype="float64")
    m64.save(path)
    assert fg.load(path).dtype == np.float64


def test_weights_only_file_is_not_a_model(tmp_path):
    model, _ = trained_cnn()
    model.save_weights(tmp_path / "w.st")
    with pytest.raises(ValueError, match="weights-only"):
        fg.load(tmp_path / "w.st")
    # A whole-model file still loads as weights.
    model.save(tmp_path / "m.st", optimizer=model.optimizer)
    other = cnn(7)
    other.load_weights(tmp_path / "m.st")
    assert same(model, other)


@pytest.mark.parametrize("kind", ["mlp-adam-onecycle", "cnn-sgd-step", "mlp-rmsprop-seq"])
def test_resume_is_exact(tmp_path, kind):
    S = fg.optim.lr_scheduler

    def setup():
        if kind.startswith("mlp"):
            model, (x, y) = mlp(4), data(60)
        else:
            model, (x, y) = cnn(4), data(40, (1, 6, 6))
        if "adam" in kind:
            opt = fg.optim.Adam(model.parameters(), lr=1e-2)
            sched, interval = S.OneCycleLR(opt, max_lr=0.05, total_steps=24), "step"
        elif "sgd" in kind:
            opt = fg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
            sched, interval = S.StepLR(opt, 1, gamma=0.5), "epoch"
        else:
            opt = fg.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.5, centered=True)
            sched = S.SequentialLR(
                opt, [S.LinearLR(opt, 0.2, total_iters=1), S.ExponentialLR(opt, 0.8)], [1]
            )
            interval = "epoch"
        return model, opt, sched, interval, x, y

    model, opt, sched, interval, x, y = setup()
    kw = dict(batch_size=10, verbose=0, scheduler_interval=interval)
    model.fit(x, y, "cross_entropy", opt, epochs=3, scheduler=sched, **kw)

    first, opt1, sched1, _, _, _ = setup()
    first.fit(x, y, "cross_entropy", opt1, epochs=1, scheduler=sched1, **kw)
    path = tmp_path / "ckpt.safetensors"
    first.save(path, optimizer=opt1, scheduler=sched1)
    resumed, opt2, sched2 = fg.load(path, with_scheduler=True)
    assert type(opt2) is type(opt1) and opt2.steps == opt1.steps
    assert sched2.get_last_lr() == sched1.get_last_lr()
    resumed.fit(x, y, "cross_entropy", opt2, epochs=2, scheduler=sched2, **kw)
    assert same(model, resumed)
    assert opt2.lr == opt.lr


def rewrite_info(src: Path, dst: Path, edit) -> None:
    tensors = fg.load_file(src)
    meta = fg.serialization.read_metadata(src)
    info = json.loads(meta["ferrograd"])
    edit(info, tensors)
    meta["ferrograd"] = json.dumps(info)
    fg.save_file(tensors, dst, metadata=meta)


def test_bad_model_files(tmp_path):
    model, opt = trained_cnn()
    src = tmp_path / "m.st"
    model.save(src, optimizer=opt)

    def unknown_layer(info, t):
        info["architecture"][2] = {"type": "Swish"}

    def unknown_argument(info, t):
        info["architecture"][0]["groups"] = 2

    def bad_value(info, t):
        info["architecture"][0]["out_channels"] = -2

    def bad_version(info, t):
        info["version"] = 99

    def bad_optimizer(info, t):
        info["optimizer"]["class"] = "Lion"

    def optimizer_params(info, t):
        info["optimizer"]["params"] = [0, 1]

    def optimizer_state(info, t):
        t["optimizer.state.0.0"] = np.zeros(3, np.float32)

    def optimizer_missing(info, t):
        del t["optimizer.state.1.0"]

    def weights_mismatch(info, t):
        del t["5.bias"]

    def rng(info, t):
        info["rng_state"] = [0, 0, 0, 0]

    def oversized(info, t):  # would allocate 4 GB before noticing the weights are missing
        info["architecture"][5]["in_features"] = 2**30

    cases = {
        unknown_layer: "unknown layer type 'Swish'",
        unknown_argument: "unknown argument",
        bad_value: "out_channels",
        bad_version: "version",
        bad_optimizer: "unknown optimizer 'Lion'",
        optimizer_params: "does not match",
        optimizer_state: "does not match",
        optimizer_missing: "lacks",
        weights_mismatch: "5.bias",
        rng: "all zeros",
        oversized: "declares 3,221,225,499 parameters, the file holds 86 values",
    }
    for edit, msg in cases.items():
        dst = tmp_path / f"{edit.__name__}.st"
        rewrite_info(src, dst, edit)
        with pytest.raises(ValueError, match=msg):
            fg.load(dst, with_optimizer=True)
            pytest.fail(f"{edit.__name__} loaded")
    meta = {"format": "ferrograd", "ferrograd": "{nope"}
    fg.save_file({}, tmp_path / "j.st", metadata=meta)
    with pytest.raises(ValueError, match="not valid JSON"):
        fg.load(tmp_path / "j.st")


def test_save_argument_errors(tmp_path):
    model, opt = trained_cnn()
    other = cnn(3)
    other_opt = fg.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another model"):
        model.save(tmp_path / "x.st", optimizer=other_opt)
    with pytest.raises(TypeError, match="optimizer"):
        model.save(tmp_path / "x.st", optimizer="adam")
    sched = fg.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ValueError, match="together with the optimizer"):
        model.save(tmp_path / "x.st", scheduler=sched)
    with pytest.raises(TypeError, match="path"):
        model.save(3)
    assert not (tmp_path / "x.st").exists()


# ------------------------------------------------------------------ optimizer state_dict


def test_optimizer_state_dict_layout():
    model, (x, y) = mlp(), data()
    shapes = [p.shape for p in model.parameters()]
    for opt, keys in [
        (fg.optim.Adam(model.parameters()), {"step", "exp_avg", "exp_avg_sq"}),
        (fg.optim.AdamW(model.parameters()), {"step", "exp_avg", "exp_avg_sq"}),
        (fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), {"momentum_buffer"}),
        (fg.optim.SGD(model.parameters(), lr=0.1), set()),
        (fg.optim.RMSprop(model.parameters()), {"step", "square_avg"}),
        (
            fg.optim.RMSprop(model.parameters(), momentum=0.9, centered=True),
            {"step", "square_avg", "momentum_buffer", "grad_avg"},
        ),
    ]:
        assert opt.state_dict()["state"] == {}
        model.fit(x, y, "cross_entropy", opt, epochs=1, batch_size=16, verbose=0)
        sd = opt.state_dict()
        (group,) = sd["param_groups"]
        assert group["params"] == list(range(len(shapes)))
        assert group["lr"] == opt.lr
        if keys:
            assert set(sd["state"]) == set(range(len(shapes)))
            for i, shape in enumerate(shapes):
                assert set(sd["state"][i]) == keys
                for k in keys - {"step"}:
                    assert sd["state"][i][k].shape == shape
                if "step" in keys:
                    assert sd["state"][i]["step"] == 4.0
        else:
            assert sd["state"] == {}


def test_optimizer_load_state_dict_continues_exactly():
    x, y = data()
    a = mlp(1)
    oa = fg.optim.Adam(a.parameters(), lr=3e-3, betas=(0.8, 0.99))
    a.fit(x, y, "cross_entropy", oa, epochs=1, batch_size=16, verbose=0, shuffle=False)
    b = copy.deepcopy(a)
    ob = fg.optim.Adam(b.parameters())
    ob.load_state_dict(oa.state_dict())
    assert ob.defaults == oa.defaults and ob.steps == oa.steps
    for m, o in ((a, oa), (b, ob)):
        m.fit(x, y, "cross_entropy", o, epochs=1, batch_size=16, verbose=0, shuffle=False)
    assert same(a, b)


def test_plain_sgd_state_dict_keeps_the_step_count():
    x, y = data()
    model = mlp()
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    model.fit(x, y, "cross_entropy", opt, epochs=1, batch_size=16, verbose=0)
    again = fg.optim.SGD(model.parameters(), lr=0.5)
    again.load_state_dict(opt.state_dict())
    assert (again.steps, again.lr, again.state_dict()["state"]) == (4, 0.1, {})


def test_optimizer_load_state_dict_errors_change_nothing():
    x, y = data()
    model = mlp()
    opt = fg.optim.Adam(model.parameters(), lr=1e-3)
    model.fit(x, y, "cross_entropy", opt, epochs=1, batch_size=16, verbose=0)
    good = opt.state_dict()
    before = copy.deepcopy(good)

    def edited(fn):
        sd = copy.deepcopy(good)
        fn(sd)
        return sd

    bad = [
        (edited(lambda s: s["param_groups"].append(dict(s["param_groups"][0]))), "one param group"),
        (edited(lambda s: s["param_groups"][0].update(params=[0, 1])), "parameters"),
        (edited(lambda s: s["state"][0].update(exp_avg=np.zeros(3))), "shape"),
        (edited(lambda s: s["state"][2].pop("exp_avg_sq")), "lacks"),
        (edited(lambda s: s["state"][1].update(step=7.0)), "different numbers"),
        (edited(lambda s: s["state"].pop(3)), "some parameters"),
        (edited(lambda s: s["param_groups"][0].update(lr=-1.0)), "learning rate"),
        (edited(lambda s: s["param_groups"][0].update(amsgrad=True)), "amsgrad"),
        (edited(lambda s: s["param_groups"][0].update(decoupled_weight_decay=True)), "AdamW"),
        (edited(lambda s: s["state"][0].update(exp_avg=np.full((16, 6), np.nan))), "NaN"),
        ({"state": {}}, "param_groups"),
    ]
    for sd, msg in bad:
        with pytest.raises(ValueError, match=msg):
            opt.load_state_dict(sd)
        now = opt.state_dict()
        assert now["param_groups"] == before["param_groups"]
        assert all(
            np.array_equal(now["state"][i][k], before["state"][i][k])
            for i in before["state"]
            for k in before["state"][i]
        )


def test_optimizer_state_dict_matches_torch():
    torch = pytest.importorskip("torch")
    x, y = data(32)
    for make_ours, make_torch in [
        (
            lambda p: fg.optim.Adam(p, lr=1e-2, weight_decay=0.01),
            lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.01),
        ),
        (
            lambda p: fg.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        ),
        (
            lambda p: fg.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
            lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
        ),
    ]:
        model = fg.Sequential([L.Dense(6, 8), L.Tanh(), L.Dense(8, 3)], seed=0, dtype="float64")
        ours = make_ours(model.parameters())
        model.fit(x, y, "cross_entropy", ours, epochs=1, batch_size=8, verbose=0, shuffle=False)
        tparams = [torch.tensor(p.value, requires_grad=True) for p in model.parameters()]
        theirs = make_torch(tparams)
        sd = ours.state_dict()
        theirs.load_state_dict(
            {
                "state": {
                    i: {k: torch.as_tensor(v) for k, v in st.items()}
                    for i, st in sd["state"].items()
                },
                "param_groups": sd["param_groups"],
            }
        )
        # One more identical step on both.
        out = model.forward(x[:8], training=True)
        loss_fn = fg.losses.CrossEntropy()
        loss_fn(out, y[:8])
        model.zero_grad()
        model.backward(loss_fn.backward())
        for tp, p in zip(tparams, model.parameters()):
            tp.grad = torch.tensor(p.grad)
        ours.step()
        theirs.step()
        for tp, p in zip(tparams, model.parameters()):
            np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
        # And torch's state_dict loads into ours.
        again = make_ours(model.parameters())
        again.load_state_dict(theirs.state_dict())
        # torch's SGD keeps no step count (only "a step was taken" matters).
        assert again.steps == (1 if isinstance(ours, fg.optim.SGD) else ours.steps)
        for k, v in again.state_dict()["state"][0].items():
            np.testing.assert_allclose(v, theirs.state_dict()["state"][0][k].numpy())


# ------------------------------------------------------------------ pickle / deepcopy


def test_pickle_and_deepcopy_of_models_and_optimizers():
    model, opt = trained_cnn()
    x, y = data(32, (1, 6, 6))
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert same(clone, model) and clone.epochs_trained == model.epochs_trained
        assert clone.optimizer is not opt and clone.optimizer._model is clone
        assert clone.history.history == model.history.history
        assert np.array_equal(clone.predict(x), model.predict(x))
    # A copy trains independently of its original, and exactly as it would.
    twin = copy.deepcopy(model)
    model.fit(x, y, "cross_entropy", opt, epochs=1, batch_size=8, verbose=0)
    assert not same(model, twin)
    twin.fit(x, y, "cross_entropy", twin.optimizer, epochs=1, batch_size=8, verbose=0)
    assert same(model, twin)
    # An optimizer pickled alone brings its model's engine along (the
    # Sequential itself is not referenced by anything, so it is freed).
    o2 = pickle.loads(pickle.dumps(opt))
    assert o2.steps == opt.steps and o2.defaults == opt.defaults
    assert [p.name for p in o2.params] == [p.name for p in opt.params]
    assert all(np.array_equal(a.value, b.value) for a, b in zip(o2.params, opt.params))
    o2.step()  # still trains its (unreachable) model's weights


def test_unpickling_never_runs_code_from_the_payload():
    """The model's pickle holds safetensors bytes, read by the core."""
    model = mlp()
    payload = pickle.dumps(model)
    blob = model.__reduce__()[1][0]
    assert isinstance(blob, bytes) and blob[8:9] == b"{"
    assert pickle.loads(payload).layers == model.layers


# ------------------------------------------------------------------ atomic writes

SAVER = """
import sys, numpy as np, ferrograd as fg
from ferrograd import layers as L
model = fg.Sequential([L.Dense(256, 512), L.ReLU(), L.Dense(512, 256)], seed=0)
opt = fg.optim.Adam(model.parameters())
path = sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    i += 1
    model.load_state_dict({**model.state_dict(), "2.bias": np.full(256, i, np.float32)})
    model.save(path, optimizer=opt)
"""


def test_killed_while_saving_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "m.safetensors"
    mlp().save(path)  # the previous file
    rng = np.random.default_rng(0)
    env = {**os.environ, "FERROGRAD_NUM_THREADS": "1"}
    for _ in range(6):
        with subprocess.Popen(
            [sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, env=env
        ) as proc:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            time.sleep(float(rng.uniform(0.05, 0.4)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        loaded = fg.load(path)  # never a partial file
        assert loaded.num_params() in (mlp().num_params(), 256 * 512 + 512 + 512 * 256 + 256)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.safetensors"]
    assert all(n.endswith(".tmp") for n in leftovers)
    mlp().save(path)  # the next save sweeps the killed writers' temporary files
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# ------------------------------------------------------------------ ModelCheckpoint


def test_model_checkpoint_every_epoch_and_resume(tmp_path):
    x, y = data(48)
    xv, yv = data(16, seed=1)
    model = mlp(2)
    opt = fg.optim.Adam(model.parameters(), lr=1e-2)
    sched = fg.optim.lr_scheduler.ExponentialLR(opt, 0.5)
    ck = fg.callbacks.ModelCheckpoint(tmp_path / "ck-{epoch:02d}-{val_loss:.3f}.safetensors")
    model.fit(
        x, y, "cross_entropy", opt, epochs=3, batch_size=8, verbose=0,
        validation_data=(xv, yv), scheduler=sched, callbacks=[ck],
    )  # fmt: skip
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f[:6] for f in files] == ["ck-01-", "ck-02-", "ck-03-"]
    vl = model.history.history["val_loss"]
    assert files[1] == f"ck-02-{vl[1]:.3f}.safetensors"
    assert ck.last_path == str(tmp_path / files[2])
    final, o, s = fg.load(ck.last_path, with_scheduler=True)
    assert same(final, model) and s.get_last_lr() == sched.get_last_lr()
    # Resuming from the epoch-2 file gives the epoch-3 weights.
    m2, o2, s2 = fg.load(tmp_path / files[1], with_scheduler=True)
    m2.fit(x, y, "cross_entropy", o2, epochs=1, batch_size=8, verbose=0, scheduler=s2)
    assert same(m2, model)


def test_model_checkpoint_best_only_and_weights_only(tmp_path, capsys):
    x, y = data(48)
    xv, yv = data(16, seed=1)
    model = mlp(2)
    path = tmp_path / "best.safetensors"
    ck = fg.callbacks.ModelCheckpoint(
        path, monitor="val_accuracy", save_best_only=True, save_weights_only=True, verbose=1
    )
    model.fit(
        x, y, "cross_entropy", "adam", epochs=6, batch_size=8, verbose=0,
        validation_data=(xv, yv), callbacks=[ck],
    )  # fmt: skip
    acc = model.history.history["val_accuracy"]
    assert ck.best == max(acc)
    best = mlp(9)
    best.load_weights(path)
    assert best.evaluate(xv, yv, "cross_entropy")["accuracy"] == pytest.approx(max(acc))
    out = capsys.readouterr().out
    assert "val_accuracy improved from -inf" in out
    assert fg.serialization.read_metadata(path) == {"format": "pt"}


def test_model_checkpoint_errors_before_training(tmp_path):
    x, y = data(16)
    model = mlp()
    before = model.state_dict()
    for ck, msg in [
        (fg.callbacks.ModelCheckpoint(tmp_path / "{val_loss}.st"), "val_loss"),
        (fg.callbacks.ModelCheckpoint(tmp_path / "{epoch}-{acc}.st"), "acc"),
        (
            fg.callbacks.ModelCheckpoint(tmp_path / "m.st", monitor="val_acc", save_best_only=True),
            "val_acc",
        ),
    ]:
        with pytest.raises(ValueError, match=msg):
            model.fit(x, y, "cross_entropy", "adam", epochs=1, verbose=0, callbacks=[ck])
    assert same_state(model.state_dict(), before)
    with pytest.raises(ValueError, match="format"):
        fg.callbacks.ModelCheckpoint("{epoch")
    with pytest.raises(ValueError, match="names like"):
        fg.callbacks.ModelCheckpoint("{0}.st")
    with pytest.raises(TypeError):
        fg.callbacks.ModelCheckpoint(3)
    assert list(tmp_path.iterdir()) == []

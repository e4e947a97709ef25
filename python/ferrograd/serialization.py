"""Saving and loading: safetensors files, with no pickle on any load path.

- :func:`save_file` / :func:`load_file`: any ``{name: array}`` mapping as a
  safetensors file (what ``safetensors.numpy`` does), written atomically.
- ``model.save_weights(path)`` / ``model.load_weights(path)``: the
  ``state_dict`` (weights and buffers, torch's names), interchangeable with
  ``safetensors.torch.save_file(torch_model.state_dict(), path)``.
- ``model.save(path, optimizer=None, scheduler=None)`` / :func:`load`: one
  file holding everything needed to resume: the architecture (layer specs as
  JSON in the metadata), dtype, seed, epochs trained, weights and buffers,
  and the optimizer's and scheduler's state.

Files are read by the Rust core (the ``safetensors`` crate), which checks
the header, dtypes, shapes and offsets before allocating anything the file
controls; a bad file raises ``ValueError`` and changes nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from . import layers as _layers
from ._data import untorch

if TYPE_CHECKING:
    from .lr_scheduler import LRScheduler
    from .model import Sequential
    from .optim import Optimizer

__all__ = ["save_file", "load_file", "load"]

#: Format version of the ``"ferrograd"`` metadata entry of model files.
FORMAT_VERSION = 1
_OPT_PREFIX = "optimizer.state."


def _path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _tensor(name: str, value: Any) -> np.ndarray:
    a = np.asarray(untorch(value))
    if a.dtype.kind == "f":
        a = a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=False)
    elif a.dtype.kind in "biu":
        a = a.astype(np.int64, copy=False)
    else:
        raise TypeError(f"tensor {name!r} has dtype {a.dtype}, expected numbers")
    return np.require(a, requirements=["C", "A"])  # keeps 0-d arrays 0-d


def _items(tensors: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a mapping of names to arrays, got {type(tensors).__name__}"
        )
    out = []
    for name, v in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        out.append((name, _tensor(name, v)))
    return out


def _meta(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata must map strings to strings")
    return dict(metadata)


def save_file(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes ``{name: array}`` as a safetensors file, atomically: a
    temporary file in the same folder, flushed and fsynced, then renamed
    over ``path``, so a crash leaves the previous file intact. Floats are
    stored as float32 or float64 (float16 arrays as float32), integers and
    bools as int64; ``metadata`` maps strings to strings."""
    _core.write_safetensors(_path(path), _items(tensors), _meta(metadata))


def load_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a safetensors file as ``{name: array}`` (in name order):
    float16 and bfloat16 become float32, every integer type int64. A file
    that is not a valid safetensors file raises ``ValueError``."""
    tensors, _ = _core.read_safetensors(_path(path))
    return dict(tensors)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata map of a safetensors file (after checking the file)."""
    _, meta = _core.read_safetensors(_path(path))
    return dict(meta)


# ---------------------------------------------------------------- model files


def _scheduler_json(s: LRScheduler) -> dict[str, Any]:
    from .lr_scheduler import SequentialLR

    state = s.state_dict()
    out: dict[str, Any] = {"class": type(s).__name__}
    if isinstance(s, SequentialLR):
        out["children"] = [_scheduler_json(c) for c in s._schedulers]
        state.pop("_schedulers", None)
    out["state"] = state
    return out


def _scheduler_from_json(data: Any, optimizer: Optimizer, depth: int = 0) -> LRScheduler:
    from . import lr_scheduler

    if not isinstance(data, dict) or not isinstance(data.get("class"), str) or depth > 8:
        raise ValueError("the file's scheduler entry is malformed")
    cls = getattr(lr_scheduler, data["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, lr_scheduler.LRScheduler)):
        raise ValueError(f"the file names an unknown scheduler {data['class']!r}")
    state = data.get("state")
    if not isinstance(state, dict):
        raise ValueError(f"the file's {data['class']} state is malformed")
    state = {k: v for k, v in state.items() if k != "optimizer" and not k.startswith("__")}
    sched = cls.__new__(cls)
    sched.optimizer = optimizer
    if isinstance(sched, lr_scheduler.SequentialLR):
        kids = data.get("children")
        milestones = state.get("_milestones")
        if (
            not isinstance(kids, list)
            or not isinstance(milestones, list)
            or len(kids) != len(milestones) + 1
        ):
            raise ValueError("the file's SequentialLR needs one more child than milestones")
        children = [_scheduler_from_json(c, optimizer, depth + 1) for c in kids]
        sched._schedulers = children
        state["_schedulers"] = [c.state_dict() for c in children]
    try:
        sched.load_state_dict(state)
        last = sched.get_last_lr()
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in last):
            raise ValueError(f"learning rates {last!r}")
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise ValueError(f"the file's {data['class']} state is malformed: {e}") from None
    return sched


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot store {type(v).__name__} in a model file")


def model_contents(
    model: Sequential, optimizer: Optimizer | None = None, scheduler: LRScheduler | None = None
) -> tuple[list[tuple[str, np.ndarray]], dict[str, str]]:
    """The tensors and metadata :meth:`Sequential.save` writes."""
    from .lr_scheduler import LRScheduler
    from .optim import Optimizer

    info: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "architecture": [json.loads(ly._spec()) for ly in model.layers],
        "dtype": model.dtype.name,
        "seed": model.seed,
        "epochs_trained": model.epochs_trained,
        "training": model.training,
        "rng_state": [int(v) for v in model._core.get_rng_state()],
    }
    tensors = list(model.state_dict().items())
    if optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a ferrograd optimizer, got {type(optimizer).__name__}"
            )
        if optimizer._mcore is not model._core:
            raise ValueError("the optimizer belongs to another model")
        steps, slots = optimizer._core.get_state()
        info["optimizer"] = {
            "class": type(optimizer).__name__,
            "config": optimizer.defaults,
            "params": [p._index for p in optimizer.params],
            "steps": steps,
            "slots": len(slots[0]) if slots else 0,
            "group": optimizer._sched_values(),
        }
        for i, arrays in enumerate(slots):
            for k, a in enumerate(arrays):
                tensors.append((f"{_OPT_PREFIX}{i}.{k}", a))
    if scheduler is not None:
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"scheduler must be an LR scheduler, got {type(scheduler).__name__}")
        if optimizer is None or scheduler.optimizer is not optimizer:
            raise ValueError("save a scheduler together with the optimizer it schedules")
        info["scheduler"] = _scheduler_json(scheduler)
    meta = {
        "format": "ferrograd",
        "ferrograd": json.dumps(info, default=_json_default, allow_nan=True),
    }
    return tensors, meta


def _model_info(meta: Mapping[str, str], where: str) -> dict[str, Any]:
    text = meta.get("ferrograd")
    if text is None:
        raise ValueError(
            f"{where} is a weights-only safetensors file (no ferrograd architecture): "
            "build the model and use model.load_weights"
        )
    try:
        info = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{where}: the ferrograd metadata is not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{where}: the ferrograd metadata must be a JSON object")
    version = info.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: unsupported model file version {version!r}")
    return info


def model_from_contents(
    tensors: Mapping[str, np.ndarray], meta: Mapping[str, str], where: str
) -> tuple[Sequential, dict[str, Any]]:
    """The model a file describes, and its metadata object."""
    from .model import Sequential

    info = _model_info(meta, where)
    arch = info.get("architecture")
    if not isinstance(arch, list) or not arch:
        raise ValueError(f"{where}: the architecture must be a non-empty list of layers")
    try:
        layer_list = [_layers.from_spec(spec) for spec in arch]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    # The weights must all be in the file, so an architecture larger than
    # the file's values is refused before its buffers are allocated.
    declared = sum(ly.num_params() for ly in layer_list)
    held = sum(v.size for k, v in tensors.items() if not k.startswith(_OPT_PREFIX))
    if declared > held:
        raise ValueError(
            f"{where}: the architecture declares {declared:,} parameters, "
            f"the file holds {held:,} values"
        )
    try:
        seed = info.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"the seed must be an int, got {seed!r}")
        model = Sequential._uninitialised(layer_list, seed, info.get("dtype", "float32"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(_OPT_PREFIX)}
    model.load_state_dict(weights)
    epochs = info.get("epochs_trained", 0)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"{where}: epochs_trained must be an int >= 0")
    rng = info.get("rng_state")
    if rng is not None:
        if not (
            isinstance(rng, list)
            and len(rng) == 4
            and all(isinstance(v, int) and 0 <= v < 2**64 for v in rng)
        ):
            raise ValueError(f"{where}: rng_state must be four integers in [0, 2**64)")
        model._core.set_rng_state(rng)
    model.epochs_trained = epochs
    model.training = bool(info.get("training", False))
    return model, info


def optimizer_from_contents(
    model: Sequential, tensors: Mapping[str, np.ndarray], info: Mapping[str, Any], where: str
) -> Optimizer:
    """The optimizer a model file holds, bound to ``model``."""
    from . import optim

    data = info.get("optimizer")
    if not isinstance(data, dict):
        raise ValueError(
            f"{where} holds no optimizer: save it with model.save(path, optimizer=opt)"
        )
    cls = getattr(optim, str(data.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, optim.Optimizer)) or cls is optim.Optimizer:
        raise ValueError(f"{where} names an unknown optimizer {data.get('class')!r}")
    params = data.get("params")
    n = len(model.parameters())
    if not isinstance(params, list) or not all(isinstance(i, int) and 0 <= i < n for i in params):
        raise ValueError(f"{where}: the optimizer's parameters do not match the model")
    steps, nslots = data.get("steps", 0), data.get("slots", 0)
    if not isinstance(steps, int) or steps < 0 or not isinstance(nslots, int) or nslots < 0:
        raise ValueError(f"{where}: the optimizer's step count is malformed")
    slots = []
    for i in range(len(params)):
        arrays = []
        for k in range(nslots):
            key = f"{_OPT_PREFIX}{i}.{k}"
            if key not in tensors:
                raise ValueError(f"{where}: the optimizer state lacks {key!r}")
            arrays.append(np.ascontiguousarray(tensors[key], dtype=model.dtype))
        slots.append(arrays)
    expected = {f"{_OPT_PREFIX}{i}.{k}" for i in range(len(params)) for k in range(nslots)}
    extra = sorted(k for k in tensors if k.startswith(_OPT_PREFIX) and k not in expected)
    if extra:
        raise ValueError(
            f"{where}: the optimizer state does not match the optimizer; unexpected: "
            + ", ".join(extra[:5])
        )
    config = data.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the optimizer's config is malformed")
    plist = model.parameters()
    opt = cls.__new__(cls)
    opt.params = [plist[i] for i in params]
    opt.defaults = dict(config)
    group = data.get("group") or {}
    try:
        if not opt.params:
            raise ValueError("it updates no parameters")
        opt._bind(opt.params[0], config)
        opt._core.set_state(steps, slots)
        if not isinstance(group, dict):
            raise TypeError("the scheduler values must be an object")
        opt._set_sched_values({k: optim._num(k, v) for k, v in group.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the optimizer does not match the model: {e}") from None
    return opt


def load(
    path: str | os.PathLike[str], with_optimizer: bool = False, with_scheduler: bool = False
) -> Any:
    """Loads a model saved with :meth:`Sequential.save`.

    Returns the model; with ``with_optimizer=True`` ``(model, optimizer)``;
    with ``with_scheduler=True`` too ``(model, optimizer, scheduler)``. The
    model continues exactly where the saved one was: training on from a
    loaded checkpoint gives the weights an uninterrupted run gives, bit for
    bit. A file without the requested part, an architecture naming an unknown
    layer, or tensors that do not match raise ``ValueError``.
    """
    where = _path(path)
    tensors, meta = _core.read_safetensors(where)
    return _load_contents(dict(tensors), dict(meta), where, with_optimizer, with_scheduler)


def _load_contents(
    tensors: dict[str, np.ndarray],
    meta: dict[str, str],
    where: str,
    with_optimizer: bool,
    with_scheduler: bool,
) -> Any:
    model, info = model_from_contents(tensors, meta, where)
    if not (with_optimizer or with_scheduler):
        return model
    opt = optimizer_from_contents(model, tensors, info, where)
    if not with_scheduler:
        return model, opt
    if "scheduler" not in info:
        raise ValueError(f"{where} holds no scheduler: save it with model.save(..., scheduler=s)")
    return model, opt, _scheduler_from_json(info["scheduler"], opt)


def loads(data: bytes, with_optimizer: bool = False, with_scheduler: bool = False) -> Any:
    """:func:`load` from bytes (what :func:`dumps` returns)."""
    tensors, meta = _core.loads_safetensors(data)
    return _load_contents(dict(tensors), dict(meta), "<bytes>", with_optimizer, with_scheduler)


def dumps(
    model: Sequential, optimizer: Optimizer | None = None, scheduler: LRScheduler | None = None
) -> bytes:
    """The bytes :meth:`Sequential.save` would write."""
    tensors, meta = model_contents(model, optimizer, scheduler)
    return _core.dumps_safetensors(tensors, meta)

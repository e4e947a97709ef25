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

This module owns the model file format (the metadata, the architecture);
it sits above the model, the optimizers and the schedulers, each of which
writes and reads its own part (``Optimizer._checkpoint``,
``lr_scheduler._checkpoint``). The plain safetensors functions are
``ferrograd._safetensors``'s, re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core, lr_scheduler, optim
from . import layers as _layers
from . import model as _model
from ._optimizer import CHECKPOINT_PREFIX as _OPT_PREFIX
from ._safetensors import file_path as _path
from ._safetensors import load_file, save_file
from ._safetensors import read_metadata as read_metadata
from .functional import Model
from .lr_scheduler import LRScheduler
from .model import BaseModel, Sequential
from .optim import Optimizer

__all__ = ["save_file", "load_file", "load"]

#: Format version of the ``"ferrograd"`` metadata entry of model files.
FORMAT_VERSION = 1


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot store {type(v).__name__} in a model file")


def model_contents(
    model: BaseModel, optimizer: Optimizer | None = None, scheduler: LRScheduler | None = None
) -> tuple[list[tuple[str, np.ndarray]], dict[str, str]]:
    """The tensors and metadata :meth:`Sequential.save` writes."""
    info: dict[str, Any] = {
        "version": FORMAT_VERSION,
        # A Sequential's layer list, or a graph Model's graph and name.
        "architecture": (
            {"graph": model._graph(), "name": model.name}
            if isinstance(model, Model)
            else [json.loads(ly._spec()) for ly in model.layers]
        ),
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
        info["optimizer"], opt_tensors = optimizer._checkpoint()
        tensors += opt_tensors
    if scheduler is not None:
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"scheduler must be an LR scheduler, got {type(scheduler).__name__}")
        if optimizer is None or scheduler.optimizer is not optimizer:
            raise ValueError("save a scheduler together with the optimizer it schedules")
        info["scheduler"] = lr_scheduler._checkpoint(scheduler)
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
) -> tuple[BaseModel, dict[str, Any]]:
    """The model a file describes, and its metadata object."""
    info = _model_info(meta, where)
    arch = info.get("architecture")
    if isinstance(arch, dict) and "graph" in arch:
        return _graph_model(arch, tensors, info, where), info
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
    _restore(model, tensors, info, where)
    return model, info


def _graph_model(
    arch: Mapping[str, Any], tensors: Mapping[str, np.ndarray], info: Mapping[str, Any], where: str
) -> Model:
    """A graph :class:`~ferrograd.Model` from its file's contents."""
    try:
        seed = info.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"the seed must be an int, got {seed!r}")
        model = Model._from_graph(
            arch["graph"], arch.get("name"), seed, info.get("dtype", "float32"), init=False
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    _restore(model, tensors, info, where)
    return model


def _restore(
    model: BaseModel, tensors: Mapping[str, np.ndarray], info: Mapping[str, Any], where: str
) -> None:
    """Loads a built model's weights, random state and counters from a file."""
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


def optimizer_from_contents(
    model: BaseModel, tensors: Mapping[str, np.ndarray], info: Mapping[str, Any], where: str
) -> Optimizer:
    """The optimizer a model file holds, bound to ``model``."""
    data = info.get("optimizer")
    if not isinstance(data, dict):
        raise ValueError(
            f"{where} holds no optimizer: save it with model.save(path, optimizer=opt)"
        )
    return optim._from_checkpoint(model, tensors, data, where)


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
    return model, opt, lr_scheduler._from_checkpoint(info["scheduler"], opt)


def loads(data: bytes, with_optimizer: bool = False, with_scheduler: bool = False) -> Any:
    """:func:`load` from bytes (what :func:`dumps` returns)."""
    tensors, meta = _core.loads_safetensors(data)
    return _load_contents(dict(tensors), dict(meta), "<bytes>", with_optimizer, with_scheduler)


def dumps(
    model: BaseModel, optimizer: Optimizer | None = None, scheduler: LRScheduler | None = None
) -> bytes:
    """The bytes :meth:`Sequential.save` would write."""
    tensors, meta = model_contents(model, optimizer, scheduler)
    return _core.dumps_safetensors(tensors, meta)


def _save(
    model: BaseModel,
    path: str | os.PathLike[str],
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
) -> None:
    """What :meth:`Sequential.save` does: the model file, written atomically."""
    tensors, meta = model_contents(model, optimizer, scheduler)
    _core.write_safetensors(_path(path), tensors, meta)


# `Sequential.save` and pickling write and read model files, whose format is
# this module's; it sits above the model (it builds models, optimizers and
# schedulers), so it hands the model module its functions here.
_model._register_checkpoints(_save, dumps, loads)

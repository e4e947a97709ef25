"""Plain safetensors files: any ``{name: array}`` mapping, written
atomically and read back, with no notion of models. Whole-model checkpoints
(:mod:`ferrograd.serialization`) and ``model.save_weights`` are built on it.

Files are read by the Rust core (the ``safetensors`` crate), which checks
the header, dtypes, shapes and offsets before allocating anything the file
controls; a bad file raises ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from ._data import untorch

__all__ = ["save_file", "load_file", "read_metadata", "file_path"]


def file_path(path: Any) -> str:
    """``path`` as a str (a ``TypeError`` for anything but a str or ``os.PathLike``)."""
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
    _core.write_safetensors(file_path(path), _items(tensors), _meta(metadata))


def load_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a safetensors file as ``{name: array}`` (in name order):
    float16 and bfloat16 become float32, every integer type int64. A file
    that is not a valid safetensors file raises ``ValueError``."""
    tensors, _ = _core.read_safetensors(file_path(path))
    return dict(tensors)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata map of a safetensors file (after checking the file)."""
    _, meta = _core.read_safetensors(file_path(path))
    return dict(meta)

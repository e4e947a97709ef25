"""Turning user input into arrays the engine reads without surprises.

The engine reads uint8, float32 and float64 features directly (converting
batch by batch), so those are never copied unless they are non-contiguous
or misaligned; other numeric dtypes are converted to the model's dtype.
Value checks (NaN/inf, label ranges, shapes against the model) happen in
Rust, once, before any work starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._core import ShapeError

_DIRECT = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))


def untorch(value: Any) -> Any:
    """A torch tensor as a numpy array (bfloat16, which numpy lacks, as
    float32); anything else unchanged. torch is never imported."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return value


def _numeric(a: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{what} could not be converted to a numeric array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{what} has dtype {arr.dtype} ({_kind_name(arr.dtype)}); expected a numeric array"
        )
    return arr


def _kind_name(dt: np.dtype) -> str:
    return {
        "O": "Python objects",
        "U": "strings",
        "S": "bytes",
        "c": "complex numbers",
        "M": "datetimes",
        "m": "timedeltas",
        "V": "raw records",
    }.get(dt.kind, dt.kind)


def as_features(x: Any, dtype: np.dtype, what: str = "X") -> np.ndarray:
    """``x`` as a C-contiguous, aligned uint8/float32/float64 array with a batch axis."""
    arr = _numeric(x, what)
    if arr.ndim < 2:
        raise ShapeError(
            f"{what} must have shape (N, features...), got shape {arr.shape}; "
            "for one feature per sample use X.reshape(-1, 1)"
        )
    if arr.dtype not in _DIRECT:
        arr = arr.astype(dtype)
    return np.require(arr, requirements=["C", "A"])


def as_target(y: Any, loss_name: str, dtype: np.dtype, n: int | None = None) -> np.ndarray:
    """Targets for ``loss_name``: int64 class labels for cross-entropy with a
    1-d ``y``, otherwise values in the model's dtype."""
    arr = _numeric(y, "y")
    if arr.ndim == 0:
        raise ShapeError("y must have a batch dimension, got a scalar")
    if loss_name == "cross_entropy" and arr.ndim == 1:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                from ._core import NonFiniteError

                raise NonFiniteError("y contains NaN or inf")
            frac = arr != np.round(arr)
            if np.any(frac):
                i = int(np.argmax(frac))
                raise ValueError(
                    f"class labels must be integers, got {arr[i]!r} at index {i}; for "
                    "probability targets pass y of shape (N, C)"
                )
            huge = np.abs(arr) >= 2.0**62  # would not survive the cast to int64
            if np.any(huge):
                i = int(np.argmax(huge))
                raise ValueError(f"class label {arr[i]!r} at index {i} is out of range")
        return np.require(arr.astype(np.int64, copy=False), requirements=["C", "A"])
    return np.require(arr.astype(dtype, copy=False), requirements=["C", "A"])

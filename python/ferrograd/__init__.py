"""ferrograd: train neural networks by backpropagation on the CPU, fast.

Every heavy step (forward pass, loss, backward pass, weight update) runs in
Rust across all cores; this package holds the friendly Python layer::

    import ferrograd as fg
    model = fg.Sequential([fg.layers.Flatten(), fg.layers.Rescaling(1 / 255),
                           fg.layers.Dense(784, 128), fg.layers.ReLU(),
                           fg.layers.Dense(128, 10)], seed=0)
    opt = fg.optim.Adam(model.parameters(), lr=1e-3)
    history = model.fit(x_train, y_train, "cross_entropy", opt, epochs=2)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from . import callbacks, datasets, diagnostics, layers, losses, optim, plot, serialization
from ._core import InternalError, NonFiniteError, ShapeError, StateError
from ._core import get_num_threads as _get_num_threads
from ._core import set_num_threads as _set_num_threads
from .model import History, Parameter, Sequential, clip_grad_norm_, gradcheck
from .serialization import load, load_file, save_file

try:
    __version__ = _version("ferrograd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Sequential",
    "Parameter",
    "History",
    "gradcheck",
    "clip_grad_norm_",
    "layers",
    "losses",
    "optim",
    "datasets",
    "callbacks",
    "diagnostics",
    "plot",
    "serialization",
    "load",
    "save_file",
    "load_file",
    "set_num_threads",
    "get_num_threads",
    "ShapeError",
    "NonFiniteError",
    "StateError",
    "InternalError",
    "__version__",
]


def set_num_threads(n: int) -> None:
    """Sets the number of worker threads for all later work (``n >= 1``).

    The default is ``$FERROGRAD_NUM_THREADS`` if set, else the number of cores.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    _set_num_threads(n)


def get_num_threads() -> int:
    """The number of worker threads in use."""
    return _get_num_threads()

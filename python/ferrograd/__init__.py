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
from ._core import get_memory_limit as _get_memory_limit
from ._core import get_num_threads as _get_num_threads
from ._core import memory_available as _memory_available
from ._core import set_memory_limit as _set_memory_limit
from ._core import set_num_threads as _set_num_threads
from .functional import Input, Model, Node
from .model import History, Parameter, Sequential, clip_grad_norm_, gradcheck
from .serialization import load, load_file, save_file

try:
    __version__ = _version("ferrograd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Sequential",
    "Model",
    "Input",
    "Node",
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
    "set_memory_limit",
    "get_memory_limit",
    "memory_available",
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


def set_memory_limit(limit: int | str | None) -> None:
    """Sets the memory budget checked before every large allocation.

    Building a model (parameters, gradients, buffers), running a batch larger
    than any before (activations and scratch) and an optimizer's first step
    (its state) first check that the memory they are about to allocate fits
    the limit, and raise ``MemoryError`` naming the bytes needed and available
    otherwise, before anything changes. ``limit`` is:

    - ``None`` (or ``"auto"``), the default: what the system has available at
      the time (Linux's ``MemAvailable`` within the process's cgroup limit;
      no check on systems where it cannot be read), see
      :func:`memory_available`;
    - an int: a fixed number of bytes each such allocation may take, in place
      of the detected memory (for machines that overcommit); ``0`` disables
      the check;
    - a str as ``$FERROGRAD_MEMORY_LIMIT`` takes it: bytes with an optional
      ``K``/``M``/``G``/``T`` suffix (powers of 1024, e.g. ``"512M"``,
      ``"1.5G"``), ``"auto"``, or ``"off"``/``"none"``/``"0"`` to disable it.

    The default comes from ``$FERROGRAD_MEMORY_LIMIT`` when it is set.
    """
    if limit is None:
        _set_memory_limit("auto")
    elif isinstance(limit, bool) or not isinstance(limit, (int, str)):
        raise TypeError(f"memory limit must be an int, a str or None, got {type(limit).__name__}")
    else:
        _set_memory_limit(str(limit))


def get_memory_limit() -> int | None:
    """The memory budget in force: ``None`` for the detected available memory
    (the default), ``0`` when the check is off, else the limit in bytes."""
    return _get_memory_limit()


def memory_available() -> int | None:
    """The memory (bytes) the system reports available to this process now,
    which is the limit under the default ``None``: Linux's ``MemAvailable``,
    lowered to the room left under the process's cgroup memory limit;
    ``None`` where neither can be read (other systems)."""
    return _memory_available()

"""Data-parallel training across processes and machines, over MPI.

Needs the ``mpi`` extra (``pip install 'ferrograd[mpi]'``: mpi4py >= 4.1
with MPICH's wheel; mpi4py also runs on an MPI the system provides). Launch
as MPI programs are launched::

    mpiexec -n 4 python -m mpi4py train.py

and train with ``model.fit(X, y, ..., distributed=True)``: every rank passes
the same data, ``batch_size`` is the global batch, each rank computes a
contiguous slice of every batch of one shared shuffled order, and the
gradients are summed across ranks once per step inside the Rust epoch (an
in-place ``MPI_Allreduce`` on a view of the flat gradient buffer). The
weights equal single-process training with the same global batch to float
rounding, for models without BatchNorm or Dropout: BatchNorm normalises
with each rank's local batch statistics (as PyTorch's DDP by default) and
Dropout draws each rank's masks for its own slice. ``distributed="shard"``
trains on a part of the data per rank instead.

For custom loops, :func:`broadcast_parameters` and
:func:`allreduce_gradients` (as Horovod's). ferrograd links nothing of MPI.

One machine: give each rank its share of the cores with
``FERROGRAD_NUM_THREADS`` (e.g. 2 ranks on 8 cores:
``mpiexec -n 2 -env FERROGRAD_NUM_THREADS 4 python -m mpi4py train.py``).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

try:
    from mpi4py import MPI
except ImportError as _exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "ferrograd.distributed needs mpi4py and an MPI library: "
        "pip install 'ferrograd[mpi]' (mpi4py>=4.1 and the mpich wheel)"
    ) from _exc

from . import _core, _parallel

__all__ = [
    "allreduce_gradients",
    "barrier",
    "broadcast_parameters",
    "init",
    "is_initialized",
    "rank",
    "size",
]

_MPI_TYPES = {"float32": MPI.FLOAT, "float64": MPI.DOUBLE}
_previous_hook: Callable[..., Any] | None = None
#: Seconds between printing a failed rank's traceback and aborting the job.
_ABORT_GRACE_S = 0.5


def init(comm: Any = None) -> None:
    """Joins the job: ``comm`` (an mpi4py intra-communicator; ``COMM_WORLD``
    by default) becomes the communicator of every distributed call. Also
    installs an exception hook so that an uncaught exception on any rank
    prints its traceback and aborts the whole job (``MPI_Abort``) instead
    of leaving the other ranks waiting (``python -m mpi4py`` does the same).
    Calling it again replaces the communicator."""
    if comm is None:
        comm = MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intra-communicator, got {type(comm).__name__}")
    _parallel.comm = comm
    global _previous_hook
    if _previous_hook is None:
        _previous_hook = sys.excepthook
        sys.excepthook = _abort_on_exception


def _abort_on_exception(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """The job's exception hook: the traceback, then ``MPI_Abort``."""
    comm = _parallel.comm
    if _previous_hook is not None:
        _previous_hook(kind, exc, tb)
    if comm is not None and comm.Get_size() > 1:
        sys.stderr.write(
            f"ferrograd.distributed: rank {comm.Get_rank()} of {comm.Get_size()} failed; "
            "aborting the job\n"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Abort kills the job at once: give the launcher a moment to
        # forward this rank's traceback first (it is lost otherwise).
        time.sleep(_ABORT_GRACE_S)
        comm.Abort(1)


def is_initialized() -> bool:
    """Whether :func:`init` ran in this process."""
    return _parallel.comm is not None


def _comm() -> Any:
    if _parallel.comm is None:
        raise RuntimeError("ferrograd.distributed is not initialised: call dist.init() first")
    return _parallel.comm


def rank() -> int:
    """This process's rank in the job (0 .. size() - 1)."""
    return int(_comm().Get_rank())


def size() -> int:
    """The number of processes in the job."""
    return int(_comm().Get_size())


def barrier() -> None:
    """Waits until every rank reaches this call."""
    _comm().Barrier()


def _is_writer() -> bool:
    """True on the rank that writes files and progress (rank 0, or no job)."""
    return _parallel.is_writer()


def _barrier() -> None:
    _parallel.barrier()


def _reducer(comm: Any, dtype: Any) -> Callable[[memoryview], None]:
    """The gradient hook: an in-place sum across ranks of the raw bytes of
    a flat ``dtype`` buffer."""
    mpi_type = _MPI_TYPES[np.dtype(dtype).name]

    def reduce(view: memoryview) -> None:
        comm.Allreduce(MPI.IN_PLACE, [view, mpi_type], op=MPI.SUM)

    return reduce


def allreduce_gradients(model: Any) -> None:
    """Averages the gradients of ``model`` across ranks, in place (one
    all-reduce of the flat gradient buffer): for a custom loop, between
    ``backward`` and the optimizer's ``step``. Each rank's gradient should
    be the mean over its own batch; the result is the mean of the ranks'."""
    comm = _comm()
    _core.reduce_grads(model._core, _reducer(comm, model.dtype), 1.0 / comm.Get_size())


def broadcast_parameters(model: Any, root: int = 0) -> None:
    """Gives every rank the parameters, buffers and random generator state
    (the shuffle order, Dropout's masks) of rank ``root``'s ``model``."""
    comm = _comm()
    state = model.state_dict()
    arrays = {k: np.array(v, order="C") for k, v in state.items()}
    for a in arrays.values():
        comm.Bcast(a, root=root)
    model.load_state_dict(arrays)
    model._core.set_rng_state(comm.bcast(model._core.get_rng_state(), root=root))


def _digest(values: Any) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:12]


def _part(n: int, r: int, ranks: int) -> slice:
    """Rank ``r``'s contiguous part of ``n`` items (the core's split)."""
    return slice(r * n // ranks, (r + 1) * n // ranks)


def _reduce_totals(comm: Any, t: tuple[float, float, int, int]) -> np.ndarray:
    out = np.array(t, dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
    return out


def _means(t: np.ndarray) -> tuple[float, float]:
    """Mean loss and accuracy of summed totals (the caller keeps accuracy
    where the loss defines it)."""
    return (float(t[0] / t[1]) if t[1] else 0.0), (float(t[2] / t[3]) if t[3] else 0.0)


def _check_same(comm: Any, settings: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming every setting that differs across ranks."""
    every = comm.allgather(settings)
    bad = []
    for key in settings:
        values = [s.get(key) for s in every]
        if any(v != values[0] for v in values):
            ranks = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            bad.append(f"{key} ({ranks})")
    if bad:
        raise ValueError("distributed fit: mismatch across ranks in " + "; ".join(bad))


class _FitPlan:
    """How one ``fit(distributed=...)`` shares its work: checks that the
    ranks agree, broadcasts rank 0's state, and reduces the logs."""

    def __init__(self, model: Any, mode: Any, n: int, batch_size: int, **settings: Any) -> None:
        if mode is True:
            mode = "split"
        if mode not in ("split", "shard"):
            raise ValueError(f'distributed must be True, False, "split" or "shard", got {mode!r}')
        if _parallel.comm is None:
            init()
        comm = self.comm = _comm()
        self.mode = mode
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        info = model._core.param_info()
        same = {
            "parameter count": model.num_params(),
            "parameter shapes": _digest(info),
            "dtype": np.dtype(model.dtype).name,
            "mode": mode,
            "batch_size": batch_size,
            **settings,
        }
        if mode == "split":
            same["number of samples"] = n
        _check_same(comm, same)
        broadcast_parameters(model)
        if mode == "shard":
            self.steps = min(-(-c // batch_size) for c in comm.allgather(n))
        else:
            self.steps = -(-n // batch_size)
        self.reduce = _reducer(comm, model.dtype)
        self.model = model

    def epoch_kwargs(self) -> dict[str, Any]:
        """The data-parallel arguments of the core's ``train_epoch``."""
        steps = self.steps if self.mode == "shard" else 0
        return {"parallel": (self.mode, self.rank, self.size, steps), "reduce": self.reduce}

    def train_logs(self, totals: tuple[float, float, int, int]) -> tuple[float, float]:
        """The epoch's loss and accuracy over every rank's samples; also
        gives every rank rank 0's buffers (BatchNorm's running statistics,
        updated from each rank's local batches), as DDP does."""
        buffers = {k: np.array(v, order="C") for k, v in self.model.named_buffers()}
        for a in buffers.values():
            self.comm.Bcast(a, root=0)
        if buffers:
            self.model.load_state_dict(buffers, strict=False)
        return _means(_reduce_totals(self.comm, totals))

    def validate(
        self, model: Any, x: np.ndarray, y: np.ndarray, spec: str, batch_size: int
    ) -> tuple[float, float]:
        """Validation loss and accuracy over the union: split mode evaluates
        this rank's part of the shared data, shard mode its own data."""
        if self.mode == "split":
            part = _part(len(x), self.rank, self.size)
            x, y = x[part], y[part]
        t: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)
        if len(x):
            t = model._core.evaluate_totals(x, y, spec, batch_size)
        return _means(_reduce_totals(self.comm, t))


def _evaluate(
    model: Any, x: np.ndarray, y: np.ndarray, spec: str, batch_size: int
) -> tuple[float, float]:
    """``evaluate(distributed=True)``: each rank its part, totals summed."""
    if _parallel.comm is None:
        init()
    comm = _comm()
    part = _part(len(x), comm.Get_rank(), comm.Get_size())
    t: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)
    if part.stop > part.start:
        t = model._core.evaluate_totals(x[part], y[part], spec, batch_size)
    return _means(_reduce_totals(comm, t))


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``predict(distributed=True)``: each rank its part, gathered on all."""
    if _parallel.comm is None:
        init()
    comm = _comm()
    ranks = comm.Get_size()
    parts = [_part(len(x), r, ranks) for r in range(ranks)]
    mine = parts[comm.Get_rank()]
    shape = tuple(model._core.layer_shapes(list(x.shape[1:]))[-1])
    row = int(np.prod(shape))
    local = np.empty((0, *shape), dtype=model.dtype)
    if mine.stop > mine.start:
        local = np.ascontiguousarray(model._core.predict(x[mine], batch_size))
    out = np.empty((len(x), *shape), dtype=model.dtype)
    counts = [(p.stop - p.start) * row for p in parts]
    displs = [p.start * row for p in parts]
    comm.Allgatherv(local, [out, counts, displs, _MPI_TYPES[np.dtype(model.dtype).name]])
    return out

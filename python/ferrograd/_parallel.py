"""Which process writes files and progress: the one process, or rank 0 of a
data-parallel job once :func:`ferrograd.distributed.init` ran.

Needs no MPI (so the writers can ask without importing mpi4py);
:mod:`ferrograd.distributed` sets the communicator here.
"""

from __future__ import annotations

from typing import Any

#: The mpi4py communicator of an initialised job, else None.
comm: Any = None


def is_writer() -> bool:
    """True where files and progress are written: rank 0, or no job."""
    return comm is None or comm.Get_rank() == 0


def barrier() -> None:
    """Waits for every rank of the job (no-op without one)."""
    if comm is not None:
        comm.Barrier()

"""Spawned worker processes: telling a worker that cannot start from one that died at its work.

With the "spawn" start method every worker process imports the caller's main module. A script
that calls a vimpac function using worker processes at its top level, without an
`if __name__ == "__main__":` guard, therefore runs that call again inside every worker, which
fails there, and the worker dies before it takes any task. Seen from the main process this
looks exactly like a worker killed by a crashing decoder or the out-of-memory killer, so the
callers check with `worker_can_start` before blaming the work item.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

WORKERS_DIE_ON_START = (
    "worker processes die as they start, before taking any work. Usually the calling script lacks an "
    "`if __name__ == \"__main__\":` guard: each spawned worker re-runs the script's top-level code, "
    "here the call that starts the workers (put that call under the guard, or pass workers=0); "
    "otherwise the machine may be out of memory")


def _ready() -> bool:
    return True


def worker_can_start(pool: ProcessPoolExecutor) -> bool:
    """Whether a fresh `pool` can run a task at all (False: its worker died on start-up)."""
    try:
        return pool.submit(_ready).result()
    except BrokenProcessPool:
        return False

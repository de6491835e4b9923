"""Spawned worker processes: telling a worker that cannot start from one that died at its work.

With the "spawn" start method every worker process imports the caller's main module. A script
that calls a vimpac function using worker processes at its top level, without an
`if __name__ == "__main__":` guard, therefore runs that call again inside every worker, which
fails there, and the worker dies before it takes any task. Seen from the main process this
looks exactly like a worker killed by a crashing decoder or the out-of-memory killer, so the
callers check with `worker_can_start` before blaming the work item.

A pool's worker also waits for tasks on a pipe whose write end it holds itself, so it never
sees EOF when the main process dies: after a SIGKILL of the main process it would wait forever,
holding its memory, unless its initializer calls `exit_with_parent`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

WORKERS_DIE_ON_START = (
    "worker processes die as they start, before taking any work. Usually the calling script lacks an "
    "`if __name__ == \"__main__\":` guard: each spawned worker re-runs the script's top-level code, "
    "here the call that starts the workers (put that call under the guard, or pass workers=0); "
    "otherwise the machine may be out of memory")

PARENT_POLL_S = 0.5


def _ready() -> bool:
    return True


def worker_can_start(pool: ProcessPoolExecutor) -> bool:
    """Whether a fresh `pool` can run a task at all (False: its worker died on start-up)."""
    try:
        return pool.submit(_ready).result()
    except BrokenProcessPool:
        return False


def exit_with_parent(parent_pid: int) -> None:
    """Make this process exit as soon as `parent_pid` (its parent) is gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc by that name: the watchdog still works
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watchdog() -> None:  # portable fallback: orphans are re-parented, so the parent id changes
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watchdog, name="exit-with-parent", daemon=True).start()

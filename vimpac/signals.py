"""Stopping long jobs cleanly on Ctrl-C / SIGTERM (a cluster's pre-emption notice)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Sequence

# The signals that ask a long job to stop: Ctrl-C, and `timeout` / SLURM's pre-emption notice.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[str]]:
    """Yields a list that gets the signal's name ("SIGINT", "SIGTERM") on the first SIGINT /
    SIGTERM, for a loop to notice at its next safe point; a later SIGINT (Ctrl-C pressed again)
    raises KeyboardInterrupt at once. A repeated SIGTERM does not: under SLURM + torchrun a
    process gets one SIGTERM from SLURM and another forwarded by torchrun, and the scheduler
    kills a job that overstays anyway. Only the main thread can handle signals; elsewhere the
    list stays empty and signals keep their handlers."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request_stop(signum: int, _frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not received:
            received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code(signal_name: str) -> int:
    """The shell's exit status for a job stopped by `signal_name`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(getattr(signal, signal_name, signal.SIGINT))


@contextlib.contextmanager
def signals_blocked(signals: Sequence[int]) -> Iterator[None]:
    """Block `signals` in this thread while inside (they are delivered, to another thread or
    on leaving, afterwards); where the platform has no signal masks, nothing."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

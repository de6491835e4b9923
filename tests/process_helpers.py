"""Processes a test started, seen from /proc (psutil is not installed): which are still alive
below a process, e.g. the worker processes of a run the test killed; and waiting on what they
do (a file appearing, a result arriving) rather than for a fixed time.

The waits poll their condition and return as soon as it holds, so their limit (PATIENCE) costs
nothing in a normal run; it is far beyond one so that a loaded 2-core CI machine, where starting
torch in three processes can take a minute, fails only on a real hang. A failed wait says what
it was waiting for, and a process that ended first fails it at once with its exit code.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator


def descendants(pid: int) -> set[int]:
    """Ids of the living processes below `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


PATIENCE = 600.0  # seconds


def wait_until(condition: Callable[[], bool], waiting_for: str, process: subprocess.Popen | None = None,
               output: Callable[[], str] | None = None, seconds: float = PATIENCE, poll: float = 0.02) -> None:
    """Return once `condition()` holds; fail naming `waiting_for` when `seconds` pass or when
    `process` (the one expected to bring the condition about) ends first. `output()`, if given,
    is added to the failure (e.g. the end of the process's log); a `process` still running at
    the deadline is killed first, so that `output` may read its pipes to the end."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None and not condition():
            reason = f"the process ended (exit code {process.returncode}) before {waiting_for}"
            raise AssertionError(reason + (f"; its output:\n{output()}" if output else ""))
        if time.monotonic() > deadline:
            if process is not None:
                process.kill()
            reason = f"waited {seconds:.0f} s for {waiting_for}"
            raise AssertionError(reason + (f"; output:\n{output()}" if output else ""))
        time.sleep(poll)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process group's MASTER_PORT."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(target: Callable[..., None], *args: Any, world_size: int = 2) -> tuple[list[Any], Any]:
    """Start `world_size` spawned processes running `target(rank, port, *args, queue)`, ranks of
    one process group on a free port; returns them and the queue for their results (`results_of`)."""
    import multiprocessing

    port = free_port()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=target, args=(rank, port, *args, queue)) for rank in range(world_size)]
    for process in processes:
        process.start()
    return processes, queue


def results_of(queue: Any, processes: list[Any], count: int, seconds: float = PATIENCE) -> list[Any]:
    """The `count` results that spawned `processes` put on `queue`, after which each must exit
    with code 0. A process that fails (e.g. one rank of a gloo group that then leaves the other
    waiting forever) fails this at once, naming it."""
    import queue as queue_module

    deadline = time.monotonic() + seconds
    results: list[Any] = []
    while len(results) < count:
        try:
            results.append(queue.get(timeout=0.2))
        except queue_module.Empty:
            failed = [f"{p.name} (exit code {p.exitcode})" for p in processes if p.exitcode not in (None, 0)]
            assert not failed, f"{', '.join(failed)} failed; {len(results)} of {count} results had come"
            assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {count} results; {len(results)} came"
    for p in processes:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
        assert p.exitcode == 0, f"{p.name} exited with code {p.exitcode} (None: still running) after its result"
    return results


def wait_gone(pids: set[int], seconds: float = PATIENCE) -> set[int]:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {pid for pid in pids if alive(pid)}


def script_error_line(script: Path, cwd: Path, pythonpath: list[Path], exception: str) -> str:
    """Run `script` with `pythonpath` (one thread) and return the line of the uncaught `exception`
    (its qualified name) it must fail with; the interpreter may print resource-tracker warnings
    after that line, so the last line starting with it is taken."""
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{exception}: ")]
    assert lines, result.stderr
    return lines[-1]


def imported_in_fresh_process(code: str, module: str) -> bool:
    """Whether a fresh interpreter has imported `module` after running `code`: a start-up cost
    (e.g. torch._dynamo, seconds once per process) that the test process, which has long since
    imported everything, cannot see."""
    import sys

    check = f"{code}\nimport sys\nprint({module!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1] == "True"


@contextlib.contextmanager
def fifo_writer_after(fifo: Path, seconds: float = 10.0) -> Iterator[None]:
    """While inside: a shell that, after `seconds`, opens `fifo` for writing and closes it at
    once. Code that wrongly opens a FIFO for reading blocks in open() - in safetensors with the
    GIL held, so no Python thread could free it - until then, and then reads an empty file: its
    test fails after `seconds` instead of hanging the suite. The shell is ended on leaving."""
    writer = subprocess.Popen(["sh", "-c", 'sleep "$1"; : > "$2"', "sh", str(seconds), str(fifo)])
    try:
        yield
    finally:
        writer.kill()
        writer.wait()

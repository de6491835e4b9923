"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything durable that vimpac writes (checkpoints, token shards, manifests, reports) goes
through these helpers: write to a temporary file in the same folder, flush and fsync, then
`os.replace` onto the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    `suffix` lets libraries that insist on a file extension (safetensors, numpy) write it.
    On any exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files, and writers that replace the file (safetensors) do too; give
        # the final file the usual umask-based permissions once it is written.
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            try:
                os.fsync(f.fileno())
            except OSError as exc:
                # A write the disk could not keep (EIO, ENOSPC, EDQUOT) often surfaces only here,
                # as an OSError that names no file.
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        failed_write = writer_os_error(exc, path)
        if failed_write is not None:
            raise failed_write from exc
        raise


def writer_os_error(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """safetensors' report of a failed write ("I/O error: No space left on device (os error 28)",
    a SafetensorError that names no file) as the OSError it is, naming `path`: the CLI reports an
    OSError in one line, where this one was a traceback. None for any other exception."""
    if type(exc).__name__ != "SafetensorError":
        return None
    found = re.search(r"I/O error: (.+?) \(os error (\d+)\)", str(exc))
    if found is None:
        return None
    return OSError(int(found.group(2)), found.group(1), str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def parse_json(text: str | bytes) -> Any:
    """`json.loads` for files that may come from anyone: every failure is a ValueError. Besides
    JSONDecodeError, a number of more than 4300 digits already is one; but nesting deeper than
    Python's recursion limit (a few kilobytes of '[') raises RecursionError, which callers that
    turn bad input into one line would let through as a traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def current_umask() -> int:
    # Read without changing it (os.umask would briefly set a process-wide 0 under other threads).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def output_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be written as a file (it is a folder, the nearest existing folder above it
    is a file, or that folder is not writable), or None. Commands that write one file at the end of
    a long job check this first, so that the work is not lost to a bad --out."""
    path = Path(path)
    if path.is_dir():
        return f"{path}: is a folder; expected a file path"
    return creation_problem(path)


def creation_problem(path: str | os.PathLike) -> str | None:
    """Why `path` (a file or folder that does not exist yet) cannot be created: the nearest
    existing folder above it is a file, or cannot be written; None when it can."""
    path = Path(path)
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        return f"{path}: cannot be created, {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path}: cannot be created, no permission to write in {existing}"
    return None


def output_folder_problem(out_dir: str | os.PathLike, marker: str, what: str, overwrite: bool,
                          ignore: Sequence[str] = ()) -> str | None:
    """Why a new `what` (a tokenizer, a model folder) cannot be written to `out_dir`, or None.

    Fine: a new folder that can be created, an empty one, and, with `overwrite`, one that holds
    a `what` (has its `marker` file; `write_folder(..., replace=True)` then swaps it whole).
    Refused: a file, a folder below a file, a non-empty folder without `marker` (it may not be
    ours to delete, even with `overwrite`), and an existing `what` without `overwrite` (runs and
    stores may reference it). Entries named in `ignore` (a resumed training's checkpoints) do
    not count."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir}: exists and is not a folder; expected a new or empty {what} folder"
    if not out_dir.exists():
        return creation_problem(out_dir)
    entries = sorted(p.name for p in out_dir.iterdir() if p.name not in ignore)
    if not entries:
        return None
    listed = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
    if marker not in entries:
        return f"{out_dir}: not empty ({listed}) and not a {what} folder; choose a new or empty folder"
    if not overwrite:
        return f"{out_dir}: already holds a {what} ({listed}); pass --overwrite to replace the whole folder, or choose a new one"
    return None


def write_folder(out_dir: str | os.PathLike, replace: bool, write: Callable[[Path], None]) -> None:
    """Call `write(folder)` to fill `out_dir`; with `replace`, swap the old folder out only once
    the new one is complete, so an interruption leaves the old contents whole and nothing of them
    (a train_report.json, a demo's DONE.json) stays behind to describe the new ones."""
    out_dir = Path(out_dir)
    if not replace:
        write(out_dir)
        return
    # os.mkdir (not mkdtemp, which makes 0700) gives the staging folder umask permissions.
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging, retired = (out_dir.parent / f".{out_dir.name}.{kind}-{token}" for kind in ("new", "old"))
    os.mkdir(staging)
    try:
        write(staging)
        os.replace(out_dir, retired)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(retired, out_dir)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # The renames durable before the old contents go: a power loss must not leave neither.
    fsync_dir(out_dir.parent)
    shutil.rmtree(retired, ignore_errors=True)


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` for an OSError (`out/sub: Not a directory`), without Python's errno prefix."""
    if exc.filename is None:
        return str(exc)
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {exc.strerror or exc}"

"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything durable that vimpac writes (checkpoints, token shards, manifests, reports) goes
through these helpers: write to a temporary file in the same folder, flush and fsync, then
`os.replace` onto the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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


def _fsync_dir(folder: Path) -> None:
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


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` for an OSError (`out/sub: Not a directory`), without Python's errno prefix."""
    if exc.filename is None:
        return str(exc)
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {exc.strerror or exc}"

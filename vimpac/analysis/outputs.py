"""Writing an analysis command's files into its --out folder so that the folder describes one run.

    with staged_outputs(out, ours=is_copy_output, report="copy_baseline.json") as staging:
        save_png(staging / "copy_block_15.png", image)
        atomic_write_json(staging / "copy_baseline.json", report)

Everything is written into a hidden staging folder inside `out` first. Only when the block
completes are the files moved into `out` (each by an atomic `os.replace`, the report last), and
then the files of `out` that `ours` claims but this run did not write are removed: a rerun with
fewer settings (or without pictures) leaves no picture of the earlier run beside a report that
does not list it. On an exception nothing in `out` changes, so a failed rerun leaves the earlier
results whole rather than half replaced. Files `ours` does not claim are never touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from vimpac.io import fsync_dir

STAGING_PREFIX = ".vimpac-staging-"


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path, ours: Callable[[str], bool], report: str | None = None) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into `out_dir` (`report` last) and remove
    the files of `out_dir` that `ours(name)` claims and this run did not write."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(staging)
    try:
        try:
            yield staging
            written = sorted(path.name for path in staging.iterdir())
            for name in sorted(written, key=lambda name: name == report):  # the report last
                os.replace(staging / name, out_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when empty: a failed first run leaves no folder behind
        raise
    for stale in sorted(out_dir.iterdir()):
        if stale.name not in written and stale.is_file() and ours(stale.name):
            stale.unlink()
    fsync_dir(out_dir)

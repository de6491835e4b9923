"""Where the reference fixtures live: `shared/fixtures` beside the repository (`../shared`), or
beside the repository a clone was made from (so `git clone . /tmp/x` still finds them), or
under $VIMPAC_SHARED_DIR. One place for every test that reads them.

Missing fixtures skip their tests on a user's machine, and fail them under CI (CI set), where a
skip would hide that the authors' outputs were never compared.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dirs():
    if os.environ.get("VIMPAC_SHARED_DIR"):
        yield Path(os.environ["VIMPAC_SHARED_DIR"])
    yield REPO.parent / "shared"
    origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        yield Path(origin).resolve().parent / "shared"


def fixture_path(*parts: str) -> Path:
    """shared/fixtures/<parts...>; skips (fails under CI) when no candidate holds it."""
    for shared in _shared_dirs():
        path = shared / "fixtures" / Path(*parts)
        if path.exists():
            return path
    message = (f"reference fixture fixtures/{'/'.join(parts)} not found in {REPO.parent / 'shared'}, beside the "
               "clone's origin, or in $VIMPAC_SHARED_DIR")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)

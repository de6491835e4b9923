"""Work functions for the demo's training workers in tests (module level: spawned workers import
them by name)."""

from __future__ import annotations

import os


def finish(value: int, progress: bool) -> dict:
    return {"value": value}


def die(progress: bool) -> dict:
    os._exit(9)  # as the out-of-memory killer would end the process

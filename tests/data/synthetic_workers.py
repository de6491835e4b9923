"""A video maker for the synthetic-generation tests' worker processes (module level: spawned
workers import it by name)."""

from __future__ import annotations

import os

from vimpac.data.synthetic import _make_video


def make_or_die(job):
    """`_make_video`, except that job index 3 kills its process, as the out-of-memory killer would."""
    if job.index == 3:
        os._exit(9)
    return _make_video(job)

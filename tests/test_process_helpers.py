"""The waits of the subprocess tests fail at once, saying what they waited for, when the process
that should have brought it about has ended, instead of waiting out their limit."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

import pytest

from process_helpers import results_of, wait_until


def test_wait_until_fails_at_once_when_the_process_ends_first():
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('no checkpoint written')"],
                               stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)ended \(exit code 1\) before the first checkpoint.*no checkpoint"):
        wait_until(lambda: False, "the first checkpoint", process, output=lambda: process.communicate()[1])
    assert time.monotonic() - started < 60  # not the 600 s limit


def test_wait_until_names_what_it_waited_for_at_its_limit():
    with pytest.raises(AssertionError, match="waited 0 s for the first video"):
        wait_until(lambda: False, "the first video", seconds=0.1)
    wait_until(lambda: True, "nothing")


def _exit_with(code):
    sys.exit(code)


def test_results_of_fails_at_once_naming_a_worker_that_failed():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_exit_with, args=(3,), name="rank-1")
    worker.start()
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"rank-1 \(exit code 3\) failed; 0 of 1 results had come"):
        results_of(queue, [worker], count=1)
    assert time.monotonic() - started < 60

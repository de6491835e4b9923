"""Stopping long jobs on Ctrl-C / SIGTERM (vimpac/signals.py)."""

from __future__ import annotations

import os
import signal

import pytest

from vimpac.signals import exit_code, stop_on_signals


def test_the_first_signal_asks_the_loop_to_stop_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as received:
        assert received == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == ["SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_stops_at_once():
    with stop_on_signals() as received:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert received == ["SIGINT"]


def test_a_repeated_sigterm_keeps_the_clean_stop():
    # Under SLURM + torchrun a process gets SIGTERM from SLURM and again from torchrun: the
    # second one used to stop tokenize at once, losing the videos decoded but not committed.
    with stop_on_signals() as received:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == ["SIGTERM"]
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C still forces it
            os.kill(os.getpid(), signal.SIGINT)


def test_exit_codes_are_the_shells():
    assert (exit_code("SIGINT"), exit_code("SIGTERM")) == (130, 143)

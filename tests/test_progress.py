"""Progress output: a tqdm bar on a terminal, a bounded number of whole lines in a log file."""

from __future__ import annotations

import io

import pytest

from vimpac.progress import LOG_FILE_REPORTS, MAX_QUIET_SECONDS, LineProgress, NoProgress, progress_bar, track


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report_lines(text: str, desc: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{desc}: ")]


def test_on_a_terminal_it_is_a_tqdm_bar():
    from tqdm import tqdm

    stream = Terminal()
    with progress_bar(5, "tokenize r0", "video", stream=stream) as bar:
        assert isinstance(bar, tqdm)
        for _ in range(5):
            bar.update(1)
    assert "tokenize r0: 100%" in stream.getvalue() and "\r" in stream.getvalue()


def test_in_a_log_file_it_is_whole_lines_not_a_bar(tmp_path):
    # A bar in a file (a cluster job's log) is one endless line of carriage returns.
    with open(tmp_path / "job.log", "w") as log:
        bar = progress_bar(7, "embed", "video", stream=log)
        assert isinstance(bar, LineProgress)
        for _ in track(range(7), bar):
            pass
        bar.close()
    text = (tmp_path / "job.log").read_bytes().decode()  # read_text would turn '\r' into '\n'
    assert "\r" not in text
    assert report_lines(text, "embed")[-1].startswith("embed: 7/7 video (100%)")


def test_a_long_run_reports_at_most_once_per_percent_and_a_short_one_once():
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress(5000, "train-tokenizer", "step", stream=stream, clock=clock)
    for step in range(5000):
        clock.now += 1.0  # 5000 s: every 1% (50 s) is past the 10 s between reports
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        bar.update()
    bar.close()
    lines = report_lines(stream.getvalue(), "train-tokenizer")
    assert len(lines) == LOG_FILE_REPORTS
    assert lines[0].startswith("train-tokenizer: 50/5000 step (1%), 1 step/s, ~82.5 min left; loss ")
    assert lines[-1].startswith("train-tokenizer: 5000/5000 step (100%)") and "left" not in lines[-1]

    quick, stream = Clock(), io.StringIO()
    bar = LineProgress(5000, "tokenize r0", "video", stream=stream, clock=quick)
    for _ in range(5000):
        quick.now += 0.001  # 5 s in all: one report, the last
        bar.update()
    bar.close()
    assert [line.split(",")[0] for line in report_lines(stream.getvalue(), "tokenize r0")] == \
        ["tokenize r0: 5000/5000 video (100%)"]


def test_a_slow_run_reports_every_few_minutes_and_close_says_where_it_stopped():
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress(1000, "evaluate", "video", initial=100, stream=stream, clock=clock)
    for _ in range(3):
        clock.now += 400.0  # far less than 1% per report, but minutes apart
        bar.update()
    clock.now += 1.0
    bar.update()
    bar.close()  # interrupted at 104 of 1000
    lines = report_lines(stream.getvalue(), "evaluate")
    assert [line.split(" (")[0] for line in lines] == ["evaluate: 101/1000 video", "evaluate: 102/1000 video",
                                                       "evaluate: 103/1000 video", "evaluate: 104/1000 video"]
    bar.close()
    assert len(report_lines(stream.getvalue(), "evaluate")) == 4


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()])
def test_no_progress_prints_nothing(stream):
    bar = progress_bar(3, "embed", "video", enabled=False, stream=stream)
    assert isinstance(bar, NoProgress)
    with bar:
        bar.update(3)
        bar.set_postfix(failed=0)
    assert stream.getvalue() == ""


def test_an_empty_run_prints_nothing():
    stream = io.StringIO()
    with progress_bar(0, "synthetic videos", "video", stream=stream):
        pass
    assert stream.getvalue() == ""


def test_a_postfix_that_moves_while_the_count_stands_is_reported_every_few_minutes():
    # tokenize inside an hour-long video: no video is committed, but its frames decoded advance
    # (set_postfix, then update(0)); a log file showed nothing for the whole hour.
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress(10, "tokenize r0", "video", stream=stream, clock=clock)
    chunks = 30
    for chunk in range(1, chunks + 1):
        clock.now += MAX_QUIET_SECONDS / 5
        bar.set_postfix(video_frames=f"{32 * chunk}/7200")
        bar.update(0)
    bar.update(0)  # nothing new: no line
    lines = report_lines(stream.getvalue(), "tokenize r0")
    every_quiet_stretch = range(5, chunks + 1, 5)
    assert [line.split("; ")[1] for line in lines] == [f"video_frames {32 * chunk}/7200" for chunk in every_quiet_stretch]
    assert all(line.startswith("tokenize r0: 0/10 video (0%)") for line in lines)

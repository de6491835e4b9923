"""`vimpac masking-table`: text and JSON output, block ranges, auto, and argument errors."""

from __future__ import annotations

import json

import pytest

from vimpac.cli import main

TABLE_2_T5_S128 = {4: 11.9, 6: 17.0, 8: 21.7, 5: 14.5}  # Table 2 row, 5 blocks from Tables 9 / 15


def test_json_reproduces_table_2(capsys):
    assert main(["masking-table", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 * 2 * 5
    assert all(set(r) == {"T", "S", "blocks", "ratio"} for r in records)
    row = {r["blocks"]: r["ratio"] for r in records if (r["T"], r["S"]) == (5, 128)}
    for blocks, paper in TABLE_2_T5_S128.items():
        assert abs(100 * row[blocks] - paper) <= 0.5


def test_text_table_marks_the_closest_count(capsys):
    assert main(["masking-table", "--frames", "5", "--sizes", "128,256", "--blocks", "4-8"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith("5 ")]
    assert len(lines) == 2
    assert "14.45*" in lines[0] and "15.24*" in lines[1]
    assert "outside the block counts shown" not in out


def test_a_closest_count_outside_the_columns_is_named(capsys):
    assert main(["masking-table", "--frames", "5", "--sizes", "128", "--blocks", "4-8", "--target", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "*" not in out.split("\n\n")[1]  # the table itself: no column holds the closest count
    assert "Closest to 30% outside the block counts shown:" in out
    assert "T=5   S=128  12 blocks: 29.96" in out


def test_blocks_auto_and_list(capsys):
    assert main(["masking-table", "--json", "--blocks", "auto", "--frames", "5,10", "--sizes", "128"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["T"], r["blocks"]) for r in records] == [(5, 5), (10, 6)]
    assert main(["masking-table", "--json", "--blocks", "4,6", "--frames", "5", "--sizes", "256"]) == 0
    assert [r["blocks"] for r in json.loads(capsys.readouterr().out)] == [4, 6]


def test_monte_carlo_column(capsys):
    args = ["masking-table", "--json", "--frames", "5", "--sizes", "128", "--blocks", "5", "--monte-carlo", "2000"]
    assert main(args) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert abs(record["monte_carlo"] - record["ratio"]) < 5 * record["monte_carlo_stderr"]


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["masking-table", "--blocks", "8-4"])
    assert "range" in capsys.readouterr().err
    assert main(["masking-table", "--sizes", "100"]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_sizes_beyond_the_bounds_are_one_line_errors(capsys, monkeypatch):
    # --frames 100000 allocated a (100000, 66666) int64 array (50 GB) for the exact ratio: a
    # MemoryError traceback. Refused before any computation, as `analyze masks` refuses it.
    import vimpac.pretrain.masking as masking

    def no_ratio(*args, **kwargs):
        raise AssertionError("computed a ratio before the size check")

    monkeypatch.setattr(masking, "induced_masking_ratio", no_ratio)
    assert main(["masking-table", "--frames", "100000", "--sizes", "128"]) == 2
    err = capsys.readouterr().err
    assert "T = 100000, S = 128 gives 100000 x 16 x 16 tokens; expected at most 1024 along each axis" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    # The exact ratio is fine at 512 x 64 x 64 tokens; sampling such masks is not.
    assert main(["masking-table", "--frames", "512", "--sizes", "512", "--blocks", "5", "--monte-carlo", "10"]) == 2
    assert "512 x 64 x 64 tokens per sampled mask; expected at most 1,048,576" in capsys.readouterr().err

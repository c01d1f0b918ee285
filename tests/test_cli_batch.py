"""`plait batch`'s progress (issue 13, item 4): a rate that is never a constant 0.0/s, an
ETA, the items in flight, and a view that moves before the first item ends. And its output
lines are strict JSON."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from plait.batch import BatchStats
from plait.cli.batch import Progress, _clock, _rate
from test_cli import plait_main


def stats(done: int = 0, failed: int = 0, running: int = 0, wall: float = 0.0) -> BatchStats:
    s = BatchStats(done=done, failed=failed, running=running)
    s.started = time.perf_counter() - wall
    return s


def test_before_the_first_item_ends_the_line_shows_the_items_in_flight():
    line = Progress(stats(running=8, wall=12.2), total=10, already=0).line()
    assert line.startswith("0 done, 0 failed, 8 in flight, ")
    assert "/s" not in line and "ETA" not in line  # no rate yet: none is made up
    assert line.endswith("12s elapsed")


def test_a_slow_batch_shows_its_rate_per_minute_and_an_eta():
    # 2 of 10 items in 120 s: the old view said 0.0/s
    line = Progress(stats(done=2, running=3, wall=120.0), total=10, already=0).line()
    assert "2 done, 0 failed, 3 in flight, 1.0/min, ETA 8m00s" in line
    assert "0.0/s" not in line


def test_the_eta_counts_only_what_is_left_of_this_run():
    # 40 items were in the output file already; 10 of the remaining 60 done in 20 s
    line = Progress(stats(done=9, failed=1, wall=20.0), total=100, already=40).line()
    assert "30.0/min, ETA 1m40s" in line


def test_without_a_total_there_is_a_rate_and_no_eta():
    line = Progress(stats(done=30, wall=10.0), total=None, already=0).line()
    assert "3.0/s" in line and "ETA" not in line


@pytest.mark.parametrize(
    ("per_second", "text"),
    [(3.0, "3.0/s"), (1.0, "1.0/s"), (0.5, "30.0/min"), (1 / 60, "1.0/min"),
     (1 / 120, "30.0/h"), (0.0, "0.0/h")],
)  # fmt: skip
def test_rate_reads_in_the_unit_that_fits(per_second, text):
    assert _rate(per_second) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (200, "3m20s"), (3720, "1h02m")]
)
def test_clock(seconds, text):
    assert _clock(seconds) == text


async def test_the_ticker_prints_while_no_item_has_ended(capsys, monkeypatch):
    monkeypatch.setattr(Progress, "EVERY", 0.0)  # every tick prints a plain line
    s = stats(running=4, wall=3.0)
    progress = Progress(s, total=4, already=0)
    assert not progress.tty  # captured stderr: plain lines
    ticker = asyncio.create_task(progress.tick(every=0))
    for _ in range(5):
        await asyncio.sleep(0)
    ticker.cancel()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(x.startswith("plait batch: 0 done, 0 failed, 4 in flight") for x in lines)


def test_batch_output_lines_are_strict_json(capsys, tmp_path):
    # A tool's nan is null on output (an input line holding NaN is a bad line: test_batch.py).
    (tmp_path / "tools.py").write_text(
        "import plait\n\n@plait.tool\ndef nan() -> float:\n    return float('nan')\n"
    )
    (tmp_path / "replies.json").write_text(
        json.dumps(["1. nan()\njoin()\n", "Action: Finish(no number)"])
    )
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "question": "q", "score": 0.5}\n')
    out = tmp_path / "out.jsonl"
    code, stdout, _ = plait_main(
        capsys,
        "batch",
        inp,
        "--tools",
        tmp_path / "tools.py",
        "--model",
        f"replay:{tmp_path / 'replies.json'}",
        "--out",
        out,
    )
    assert code == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    (line,) = [json.loads(x, parse_constant=refuse) for x in out.read_text().splitlines()]
    assert (line["score"], line["status"]) == (0.5, "done")
    json.loads(stdout, parse_constant=refuse)

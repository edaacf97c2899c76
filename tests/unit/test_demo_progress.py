"""The demo's progress display ends on the summary's counts, not on counts taken before the drain."""

from __future__ import annotations

import io
import re

import pytest

from tendril_transactive.cloud.demo.progress import Progress
from tendril_transactive.cloud.demo.summary import DemoSummary

pytestmark = pytest.mark.unit

TOTAL = 1440  # a 24 h run in simulated minutes


def _summary(ingested: int, acked: int) -> DemoSummary:
    return DemoSummary(24.0, 80.0, ingested, 0, 600, acked + 5, acked, 0, 12, 12)


def _run_to_the_end(progress: Progress) -> None:
    """Ticks up to the simulated end, then ticks through the drain as counts still grow."""
    for done in range(0, TOTAL + 1, 7):
        progress.update(done, "03-15 xx:xx", 7 * done, done // 3, done // 2)
    for extra in range(20):  # the drain: the clock held at the end, messages still arriving
        progress.update(TOTAL + extra, "03-16 00:00", 9791 + extra, 480, 720)


def test_the_hundred_percent_line_carries_the_summary_counts() -> None:
    out = io.StringIO()
    summary = _summary(ingested=9938, acked=731)
    with Progress(TOTAL, bar=False, file=out) as progress:
        _run_to_the_end(progress)
        assert "100%" not in out.getvalue()  # nothing final while the drain goes on
        progress.finish("03-16 00:00", summary, confirmed=485)
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    last = lines[-1]
    rendered = summary.render()
    ingested = re.search(r"messages ingested\s+(\d+)", rendered)
    acked = re.search(r"commands acked\s+(\d+)", rendered)
    assert ingested and acked
    assert f"ingested {ingested.group(1)} " in last and f"commands acked {acked.group(1)} " in last
    assert "confirmed 485 " in last and "sim 03-16 00:00" in last
    assert "9791" not in out.getvalue()


def test_a_tick_that_jumps_several_tenths_prints_one_line() -> None:
    out = io.StringIO()
    with Progress(TOTAL, bar=False, file=out) as progress:
        progress.update(TOTAL // 10, "a", 1, 0, 0)
        progress.update(TOTAL * 45 // 100, "b", 2, 0, 0)  # 45 %: past 20, 30 and 40 at once
        progress.update(TOTAL // 2, "c", 3, 0, 0)
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["10%", "40%", "50%"]


def test_the_bar_ends_on_the_summary_counts() -> None:
    out = io.StringIO()
    with Progress(TOTAL, bar=True, file=out) as progress:
        _run_to_the_end(progress)
        progress.finish("03-16 00:00", _summary(ingested=9938, acked=731), confirmed=485)
    final = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("100%")
    assert "ingested=9938" in final and "acked=731" in final and "confirmed=485" in final


def test_a_failed_run_prints_no_final_line() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), Progress(TOTAL, bar=False, file=out) as progress:
        progress.update(TOTAL // 2, "03-15 12:00", 10, 1, 1)
        raise RuntimeError("broker died")
    assert "100%" not in out.getvalue()

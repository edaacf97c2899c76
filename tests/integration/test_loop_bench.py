"""bench/loop.py end to end at a tiny size: real Mosquitto, `tendril market` and `tendril agent`
as processes, the simulated devices; it must print every row of its report. Nothing about time
is asserted (speed belongs to the bench's own output), only that the loop closed: tenders were
confirmed and commands acked in the measured intervals, and the figures are numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "reference: same burst echoed by C clients",
    "tender published -> confirm received",
    "tender published -> pump command acked",
    "agent: event loop",
    "agent: solving",
    "sites served by two cores in one 5-minute interval",
    "agent alone (2 workers, one per core)",
    "agent + market on the same two cores",
    "p99 tender -> confirm < 2 s at 3 sites",
    ">= 10,000 sites per interval on two cores (agent)",
)


def _row(out: str, label: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.strip().startswith(label))
    return line[len(line) - len(line.lstrip()) + len(label):].split()


def test_loop_bench_prints_its_rows() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loop.py"), "--sites", "3", "--intervals", "2", "--speed", "30"],
        capture_output=True, text=True, timeout=900, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    out = proc.stdout
    for label in ROWS:
        assert label in out, f"missing row {label!r} in:\n{out}"
    for label in ("tender published -> confirm received", "tender published -> pump command acked"):
        n, p50, p99, *_ = _row(out, label)
        assert int(n) >= 1, f"{label}: nothing measured\n{out}"
        assert 0 <= float(p50) <= float(p99), f"{label}: {p50} {p99}"
    for name in ("agent", "market", "devices", "mosquitto"):
        cpu, busy, per_site = _row(out, name)[:3]
        assert float(cpu) >= 0 and busy.endswith("%") and float(per_site) >= 0
    assert float(_row(out, "agent alone (2 workers, one per core)")[0].replace(",", "")) > 0
    assert re.search(r"^(PASS|MISS)  every site's tender confirmed in every measured interval: \d+ of 6$", out, re.M)

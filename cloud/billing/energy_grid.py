"""Energy series on time grids: cut, clip and sum kWh intervals by overlap.

Meter data comes hourly or 15-minutely (sometimes with a stray 2-hour reading), positions are
hourly plus 5-minute trades, prices are 5-minute or hourly. Everything meets on a grid of
UTC-aligned steps; within one interval energy is taken as flat, the only assumption that needs
no data the meter did not send.

When an interval already is a grid cell its kWh is carried over unchanged (no multiply and
divide), so two equal series land on the grid as equal floats and their difference is exactly 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tendril_transactive.cloud.sources.greenbutton import UsageInterval


def _piece(interval: UsageInterval, start: int, end: int) -> float:
    if start == interval.start and end == interval.end:
        return interval.kwh
    return interval.kwh * (end - start) / interval.duration_s


def clip(series: Iterable[UsageInterval], start: int, end: int) -> list[UsageInterval]:
    """The parts of the intervals that lie in [start, end)."""
    out = []
    for iv in series:
        lo, hi = max(iv.start, start), min(iv.end, end)
        if lo < hi:
            out.append(UsageInterval(lo, hi - lo, _piece(iv, lo, hi)))
    return out


def split(series: Iterable[UsageInterval], step_s: int) -> list[UsageInterval]:
    """Cut every interval at multiples of `step_s` (unix seconds), sharing energy by overlap."""
    if step_s <= 0:
        raise ValueError(f"step must be > 0 s, got {step_s}")
    out = []
    for iv in series:
        t = iv.start
        while t < iv.end:
            nxt = min(iv.end, (t // step_s + 1) * step_s)
            out.append(UsageInterval(t, nxt - t, _piece(iv, t, nxt)))
            t = nxt
    return out


def by_step(series: Iterable[UsageInterval], step_s: int) -> dict[int, float]:
    """kWh summed per grid cell, keyed by the cell's start."""
    cells: dict[int, float] = {}
    for piece in split(series, step_s):
        key = piece.start - piece.start % step_s
        cells[key] = cells.get(key, 0.0) + piece.kwh
    return cells


def on_cells(series: Iterable[UsageInterval], cells: Sequence[tuple[int, int]]) -> list[float]:
    """kWh of `series` falling in each (start, end) cell; cells must be sorted and disjoint."""
    ordered = sorted(series, key=lambda iv: iv.start)
    out = [0.0] * len(cells)
    j0 = 0
    for i, (start, end) in enumerate(cells):
        while j0 < len(ordered) and ordered[j0].end <= start:
            j0 += 1
        j = j0
        while j < len(ordered) and ordered[j].start < end:
            iv = ordered[j]
            lo, hi = max(iv.start, start), min(iv.end, end)
            if lo < hi:
                out[i] += _piece(iv, lo, hi)
            j += 1
    return out


def total(series: Iterable[UsageInterval]) -> float:
    return sum(iv.kwh for iv in series)

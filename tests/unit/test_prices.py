"""CAISO price files: the bundled slices load, and every kind of bad row is refused with its line."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tendril_transactive.cloud.sources.prices import (
    PriceDataError,
    PriceInterval,
    default_prices,
    load_caiso_csv,
    prices_between,
)

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")
ROOT = Path(__file__).resolve().parents[2]
# The source rows of local 2024-02-29 .. 2024-04-01, cut from the full-year file (tests/data/caiso/README.md).
DAM_SOURCE_ROWS = ROOT / "tests" / "data" / "caiso" / "sp15_dam_hourly_2024-02-29_2024-04-01.csv"
# sha256 of the source file the bundled RTM file was copied from whole (tests/data/caiso/README.md).
RTM_SOURCE_SHA256 = "3b2cb6c9c6d3a44d32843b57740b2d3ea8fdfb216149bad13dd858111f8d11d1"
HEADER = (
    "interval_start_utc,interval_end_utc,node,market,lmp_usd_per_mwh,energy_usd_per_mwh,"
    "congestion_usd_per_mwh,loss_usd_per_mwh\n"
)
ROW1 = "2024-03-01T08:00:00Z,2024-03-01T09:00:00Z,SP-15,DAM,29.11782,30.36903,0.00000,-1.25120\n"
ROW2 = "2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM,27.50000,28.00000,0.00000,-0.50000\n"


def _local(y: int, mo: int, d: int, h: int = 0) -> float:
    return datetime(y, mo, d, h, tzinfo=LA).timestamp()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(text)
    return path


def test_parses_a_row_exactly(tmp_path: Path) -> None:
    prices = load_caiso_csv(_write(tmp_path, HEADER + ROW1 + ROW2))
    assert prices == [
        PriceInterval(1709280000, 3600, 29.11782, "DAM"),
        PriceInterval(1709283600, 3600, 27.5, "DAM"),
    ]
    assert prices[0].end == prices[1].start


def test_bundled_day_ahead_covers_march_local_with_the_short_dst_day() -> None:
    dam = default_prices("DAM")
    assert len(dam) == 31 * 24 - 1
    assert dam[0].start == _local(2024, 3, 1)
    assert dam[-1].end == _local(2024, 4, 1)
    assert all(p.duration_s == 3600 and p.market == "DAM" for p in dam)
    assert len(prices_between(dam, _local(2024, 3, 10), _local(2024, 3, 11))) == 23


def test_bundled_real_time_is_five_minute_with_its_documented_gaps() -> None:
    rtm = default_prices("RTM")
    assert len(rtm) == 8902
    assert all(p.duration_s == 300 and p.market == "RTM" for p in rtm)
    gaps = [(a.end, b.start) for a, b in itertools.pairwise(rtm) if b.start != a.end]
    # 2024-03-20T06:50Z-07:00Z and 2024-03-21T21:00Z-22:00Z, as data/caiso/README.md says
    assert [(b - a) // 300 for a, b in gaps] == [2, 12]
    assert max(p.lmp_usd_per_mwh for p in rtm) == pytest.approx(972.56104)


def test_default_prices_returns_a_copy() -> None:
    first = default_prices("DAM")
    first.clear()
    assert len(default_prices("DAM")) == 743


def test_bundled_slice_is_the_source_rows_unchanged() -> None:
    source = load_caiso_csv(DAM_SOURCE_ROWS)
    march = prices_between(source, _local(2024, 3, 1), _local(2024, 4, 1))
    # the source reaches past March on both sides, so the slice's edges are tested too
    assert source[0].start < march[0].start and source[-1].start > march[-1].start
    assert march == default_prices("DAM")
    rtm = ROOT / "data" / "caiso" / "sp15_rtm_5min_2024-03.csv"
    assert hashlib.sha256(rtm.read_bytes()).hexdigest() == RTM_SOURCE_SHA256


def test_unknown_market_is_refused() -> None:
    with pytest.raises(ValueError, match="no bundled prices for market 'XYZ'"):
        default_prices("XYZ")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM,abc,0,0,0\n", "could not convert"),
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM,nan,0,0,0\n", "implausible LMP"),
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM,30000,0,0,0\n", "implausible LMP"),
        ("2024-03-01T09:00:00,2024-03-01T10:00:00Z,SP-15,DAM,1,0,0,0\n", "not UTC"),
        ("2024-03-01 09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM,1,0,0,0\n", "does not match format"),
        ("2024-03-01T10:00:00Z,2024-03-01T09:00:00Z,SP-15,DAM,1,0,0,0\n", "before it starts"),
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,XYZ,1,0,0,0\n", "unknown market"),
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,RTM,1,0,0,0\n", "market RTM in a DAM file"),
        ("2024-03-01T08:30:00Z,2024-03-01T09:30:00Z,SP-15,DAM,1,0,0,0\n", "overlaps or precedes"),
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM\n", "expected 8 columns"),
        ("2024-03-01T09:00:00Z,2024-03-01T10:00:00Z,SP-15,DAM,1,0,0,0,extra\n", "expected 8 columns"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path: Path, row: str, reason: str) -> None:
    path = _write(tmp_path, HEADER + ROW1 + row)
    with pytest.raises(PriceDataError, match=reason) as err:
        load_caiso_csv(path)
    assert str(err.value).startswith(f"{path}:3: ")


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "interval_start_utc,interval_end_utc,market\n")
    with pytest.raises(PriceDataError, match=r":1: missing column\(s\) lmp_usd_per_mwh"):
        load_caiso_csv(path)


def test_empty_and_header_only_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceDataError, match="empty file"):
        load_caiso_csv(_write(tmp_path, ""))
    with pytest.raises(PriceDataError, match="no price rows"):
        load_caiso_csv(_write(tmp_path, HEADER))


def test_prices_between_selects_intervals_starting_in_the_window() -> None:
    dam = default_prices("DAM")
    start = _local(2024, 3, 15, 6)
    got = prices_between(dam, start, start + 3 * 3600)
    assert [p.start for p in got] == [start, start + 3600, start + 7200]
    assert prices_between(dam, start, start) == []
    assert prices_between(dam, _local(2025, 1, 1), _local(2025, 1, 2)) == []
    with pytest.raises(ValueError, match=r"ends .* before it starts"):
        prices_between(dam, start, start - 1)

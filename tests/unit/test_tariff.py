"""The declarative OAT: TOU periods on the local clock, seasons, holidays, and file validation."""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tendril_transactive.cloud.billing.tariff import (
    DEFAULT_TARIFF,
    TariffError,
    default_tariff,
    load_tariff,
    parse_tariff,
)

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")


def at(*args: int) -> float:
    return dt.datetime(*args, tzinfo=LA).timestamp()


def test_shipped_tariff_states_its_sources() -> None:
    tariff = default_tariff()
    assert tariff.timezone == "America/Los_Angeles"
    assert tariff.fixed_monthly_usd == Decimal("1.00")
    assert any("SCE" in s for s in tariff.sources)
    assert "representative" in tariff.name.lower()


@pytest.mark.parametrize(("when", "season", "period", "price"), [
    # 2024-03-10 is a Sunday and the spring-forward day: 4-9 pm is still mid-peak on the clock.
    ((2024, 3, 10, 15, 59), "winter", "super_off_peak", "0.32"),
    ((2024, 3, 10, 16, 0), "winter", "mid_peak", "0.52"),
    ((2024, 3, 10, 20, 59), "winter", "mid_peak", "0.52"),
    ((2024, 3, 10, 21, 0), "winter", "off_peak", "0.36"),
    ((2024, 3, 10, 1, 30), "winter", "off_peak", "0.36"),
    ((2024, 7, 3, 17, 0), "summer", "on_peak", "0.55"),  # Wednesday
    ((2024, 7, 4, 17, 0), "summer", "mid_peak", "0.46"),  # Independence Day: billed as a weekend
    ((2024, 7, 6, 17, 0), "summer", "mid_peak", "0.46"),  # Saturday
    ((2024, 7, 3, 12, 0), "summer", "off_peak", "0.34"),
    ((2024, 9, 30, 16, 0), "summer", "on_peak", "0.55"),
    ((2024, 10, 1, 16, 0), "winter", "mid_peak", "0.52"),
])
def test_period_at_local_clock(when: tuple[int, ...], season: str, period: str, price: str) -> None:
    s, p = default_tariff().period_at(at(*when))
    assert (s.name, p.name, p.usd_per_kwh) == (season, period, Decimal(price))


def test_same_utc_hour_is_a_different_period_across_dst() -> None:
    tariff = default_tariff()
    # 23:00 UTC is 15:00 PST on Mar 9 (super-off-peak) but 16:00 PDT on Mar 11 (mid-peak).
    def name(day: int) -> str:
        return tariff.period_at(dt.datetime(2024, 3, day, 23, tzinfo=dt.UTC).timestamp())[1].name

    assert (name(9), name(11)) == ("super_off_peak", "mid_peak")


def test_month_windows_follow_dst() -> None:
    tariff = default_tariff()
    start, end = tariff.month_window(2024, 3)
    assert start == dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC).timestamp()
    assert end == dt.datetime(2024, 4, 1, 7, tzinfo=dt.UTC).timestamp()
    assert (end - start) // 3600 == 31 * 24 - 1
    start, end = tariff.month_window(2024, 11)
    assert (end - start) // 3600 == 30 * 24 + 1
    start, end = tariff.month_window(2024, 12)
    assert end == dt.datetime(2025, 1, 1, 8, tzinfo=dt.UTC).timestamp()


def test_holidays_by_rule() -> None:
    tariff = default_tariff()
    days_2024 = tariff.holiday_dates(2024)
    assert dt.date(2024, 2, 19) in days_2024  # third Monday of February
    assert dt.date(2024, 5, 27) in days_2024  # last Monday of May
    assert dt.date(2024, 11, 28) in days_2024  # fourth Thursday of November
    # Christmas 2011 was a Sunday: the Monday after is a holiday too.
    assert {dt.date(2011, 12, 25), dt.date(2011, 12, 26)} <= tariff.holiday_dates(2011)
    assert tariff.day_type(dt.date(2011, 12, 26)) == "weekend"
    assert tariff.day_type(dt.date(2024, 3, 11)) == "weekday"


# ------------------------------------------------------------------------------ validation


def raw() -> dict[str, Any]:
    with DEFAULT_TARIFF.open("rb") as fh:
        return tomllib.load(fh)


def test_hour_gap_is_refused() -> None:
    data = raw()
    data["seasons"][1]["periods"][0]["hours"] = [[17, 21]]
    with pytest.raises(TariffError, match=r"season 'winter': weekday hour 16:00 has no period"):
        parse_tariff(data, "t.toml")


def test_hour_overlap_is_refused() -> None:
    data = raw()
    data["seasons"][1]["periods"][2]["hours"] = [[8, 17]]
    with pytest.raises(TariffError, match=r"hour 16:00 has several periods"):
        parse_tariff(data, "t.toml")


def test_month_in_two_seasons_is_refused() -> None:
    data = raw()
    data["seasons"][0]["months"] = [5, 6, 7, 8, 9]
    with pytest.raises(TariffError, match="month 5 belongs to"):
        parse_tariff(data, "t.toml")


@pytest.mark.parametrize(("path", "value", "words"), [
    (("tariff", "timezone"), "Mars/Olympus", "unknown timezone"),
    (("tariff", "sources"), [], "where the numbers come from"),
    (("tariff", "fixed_monthly_usd"), "ten", "wrong type"),
    (("tariff", "weekend_days"), ["caturday"], "weekend_days"),
])
def test_bad_header_fields(path: tuple[str, str], value: object, words: str) -> None:
    data = raw()
    data[path[0]][path[1]] = value
    with pytest.raises(TariffError, match=words):
        parse_tariff(data, "t.toml")


def test_bad_price_and_hours() -> None:
    data = raw()
    data["seasons"][0]["periods"][0]["usd_per_kwh"] = "x"
    with pytest.raises(TariffError, match="usd_per_kwh"):
        parse_tariff(data, "t.toml")
    data = raw()
    data["seasons"][0]["periods"][0]["hours"] = [[21, 16]]
    with pytest.raises(TariffError, match="bad hour span"):
        parse_tariff(data, "t.toml")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(TariffError, match="cannot read"):
        load_tariff(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tariff\nid = 1\n")
    with pytest.raises(TariffError, match="not valid TOML"):
        load_tariff(bad)

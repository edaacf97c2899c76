"""Subscriptions shaped from Green Button history, laid onto 2024 by month, day type and clock hour."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tendril_transactive.cloud.billing.subscription import SubscriptionError, replay_history, shape_profile, subscribe
from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.sources.greenbutton import UsageInterval, load_usage

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")
ROOT = Path(__file__).resolve().parents[2]
# the whole year: the tests below need November and the year's total (tests/data/greenbutton/README.md)
COASTAL = ROOT / "tests" / "data" / "greenbutton" / "Coastal_Single_Family_Jan_1_2011_to_Jan_1_2012.xml.gz"
BUNDLED = ROOT / "data" / "greenbutton" / "coastal_2011-03.xml"


@pytest.fixture(scope="module")
def coastal() -> list[UsageInterval]:
    return load_usage(COASTAL)


def local(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, LA)


def test_profile_bucket_is_the_mean_of_its_readings(coastal: list[UsageInterval]) -> None:
    profile = shape_profile(coastal, default_tariff())
    assert len(profile.kwh) == 12 * 2 * 24
    # By hand from the file itself: March 2011 weekdays (no holidays in March), 6-7 pm local.
    text = gzip.decompress(COASTAL.read_bytes()).decode()
    readings = re.findall(r"<duration>3600</duration>\s*<start>(\d+)</start>\s*</timePeriod>\s*<value>(\d+)<",
                          text)
    picked = [int(v) / 1000 for s, v in readings
              if local(int(s)).month == 3 and local(int(s)).weekday() < 5 and local(int(s)).hour == 18]
    assert len(picked) == 23  # March 2011 had 23 weekdays
    assert profile.kwh[(3, "weekday", 18)] == pytest.approx(sum(picked) / len(picked))
    assert profile.samples[(3, "weekday", 18)] == 23


def test_subscription_hours_on_dst_days(coastal: list[UsageInterval]) -> None:
    tariff = default_tariff()
    sub = subscribe("coastal", coastal, tariff)
    march = sub.month(2024, 3)
    assert len(march) == 743
    spring = [iv for iv in march if local(iv.start).date() == dt.date(2024, 3, 10)]
    assert [local(iv.start).hour for iv in spring] == [0, 1, *range(3, 24)]
    nov = sub.month(2024, 11)
    assert len(nov) == 721
    fall = Counter(local(iv.start).hour for iv in nov if local(iv.start).date() == dt.date(2024, 11, 3))
    assert fall[1] == 2 and sum(fall.values()) == 25
    # 2024-03-10 is a Sunday: every hour takes the March weekend mean for its clock hour.
    for iv in spring:
        assert iv.kwh == sub.profile.kwh[(3, "weekend", local(iv.start).hour)]
    # 2024-03-11 is a Monday.
    monday = [iv for iv in march if local(iv.start).date() == dt.date(2024, 3, 11)]
    assert [iv.kwh for iv in monday] == [sub.profile.kwh[(3, "weekday", h)] for h in range(24)]


def test_whole_year_sums_month_by_month(coastal: list[UsageInterval]) -> None:
    sub = subscribe("coastal", coastal, default_tariff())
    start, end = default_tariff().month_window(2024, 1)[0], default_tariff().month_window(2024, 12)[1]
    year = sub.quantities(start, end)
    assert len(year) == 366 * 24
    assert sum(iv.kwh for iv in year) == pytest.approx(
        sum(sum(iv.kwh for iv in sub.month(2024, m)) for m in range(1, 13)))
    # Shaped from the same customer: the 2024 total is within a few percent of 2011's.
    assert sum(iv.kwh for iv in year) == pytest.approx(sum(iv.kwh for iv in coastal), rel=0.03)


def test_replay_lays_real_days_by_day_type() -> None:
    tariff = default_tariff()
    history = load_usage(BUNDLED)
    replay = replay_history(history, tariff, 2024, 3)
    assert len(replay) == 743
    by_start = {iv.start: iv.kwh for iv in history}
    # Friday 2024-03-01 is March 2024's first weekday: it gets Tuesday 2011-03-01, hour by hour.
    first = [iv for iv in replay if local(iv.start).date() == dt.date(2024, 3, 1)]
    src = int(dt.datetime(2011, 3, 1, tzinfo=LA).timestamp())
    assert [iv.kwh for iv in first] == [by_start[src + 3600 * h] for h in range(24)]
    # Saturday 2024-03-02, the first weekend day, gets Saturday 2011-03-05.
    sat = [iv for iv in replay if local(iv.start).date() == dt.date(2024, 3, 2)]
    src = int(dt.datetime(2011, 3, 5, tzinfo=LA).timestamp())
    assert [iv.kwh for iv in sat] == [by_start[src + 3600 * h] for h in range(24)]


def test_history_without_the_month_is_a_clear_error() -> None:
    tariff = default_tariff()
    sub = subscribe("coastal", load_usage(BUNDLED), tariff)
    assert sub.profile.months() == [3]
    with pytest.raises(SubscriptionError, match="no history for month 4"):
        sub.month(2024, 4)
    with pytest.raises(SubscriptionError, match="whole UTC hours"):
        sub.quantities(1709280000 + 60, 1709280000 + 7200)
    with pytest.raises(SubscriptionError, match="empty"):
        subscribe("x", [], tariff)

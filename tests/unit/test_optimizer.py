"""The relay MILP against brute force, its constraints, and refusal of infeasible requests."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tendril_transactive.cloud.market.tenders import TenderConfig, tender_prices
from tendril_transactive.cloud.optimizer.relay import RelaySchedule, schedule_relay
from tendril_transactive.cloud.sources.prices import default_prices, prices_between

pytestmark = pytest.mark.unit


def _starts(on: list[int]) -> int:
    return sum(1 for i, v in enumerate(on) if v and (i == 0 or not on[i - 1]))


def _brute_force(
    prices: list[float], required: int, allowed: list[bool], max_starts: int | None
) -> float:
    best = float("inf")
    for chosen in itertools.combinations(range(len(prices)), required):
        on = [1 if i in chosen else 0 for i in range(len(prices))]
        if any(v and not a for v, a in zip(on, allowed, strict=True)):
            continue
        if max_starts is not None and _starts(on) > max_starts:
            continue
        best = min(best, sum(prices[i] for i in chosen))
    return best


def test_picks_the_cheapest_intervals() -> None:
    sched = schedule_relay([0.50, 0.10, 0.40, 0.20, 0.30], 3600, 2.0, 2)
    assert sched.on == [0, 1, 0, 1, 0]
    assert sched.cost_usd == pytest.approx((0.10 + 0.20) * 2.0)
    assert sched.status == "optimal"
    assert sched.solve_s > 0


def test_cost_uses_the_interval_length() -> None:
    # 1.5 kW for 5 minutes is 0.125 kWh
    sched = schedule_relay([0.2, 0.4, 0.1], 300, 1.5, 1)
    assert sched.on == [0, 0, 1]
    assert sched.cost_usd == pytest.approx(0.1 * 0.125)


def test_max_starts_forces_one_block() -> None:
    prices = [0.1, 2.0, 0.1, 2.0, 0.1, 2.0, 0.5, 0.5, 0.5, 2.0]
    free = schedule_relay(prices, 3600, 1.0, 3)
    assert free.on == [1, 0, 1, 0, 1, 0, 0, 0, 0, 0] and free.starts == 3
    one = schedule_relay(prices, 3600, 1.0, 3, max_starts=1)
    assert one.on == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0] and one.starts == 1
    assert one.cost_usd == pytest.approx(1.5)


def test_allowed_mask_is_respected() -> None:
    prices = [0.1, 0.2, 0.3, 0.4]
    sched = schedule_relay(prices, 3600, 1.0, 2, allowed=[False, True, False, True])
    assert sched.on == [0, 1, 0, 1]


def test_zero_required_runtime_is_all_off() -> None:
    assert schedule_relay([0.1, -0.2], 3600, 1.0, 0).on == [0, 0]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    data=st.data(),
    n=st.integers(min_value=1, max_value=9),
)
def test_matches_brute_force(data: st.DataObject, n: int) -> None:
    prices = data.draw(st.lists(st.floats(-0.2, 1.0, allow_nan=False), min_size=n, max_size=n), "prices")
    allowed = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), "allowed")
    required = data.draw(st.integers(0, sum(allowed)), "required")
    max_starts = data.draw(st.one_of(st.none(), st.integers(1, 3)), "max_starts")
    best = _brute_force(prices, required, allowed, max_starts)
    if best == float("inf"):
        with pytest.raises(ValueError, match="infeasible"):
            schedule_relay(prices, 3600, 1.0, required, allowed, max_starts)
        return
    sched = schedule_relay(prices, 3600, 1.0, required, allowed, max_starts)
    assert sum(sched.on) == required
    assert all(a or not v for v, a in zip(sched.on, allowed, strict=True))
    if max_starts is not None:
        assert sched.starts <= max_starts
    assert sched.cost_usd == pytest.approx(best, abs=1e-9)


def test_a_real_five_minute_day_schedules_within_its_limits() -> None:
    la = ZoneInfo("America/Los_Angeles")
    start = datetime(2024, 3, 15, tzinfo=la).timestamp()
    day = prices_between(default_prices("RTM"), start, start + 86400)
    buy = [tender_prices(p.lmp_usd_per_mwh, p.start, TenderConfig())[0] for p in day]
    assert len(buy) == 288
    sched = schedule_relay(buy, 300, 1.5, 72, max_starts=3)
    assert isinstance(sched, RelaySchedule)
    assert sum(sched.on) == 72 and sched.starts <= 3
    # bounded below by the 72 cheapest intervals anywhere, above by the best single 6-hour block
    cheapest = sum(sorted(buy)[:72]) * 0.125
    best_block = min(sum(buy[i : i + 72]) for i in range(288 - 72 + 1)) * 0.125
    assert cheapest - 1e-9 <= sched.cost_usd <= best_block + 1e-9
    assert schedule_relay(buy, 300, 1.5, 72).cost_usd == pytest.approx(cheapest)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.1, 0.2], 3600, 1.0, 3), "infeasible: 3 run intervals required but only 2 of 2 allowed"),
        (([0.1, 0.2, 0.3], 3600, 1.0, 2, [True, False, False]), "only 1 of 3 allowed"),
        (([0.1, 0.2, 0.3], 3600, 1.0, 2, [True, False, True], 1), "at most 1 fit in 1 start"),
        (([0.1, 0.2], 3600, 1.0, 1, None, 0), "at most 0 fit in 0 start"),
        (([], 3600, 1.0, 0), "empty price list"),
        (([0.1, float("nan")], 3600, 1.0, 1), r"interval\(s\) \[1\] are not"),
        (([0.1], 0, 1.0, 1), "interval_s must be > 0"),
        (([0.1], 3600, 0.0, 1), "load_kw must be > 0"),
        (([0.1], 3600, 1.0, -1), "must be >= 0"),
        (([0.1, 0.2], 3600, 1.0, 1, [True]), "allowed mask has 1 entries for 2"),
    ],
)
def test_bad_or_infeasible_input_is_refused_before_solving(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        schedule_relay(*args)  # type: ignore[arg-type]

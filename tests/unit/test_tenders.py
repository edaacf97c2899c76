"""Tender prices by the brief's formula, on the local clock, and tenders that meet the wire contract."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.market.tenders import (
    TenderConfig,
    build_tenders,
    live_tenders,
    local_hour,
    tender_prices,
)
from tendril_transactive.cloud.sources.prices import PriceInterval, default_prices, prices_between

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")
CFG = TenderConfig()


def _local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=LA).timestamp())


def _hourly(start: int, hours: int, lmp: float = 30.0, market: str = "DAM") -> list[PriceInterval]:
    return [PriceInterval(start + 3600 * i, 3600, lmp, market) for i in range(hours)]


def test_formula_by_hand_with_the_default_config() -> None:
    # 2024-03-15 17:00 PDT is in the 4-9 pm peak: distribution 0.21, generation 0.14 $/kWh.
    buy, sell = tender_prices(50.0, _local(2024, 3, 15, 17), CFG)
    assert buy == pytest.approx(50.0 / 1000 * 1.06 + 0.21 + 0.14)  # 0.403
    assert sell == pytest.approx(buy - 0.02)


def test_formula_by_hand_with_every_term_distinct() -> None:
    cfg = TenderConfig(
        loss_factor=0.1,
        distribution_adder_by_hour=tuple(0.01 * h for h in range(24)),
        generation_adder_by_hour=tuple(0.001 * h for h in range(24)),
        spread=0.05,
    )
    # 03:00 local: 0.2 * 1.1 + 0.03 + 0.003 = 0.253 ; a negative LMP lowers the price
    assert tender_prices(200.0, _local(2024, 3, 15, 3), cfg) == pytest.approx((0.253, 0.203))
    assert tender_prices(-100.0, _local(2024, 3, 15, 3), cfg) == pytest.approx((-0.077, -0.127))


def test_adders_are_highest_from_4_to_9_pm_local() -> None:
    day = _local(2024, 3, 15)
    by_hour = {local_hour(day + 3600 * i): tender_prices(30.0, day + 3600 * i, CFG)[0] for i in range(24)}
    peak = [by_hour[h] for h in range(16, 21)]
    rest = [by_hour[h] for h in range(24) if not 16 <= h < 21]
    assert min(peak) > max(rest)
    # and the solar-rich daytime is the cheapest
    assert max(by_hour[h] for h in range(8, 16)) < min(by_hour[h] for h in [*range(0, 8), 21, 22, 23])


def test_peak_follows_the_local_clock_across_the_dst_change() -> None:
    # 16:00 local is 00:00Z while on PST (UTC-8) and 23:00Z on PDT (UTC-7).
    pst_peak = int(datetime(2024, 3, 9, 0, tzinfo=ZoneInfo("UTC")).timestamp()) + 86400
    pdt_peak = int(datetime(2024, 3, 11, 23, tzinfo=ZoneInfo("UTC")).timestamp())
    assert local_hour(pst_peak) == 16
    assert local_hour(pdt_peak) == 16
    assert tender_prices(30.0, pdt_peak, CFG)[0] > tender_prices(30.0, pdt_peak - 3600, CFG)[0]


def test_sell_is_below_buy_for_every_bundled_interval() -> None:
    for p in default_prices("DAM") + default_prices("RTM"):
        buy, sell = tender_prices(p.lmp_usd_per_mwh, p.start, CFG, 0.9)
        assert sell < buy


def test_congestion_raises_only_the_distribution_adder_of_a_loaded_feeder() -> None:
    t = _local(2024, 3, 15, 18)
    base = tender_prices(30.0, t, CFG, 0.0)[0]
    assert tender_prices(30.0, t, CFG, 0.5)[0] == base  # below the 0.8 threshold: no change
    assert tender_prices(30.0, t, CFG, 0.8)[0] == base
    at_90 = tender_prices(30.0, t, CFG, 0.9)[0]
    at_100 = tender_prices(30.0, t, CFG, 1.0)[0]
    assert base < at_90 < at_100
    # at the limit the distribution adder (0.21 at 18:00) has doubled, generation is untouched
    assert at_100 - base == pytest.approx(0.21)
    assert at_90 - base == pytest.approx(0.105)


def test_congestion_shows_in_the_feeders_tenders() -> None:
    prices = _hourly(_local(2024, 3, 15, 17), 1)
    cool = build_tenders("site-1", "feeder-a", prices, "DAM", prices[0].start - 60, CFG, 300)
    hot = build_tenders(
        "site-2", "feeder-b", prices, "DAM", prices[0].start - 60, CFG, 300, feeder_load_ratio=0.95
    )
    assert hot[0]["price"] > cool[0]["price"]


def test_spring_forward_day_has_23_hourly_tenders_per_side() -> None:
    day = prices_between(default_prices("DAM"), _local(2024, 3, 10), _local(2024, 3, 11))
    tenders = build_tenders("site-1", "feeder-a", day, "DAM", day[0].start - 86400, CFG, 86400)
    buys = [t for t in tenders if t["side"] == wire.SIDE_BUY]
    sells = [t for t in tenders if t["side"] == wire.SIDE_SELL]
    assert len(buys) == len(sells) == 23
    hours = [local_hour(t["intervalStart"]) for t in buys]
    assert hours == [0, 1, *range(3, 24)]  # 02:00 does not exist that day


def test_fall_back_day_has_25_hours_and_the_repeated_hour_is_priced_alike() -> None:
    start = _local(2024, 11, 3)
    end = int((datetime(2024, 11, 3, tzinfo=LA) + timedelta(days=1)).timestamp())
    prices = _hourly(start, (end - start) // 3600)
    assert len(prices) == 25
    tenders = build_tenders("site-1", "feeder-a", prices, "DAM", start - 3600, CFG, 86400)
    buys = [t for t in tenders if t["side"] == wire.SIDE_BUY]
    assert [local_hour(t["intervalStart"]) for t in buys][:4] == [0, 1, 1, 2]
    assert buys[1]["price"] == buys[2]["price"]


def test_tenders_meet_the_contract_and_carry_the_offer() -> None:
    p = PriceInterval(_local(2024, 3, 15, 12), 300, -20.0, "RTM")
    now = p.start - 10
    tenders = build_tenders("site-1", "feeder-a", [p], "RTM", now, CFG, 120)
    buy, sell = tender_prices(-20.0, p.start, CFG)
    assert [(t["side"], t["price"]) for t in tenders] == [("BUY", buy), ("SELL", sell)]
    for t in tenders:
        assert wire.decode(wire.TENDER, wire.encode(wire.TENDER, t)) == t
        assert set(t) == set(wire.TENDER_FIELDS) - {"quantity"}
        assert t["intervalStart"] == p.start and t["durationS"] == 300
        assert t["expirationTime"] == now + 120
        assert (t["partyId"], t["counterPartyId"]) == ("tendril-utility", "site-1")
        assert (t["marketId"], t["resourceDesignator"]) == ("RTM", "feeder-a")


def test_tender_ids_are_deterministic_and_unique() -> None:
    prices = prices_between(default_prices("RTM"), _local(2024, 3, 15), _local(2024, 3, 16))
    now = prices[0].start - 60
    # expiring before the first interval ends, so a later issue time changes every offer's terms
    a = build_tenders("site-1", "feeder-a", prices, "RTM", now, CFG, 60)
    b = build_tenders("site-1", "feeder-a", prices, "RTM", now, CFG, 60)
    other_site = build_tenders("site-2", "feeder-a", prices, "RTM", now, CFG, 60)
    later = build_tenders("site-1", "feeder-a", prices, "RTM", now + 1, CFG, 60)
    ids = [t["tenderId"] for t in a]
    assert ids == [t["tenderId"] for t in b]
    assert len(ids) == len(set(ids)) == 2 * len(prices)
    assert not set(ids) & {t["tenderId"] for t in other_site}
    assert not set(ids) & {t["tenderId"] for t in later}


def test_past_intervals_get_no_tender_and_offers_expire() -> None:
    prices = _hourly(_local(2024, 3, 15, 10), 3)
    now = prices[1].start + 600  # the first hour is over, the second is under way
    tenders = build_tenders("site-1", "feeder-a", prices, "DAM", now, CFG, 4000)
    assert [t["intervalStart"] for t in tenders] == [prices[1].start] * 2 + [prices[2].start] * 2
    # an offer never outlives its interval
    assert [t["expirationTime"] for t in tenders] == [prices[1].end] * 2 + [now + 4000] * 2
    assert live_tenders(tenders, now) == tenders
    assert live_tenders(tenders, prices[1].end) == tenders[2:]
    assert live_tenders(tenders, now + 4000) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"site": "Site 1"}, wire.ContractError, "bad_site"),
        ({"feeder": ""}, ValueError, "feeder"),
        ({"market_id": "FMM"}, ValueError, "market_id must be one of"),
        ({"market_id": "RTM"}, ValueError, "DAM price at .* given for a RTM tender"),
        ({"expires_after_s": 0}, ValueError, "expires_after_s must be > 0"),
        ({"feeder_load_ratio": -0.1}, ValueError, "feeder_load_ratio"),
    ],
)
def test_bad_tender_input_is_refused(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args: dict[str, object] = {
        "site": "site-1", "feeder": "feeder-a", "prices": _hourly(_local(2024, 3, 15), 2),
        "market_id": "DAM", "now": _local(2024, 3, 14), "config": CFG, "expires_after_s": 60,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        build_tenders(**args)  # type: ignore[arg-type]


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="24 hourly values"):
        TenderConfig(distribution_adder_by_hour=(0.1,) * 23)
    with pytest.raises(ValueError, match="loss_factor"):
        TenderConfig(loss_factor=-0.01)
    with pytest.raises(ValueError, match="congestion_threshold"):
        TenderConfig(congestion_threshold=1.0)
    with pytest.raises(ValueError, match="LMP must be finite"):
        tender_prices(float("nan"), _local(2024, 3, 15), CFG)

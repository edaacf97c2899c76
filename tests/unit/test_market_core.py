"""The market's pure core: what is due at `now`, the tenders, every answer to a transaction
(accepted, the refusals, replays, conflicts, malformed), rebuilding from ledger records, and the
settlement arithmetic."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import SiteRecord
from tendril_transactive.cloud.market.core import ACCEPTED, REFUSED, REPLAYED, MarketCore
from tendril_transactive.cloud.market.pricing import StaticFeederRatios
from tendril_transactive.cloud.market.schedule import (
    DAM,
    RTM,
    MarketConfig,
    batch_tenders,
    day_batch,
    due_batches,
    next_publication,
    rt_batch,
    rt_offset,
    rt_price,
    rt_site_due,
)
from tendril_transactive.cloud.market.settle import metered_kwh, register_at
from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.cloud.market.transactions import KIND_REFUSAL, KIND_TENDER, KIND_TRANSACTION
from tendril_transactive.cloud.sources.prices import PriceInterval

pytestmark = pytest.mark.unit

CFG = MarketConfig()
SITE = SiteRecord("site-1", feeder="feeder-a", subscription_kwh_by_hour=tuple([1.2] * 24))
OTHER = SiteRecord("site-2", feeder="feeder-b")
PRICING = StaticFeederRatios({"feeder-b": 0.95})


def local(y: int, m: int, d: int, h: int, mi: int = 0) -> float:
    return dt.datetime(y, m, d, h, mi, tzinfo=LOCAL_TZ).timestamp()


T9 = local(2024, 3, 12, 9, 0)  # before the day-ahead hour
T11 = local(2024, 3, 12, 11, 0)  # after it
RT_S = int(local(2024, 3, 12, 11, 5))


def dam_prices(day: dt.date) -> list[PriceInterval]:
    b = day_batch(day, CFG)
    return [PriceInterval(t, 3600, 30.0 + (t - b.start) / 3600, DAM) for t in range(b.start, b.end, 3600)]


# ---------------------------------------------------------------------------------- schedule

def test_due_batches_before_and_after_the_day_ahead_hour() -> None:
    before = due_batches(T9, CFG)
    assert [b.market for b in before] == [DAM]  # today's (due since yesterday 10:00); no RT inside the lead
    assert before[0] == day_batch(dt.date(2024, 3, 12), CFG)
    after = due_batches(T11, CFG)
    assert [(b.market, b.start) for b in after] == [(DAM, day_batch(dt.date(2024, 3, 12), CFG).start),
                                                    (DAM, day_batch(dt.date(2024, 3, 13), CFG).start)]
    rt = due_batches(RT_S - 60, CFG)  # exactly the lead before the interval
    assert rt[0] == rt_batch(RT_S, CFG) and rt[0].publish_at == RT_S - 60  # real-time first
    assert all(b.market == DAM for b in rt[1:])
    assert [b for b in due_batches(RT_S - 61, CFG) if b.market == RTM] == []
    assert next_publication(RT_S - 61, CFG) == RT_S - 60
    # just past the 10:00 RT publication (10:00 - 1 s): the next is the day-ahead batch at 10:00
    assert next_publication(local(2024, 3, 12, 10, 0) - 0.5, MarketConfig(rt_lead_s=1)) == local(2024, 3, 12, 10)


def test_a_spread_real_time_batch_goes_out_site_by_site_at_fixed_whole_second_offsets() -> None:
    spread = MarketConfig(rt_lead_s=60, rt_spread_s=20)
    sites = [f"site-{i}" for i in range(400)]
    offsets = {s: rt_offset(s, spread) for s in sites}
    assert all(0 <= o < 20 and o == int(o) for o in offsets.values())
    assert len(set(offsets.values())) == 20, "400 sites use every second of a 20 s spread"
    assert offsets == {s: rt_offset(s, MarketConfig(rt_lead_s=60, rt_spread_s=20)) for s in sites}, "fixed"
    assert all(rt_offset(s, CFG) == 0 for s in sites), "no spread by default in the library"
    batch = rt_batch(RT_S, spread)
    late = max(sites, key=offsets.__getitem__)
    assert rt_site_due(batch, late, batch.publish_at + offsets[late], spread)
    assert not rt_site_due(batch, late, batch.publish_at + offsets[late] - 0.5, spread)
    assert rt_site_due(day_batch(dt.date(2024, 3, 13), spread), late, T11, spread), "day-ahead: not spread"
    # the tick wakes at each second of an open batch's spread, then at the next batch's opening
    assert next_publication(RT_S - 60, spread) == RT_S - 59
    assert next_publication(RT_S - 41.5, spread) == RT_S - 41
    assert next_publication(RT_S - 41, spread) == RT_S + 300 - 60
    with pytest.raises(ValueError, match="rt_spread_s must be in"):
        MarketConfig(rt_lead_s=10, rt_spread_s=10)


def test_dst_day_has_23_day_ahead_hours() -> None:
    b = day_batch(dt.date(2024, 3, 10), CFG)
    assert b.end - b.start == 23 * 3600
    assert b.publish_at == local(2024, 3, 9, 10)


def test_tenders_are_the_same_whenever_built_and_carry_the_feeder_adder() -> None:
    day = dt.date(2024, 3, 13)
    batch = day_batch(day, CFG)
    first = batch_tenders(batch, SITE, dam_prices(day), PRICING.feeder_load_ratio, CFG, T11)
    again = batch_tenders(batch, SITE, dam_prices(day), PRICING.feeder_load_ratio, CFG, T11 + 7200)
    assert len(first) == 48 and first == again  # nominal publication time, not the wall clock
    assert all(t["expirationTime"] == t["intervalStart"] and t["quantity"] == CFG.da_quantity_kwh for t in first)
    congested = batch_tenders(batch, OTHER, dam_prices(day), PRICING.feeder_load_ratio, CFG, T11)
    assert congested[0]["price"] > first[0]["price"]  # feeder-b at 0.95: higher distribution adder
    today = day_batch(dt.date(2024, 3, 12), CFG)
    late = batch_tenders(today, SITE, dam_prices(dt.date(2024, 3, 12)), PRICING.feeder_load_ratio, CFG, T11)
    assert min(t["intervalStart"] for t in late) == local(2024, 3, 12, 12)  # hours already begun left out


def test_rt_price_uses_the_interval_then_persistence_then_day_ahead() -> None:
    rtm = [PriceInterval(RT_S - 300, 300, 40.0, RTM), PriceInterval(RT_S, 300, 50.0, RTM)]
    dam = [PriceInterval(RT_S - 300, 3600, 33.0, DAM)]
    assert rt_price(RT_S, rtm, dam) == PriceInterval(RT_S, 300, 50.0, RTM)
    assert rt_price(RT_S, rtm[:1], dam) == PriceInterval(RT_S, 300, 40.0, RTM)
    assert rt_price(RT_S, [], dam) == PriceInterval(RT_S, 300, 33.0, RTM)
    assert rt_price(RT_S, [], []) is None


# ---------------------------------------------------------------------------------- transactions

def offered_core() -> tuple[MarketCore, dict[str, Any], dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
    core = MarketCore(CFG, PRICING)
    ledger: list[tuple[str, str, dict[str, Any]]] = []
    batch = rt_batch(RT_S, CFG)
    price = [PriceInterval(RT_S, 300, 42.0, RTM)]
    for site in (SITE, OTHER):
        tenders, items = core.plan_offers(batch, site, price, batch.publish_at)
        ledger.extend(items)
        core.apply_offers(batch, site.site, tenders)
    buy = next(t for t in core.book.tenders() if t["counterPartyId"] == "site-1" and t["side"] == "BUY")
    other = next(t for t in core.book.tenders() if t["counterPartyId"] == "site-2")
    return core, buy, other, ledger


def tx(txid: str, tender_id: str, quantity: Any = 1.0, **extra: Any) -> bytes:
    return json.dumps({"v": 1, "transactionId": txid, "tenderId": tender_id, "quantity": quantity,
                       "partyId": "agent-0", "ts": RT_S - 30, **extra}).encode()


def answer(core: MarketCore, ledger: list[tuple[str, str, dict[str, Any]]], site: str, payload: bytes,
           now: float) -> tuple[str, dict[str, Any], int]:
    decision = core.decide(site, payload, now)
    ledger.extend(decision.records)
    core.apply(decision)
    wire.validate(wire.CONFIRM, decision.confirm)
    assert decision.topic == f"tendril/v1/{site}/confirm"
    return decision.outcome, decision.confirm, len(decision.records)


def test_every_transaction_gets_one_confirm_and_only_refusals_are_recorded_for_bad_ones() -> None:
    core, buy, other, ledger = offered_core()
    now = RT_S - 30
    outcome, ok, n = answer(core, ledger, "site-1", tx("a1", buy["tenderId"], 1.5), now)
    assert (outcome, n, ok["ok"], ok["transactionId"], ok["quantity"], ok["price"]) == \
        (ACCEPTED, 1, True, "a1", 1.5, buy["price"])
    assert ledger[-1][0] == KIND_TRANSACTION and ledger[-1][2]["transaction_id"] == "a1"

    cases = [  # (site, payload, now, reason)
        ("site-1", tx("b1", other["tenderId"]), now, wire.TX_REFUSE_WRONG_PARTY),  # another site's tender
        ("site-1", tx("b2", buy["tenderId"]), RT_S, wire.TX_REFUSE_EXPIRED),  # at the interval start
        ("site-1", tx("b3", buy["tenderId"], 0.6), now, wire.TX_REFUSE_OVER_QUANTITY),  # 1.5 + 0.6 > 2
        ("site-1", tx("b4", buy["tenderId"], -1), now, wire.TX_REFUSE_BAD_QUANTITY),
        ("site-1", tx("b5", "RTM-nope"), now, wire.TX_REFUSE_UNKNOWN),
        ("site-1", tx("a1", buy["tenderId"], 0.1), now, wire.TX_REFUSE_CONFLICT),  # a1 reused, other terms
    ]
    for site, payload, at, reason in cases:
        before = len(ledger)
        outcome, confirm, n = answer(core, ledger, site, payload, at)
        assert (outcome, confirm["ok"], confirm["reason"], n) == (REFUSED, False, reason, 1), reason
        assert ledger[before][0] == KIND_REFUSAL and ledger[before][2]["reason"] == reason
    assert core.book.remaining_kwh(buy["tenderId"]) == pytest.approx(0.5)  # refusals took nothing

    # replayed with identical terms (a later ts, another worker): the same confirm, nothing recorded
    outcome, again, n = answer(core, ledger, "site-1", tx("a1", buy["tenderId"], 1.5, ts=RT_S + 999), RT_S + 999)
    assert (outcome, again, n) == (REPLAYED, ok, 0)
    outcome, refused_again, n = answer(core, ledger, "site-1", tx("b3", buy["tenderId"], 0.6), now)
    assert (outcome, refused_again["reason"], n) == (REPLAYED, wire.TX_REFUSE_OVER_QUANTITY, 0)


@pytest.mark.parametrize("payload, txid", [
    (b"{not json", ""),
    (b"[1, 2]", ""),
    (json.dumps({"v": 1, "transactionId": "m1", "tenderId": "x", "quantity": "1", "partyId": "a",
                 "ts": RT_S}).encode(), "m1"),  # quantity a string
    (json.dumps({"v": 1, "transactionId": "m2", "tenderId": "x", "quantity": 1, "ts": RT_S}).encode(), "m2"),
    (json.dumps({"v": 1, "transactionId": "m3" * 40, "tenderId": "x"}).encode(), ""),  # id too long to trust
])
def test_malformed_transactions_are_refused_with_what_can_be_read(payload: bytes, txid: str) -> None:
    core, _, _, ledger = offered_core()
    outcome, confirm, n = answer(core, ledger, "site-1", payload, RT_S - 30)
    assert (outcome, confirm["reason"], confirm["transactionId"], n) == (REFUSED, wire.TX_REFUSE_MALFORMED, txid, 1)
    assert confirm["detail"]


def test_rebuilt_core_answers_retries_the_same_and_never_reoffers() -> None:
    core, buy, _, ledger = offered_core()
    now = RT_S - 30
    _, ok, _ = answer(core, ledger, "site-1", tx("a1", buy["tenderId"], 2.0), now)
    _, refused, _ = answer(core, ledger, "site-1", tx("b1", "RTM-nope"), now)
    rebuilt = MarketCore(CFG, PRICING)
    stats = rebuilt.rebuild(ledger)
    assert (stats.tenders, stats.transactions, stats.refusals) == (4, 1, 1)
    assert answer(rebuilt, [], "site-1", tx("a1", buy["tenderId"], 2.0), now + 5)[1:] == (ok, 0)
    assert answer(rebuilt, [], "site-1", tx("b1", "RTM-nope"), now + 5)[1:] == (refused, 0)
    assert answer(rebuilt, [], "site-1", tx("c1", buy["tenderId"], 0.1), now)[1]["reason"] == \
        wire.TX_REFUSE_OVER_QUANTITY  # the taken quantity came back too
    batch = rt_batch(RT_S, CFG)
    assert rebuilt.due([batch], [SITE, OTHER]) == []
    tenders, items = rebuilt.plan_offers(batch, SITE, [PriceInterval(RT_S, 300, 42.0, RTM)], batch.publish_at)
    recorded = {body["tenderId"] for kind, _, body in ledger if kind == KIND_TENDER}
    assert items == [] and len(tenders) == 2 and {t["tenderId"] for t in tenders} <= recorded


# ---------------------------------------------------------------------------------- settlement

def test_register_interpolation_and_missing_data() -> None:
    readings = [(100.0, 1000.0), (200.0, 1100.0), (400.0, 1500.0)]
    assert register_at(readings, 150) == 1050.0
    assert register_at(readings, 200) == 1100.0
    assert register_at(readings, 50) is None and register_at(readings, 401) is None
    assert metered_kwh({"m": readings}, 150, 300) == pytest.approx(0.25)
    assert metered_kwh({"m": readings, "m2": readings[:2]}, 150, 300) is None  # one meter behind: wait
    assert metered_kwh({}, 150, 300) is None


def test_settlement_of_an_interval() -> None:
    core, buy, _, ledger = offered_core()
    answer(core, ledger, "site-1", tx("a1", buy["tenderId"], 1.0), RT_S - 30)
    # subscription 1.2 kWh/h -> 0.1 per 5 min; position = 0.1 + 1.0 forward buy = 1.1
    readings = {"meter-1": [(RT_S - 10.0, 5000.0), (RT_S + 310.0, 6600.0)]}  # 1.6 kWh over 320 s
    assert core.plan_settlement(SITE, RT_S, {"meter-1": readings["meter-1"][:1]}) is None
    item = core.plan_settlement(SITE, RT_S, readings)
    assert item is not None
    kind, site, body = item
    assert (kind, site) == ("settlement", "site-1")
    assert body["meteredKwh"] == pytest.approx(1.5) and body["positionKwh"] == pytest.approx(1.1)
    assert body["deviationKwh"] == pytest.approx(0.4) and body["priceUsdPerKwh"] == buy["price"]
    assert body["amountUsd"] == pytest.approx(0.4 * buy["price"])
    ready, _ = core.due_settlements(RT_S + 300 + CFG.settle_delay_s)
    assert ready == {"site-1": [RT_S], "site-2": [RT_S]}
    assert core.due_settlements(RT_S + 300 + CFG.settle_delay_s - 1)[0] == {}
    core.apply_settled("site-1", RT_S)
    rebuilt = MarketCore(CFG, PRICING)
    rebuilt.rebuild([*ledger, item])
    assert rebuilt.due_settlements(RT_S + 3600)[0] == {"site-2": [RT_S]}  # settled once, also after restart

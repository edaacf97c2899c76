"""Transactions, positions and ex-post settlement on the real March 2024 price grid."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.billing.energy_grid import on_cells
from tendril_transactive.cloud.billing.settlement import SettlementError, price_grid, settle, totals
from tendril_transactive.cloud.market.tenders import TenderConfig, build_tenders, tender_prices
from tendril_transactive.cloud.market.transactions import (
    REFUSE_BAD_QUANTITY,
    REFUSE_EXPIRED,
    REFUSE_OVER_QUANTITY,
    REFUSE_UNKNOWN,
    REFUSE_WRONG_PARTY,
    TenderBook,
    TenderConflict,
    TransactionRefused,
    position_series,
)
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.sources.prices import PriceInterval, default_prices

pytestmark = pytest.mark.unit

MARCH = (int(dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC).timestamp()),
         int(dt.datetime(2024, 4, 1, 7, tzinfo=dt.UTC).timestamp()))
HOUR = 3600
T0 = int(dt.datetime(2024, 3, 12, 19, tzinfo=dt.UTC).timestamp())  # 12:00 PDT


def tender(quantity: float | None = 2.0, side: str = wire.SIDE_BUY, expires: float = T0) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": 1, "tenderId": f"DAM-{T0}-{side[0]}", "side": side, "intervalStart": T0, "durationS": HOUR,
        "price": 0.12, "expirationTime": expires, "partyId": "utility", "counterPartyId": "coastal",
        "marketId": "DAM", "resourceDesignator": "feeder-1"}
    if quantity is not None:
        msg["quantity"] = quantity
    return msg


def refused(book: TenderBook, tid: str, site: str, kwh: float, now: float) -> str:
    with pytest.raises(TransactionRefused) as info:
        book.accept(tid, site, kwh, now)
    return info.value.reason


def test_accepting_a_tender_moves_the_position() -> None:
    book = TenderBook()
    assert book.offer(tender()) is True
    assert book.offer(tender()) is False  # a re-publish is the same offer
    buy = book.accept(f"DAM-{T0}-B", "coastal", 1.5, now=T0 - 600)
    book.offer(tender(side=wire.SIDE_SELL))
    sell = book.accept(f"DAM-{T0}-S", "coastal", 0.5, now=T0 - 600)
    assert (buy.transaction_id, buy.signed_kwh, buy.cost_usd) == (f"DAM-{T0}-B-T1", 1.5, pytest.approx(0.18))
    assert (sell.signed_kwh, sell.cost_usd) == (-0.5, pytest.approx(-0.06))
    sub = [UsageInterval(T0 - HOUR, HOUR, 1.0), UsageInterval(T0, HOUR, 1.0)]
    cells = [(T0 - HOUR, T0), (T0, T0 + HOUR)]
    # position = subscription + buys - sells, interval by interval
    assert on_cells(position_series(sub, [buy, sell]), cells) == [1.0, 2.0]


def test_refusals_carry_reasons() -> None:
    book = TenderBook()
    book.offer(tender(quantity=2.0))
    tid = f"DAM-{T0}-B"
    assert refused(book, "nope", "coastal", 1, T0 - 60) == REFUSE_UNKNOWN
    assert refused(book, tid, "inland", 1, T0 - 60) == REFUSE_WRONG_PARTY
    assert refused(book, tid, "coastal", 1, T0) == REFUSE_EXPIRED  # expiry is exclusive
    assert refused(book, tid, "coastal", 0, T0 - 60) == REFUSE_BAD_QUANTITY
    assert refused(book, tid, "coastal", float("nan"), T0 - 60) == REFUSE_BAD_QUANTITY
    assert refused(book, tid, "coastal", 2.5, T0 - 60) == REFUSE_OVER_QUANTITY
    book.accept(tid, "coastal", 1.25, T0 - 60)
    with pytest.raises(TransactionRefused, match=r"asked 1 kWh .* 0.75 of 2 kWh left"):
        book.accept(tid, "coastal", 1.0, T0 - 60)
    book.accept(tid, "coastal", 0.75, T0 - 60)  # exactly the rest
    assert book.remaining_kwh(tid) == 0.0
    with pytest.raises(TenderConflict):
        book.offer({**tender(quantity=2.0), "price": 0.5})
    with pytest.raises(wire.ContractError):
        book.offer({**tender(), "side": "HOLD"})


def test_unlimited_tender_and_replay_from_records() -> None:
    book = TenderBook()
    offered = tender(quantity=None)
    book.offer(offered)
    tx = book.accept(offered["tenderId"], "coastal", 40.0, T0 - 1)
    assert book.remaining_kwh(offered["tenderId"]) is None
    limited = tender(quantity=3.0, side=wire.SIDE_SELL)
    book.offer(limited)
    tx2 = book.accept(limited["tenderId"], "coastal", 2.0, T0 - 1)
    rebuilt = TenderBook.replay([("tender", offered), ("transaction", tx.to_record()),
                                 ("tender", limited), ("transaction", tx2.to_record())])
    assert rebuilt.remaining_kwh(limited["tenderId"]) == 1.0
    assert refused(rebuilt, limited["tenderId"], "coastal", 1.5, T0 - 1) == REFUSE_OVER_QUANTITY
    assert rebuilt.accept(limited["tenderId"], "coastal", 1.0, T0 - 1).transaction_id.endswith("-T2")


def test_built_tenders_are_accepted_until_they_expire() -> None:
    prices = [p for p in default_prices("RTM") if p.start == T0]
    tenders = build_tenders("coastal", "feeder-1", prices, "RTM", now=T0 - 120, config=TenderConfig(),
                            expires_after_s=60)
    book = TenderBook()
    for t in tenders:
        book.offer(t)
    buy = next(t for t in tenders if t["side"] == wire.SIDE_BUY)
    assert refused(book, buy["tenderId"], "coastal", 0.1, T0 - 60) == REFUSE_EXPIRED
    assert book.accept(buy["tenderId"], "coastal", 0.1, T0 - 61).price_usd_per_kwh == buy["price"]


# ------------------------------------------------------------------------------ settlement


def test_march_grid_is_rtm_with_dam_in_its_gaps() -> None:
    grid = price_grid(*MARCH, default_prices("RTM"), default_prices("DAM"))
    assert grid[0].start == MARCH[0] and grid[-1].end == MARCH[1]
    assert all(a.end == b.start for a, b in itertools.pairwise(grid))
    markets = {c.market for c in grid}
    assert markets == {"RTM", "DAM"}
    dam = [c for c in grid if c.market == "DAM"]
    # README gaps: 2024-03-20T06:50Z-07:00Z (two 5-min intervals) and 2024-03-21T21:00Z-22:00Z.
    gap1 = int(dt.datetime(2024, 3, 20, 6, 50, tzinfo=dt.UTC).timestamp())
    gap2 = int(dt.datetime(2024, 3, 21, 21, tzinfo=dt.UTC).timestamp())
    assert [(c.start, c.end) for c in dam] == [(gap1, gap1 + 600), (gap2, gap2 + HOUR)]


def test_unpriced_stretches_are_cut_into_hours() -> None:
    prices = [PriceInterval(MARCH[0] + 1800, 300, 20.0, "RTM")]
    grid = price_grid(MARCH[0], MARCH[0] + 2 * HOUR, prices)
    assert [(c.start - MARCH[0], c.end - MARCH[0], c.market) for c in grid] == [
        (0, 1800, ""), (1800, 2100, "RTM"), (2100, 3600, ""), (3600, 7200, "")]


def test_deviation_bought_and_sold_at_tender_prices() -> None:
    cfg = TenderConfig()
    start = T0
    prices = [PriceInterval(start, 300, 40.0, "RTM"), PriceInterval(start + 300, 300, -10.0, "RTM")]
    grid = price_grid(start, start + 600, prices)
    metered = [UsageInterval(start, 300, 0.5), UsageInterval(start + 300, 300, 0.1)]
    position = [UsageInterval(start, 600, 0.6)]  # 0.3 kWh per 5 minutes
    first, second = settle(metered, position, grid, cfg)
    buy, _ = tender_prices(40.0, start, cfg)
    _, sell = tender_prices(-10.0, start + 300, cfg)
    assert (first.deviation_kwh, first.price_usd_per_kwh) == (pytest.approx(0.2), buy)
    assert first.amount_usd == pytest.approx(0.2 * buy)
    assert (second.deviation_kwh, second.price_usd_per_kwh) == (pytest.approx(-0.2), sell)
    assert second.amount_usd == pytest.approx(-0.2 * sell)
    sums = totals([first, second])
    assert (sums.bought_kwh, sums.sold_kwh) == (pytest.approx(0.2), pytest.approx(0.2))
    assert sums.sold_usd == pytest.approx(0.2 * sell)
    # 12:00 PDT is a daytime hour: buy = 40 $/MWh x 1.06 / 1000 + 0.09 + 0.02
    assert buy == pytest.approx(0.0424 + 0.11)


def test_zero_deviation_needs_no_price_but_a_deviation_does() -> None:
    grid = price_grid(T0, T0 + 2 * HOUR)  # no prices at all
    same = [UsageInterval(T0, HOUR, 0.7), UsageInterval(T0 + HOUR, HOUR, 0.9)]
    settled = settle(same, list(same), grid, TenderConfig())
    assert [s.amount_usd for s in settled] == [0.0, 0.0]
    assert all(s.price_usd_per_kwh is None for s in settled)
    more = [UsageInterval(T0, HOUR, 0.7), UsageInterval(T0 + HOUR, HOUR, 1.0)]
    with pytest.raises(SettlementError, match=r"\+0.1000 kWh to settle .* no real-time or day-ahead price"):
        settle(more, same, grid, TenderConfig())

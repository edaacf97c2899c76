"""Ex-post settlement: per interval, metered - position is bought or sold at the real-time tender price.

The settlement grid is the real-time price grid (CAISO RTM 5-minute) where it has prices; a gap
in it is filled from the next finest series given (DAM hourly), and any stretch neither covers is
cut into clock hours with no price. Meter data and positions are laid on that grid by overlap
(flat within each meter interval). A positive deviation is bought at the buy tender price, a
negative one sold at the sell price, both from cloud.market.tenders.tender_prices on the interval's LMP.

An interval whose deviation is exactly zero needs no price; one that has a deviation and no price
is an error naming the first such interval and the stretch they span, never a silent zero.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from tendril_transactive.cloud.billing import energy_grid
from tendril_transactive.cloud.market.tenders import LOCAL_TZ, TenderConfig, tender_prices
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.cloud.timefmt import local_span, local_time

HOUR = 3600


class SettlementError(ValueError):
    """Energy to settle in an interval that has no price."""


@dataclass(frozen=True)
class PriceCell:
    start: int
    end: int
    lmp_usd_per_mwh: float | None
    market: str  # "" when unpriced


@dataclass(frozen=True)
class SettledInterval:
    start: int
    duration_s: int
    metered_kwh: float
    position_kwh: float
    deviation_kwh: float  # metered - position: + bought, - sold
    price_usd_per_kwh: float | None  # the buy or sell tender price applied
    market: str
    amount_usd: float  # + the customer pays, - the customer is paid

    def to_record(self) -> dict[str, object]:
        return {"start": self.start, "durationS": self.duration_s, "meteredKwh": self.metered_kwh,
                "positionKwh": self.position_kwh, "deviationKwh": self.deviation_kwh,
                "priceUsdPerKwh": self.price_usd_per_kwh, "market": self.market, "amountUsd": self.amount_usd}


@dataclass(frozen=True)
class SettlementTotals:
    bought_kwh: float
    bought_usd: float
    sold_kwh: float
    sold_usd: float  # revenue, >= 0 when sell prices are positive
    intervals: int
    markets: dict[str, int]  # how many priced intervals came from each market


def _clipped(prices: Sequence[PriceInterval], start: int, end: int) -> list[PriceCell]:
    cells = []
    for p in sorted(prices, key=lambda p: p.start):
        lo, hi = max(p.start, start), min(p.end, end)
        if lo < hi:
            cells.append(PriceCell(lo, hi, p.lmp_usd_per_mwh, p.market))
    return cells


def _unpriced(start: int, end: int) -> list[PriceCell]:
    cells, t = [], start
    while t < end:
        nxt = min(end, (t // HOUR + 1) * HOUR)
        cells.append(PriceCell(t, nxt, None, ""))
        t = nxt
    return cells


def _fill(start: int, end: int, layers: Sequence[Sequence[PriceInterval]], tz: dt.tzinfo) -> list[PriceCell]:
    """Cells covering [start, end): the first layer's intervals, its gaps filled from the next."""
    if not layers:
        return _unpriced(start, end)
    out: list[PriceCell] = []
    t = start
    for cell in _clipped(layers[0], start, end):
        if cell.start < t:
            raise ValueError(f"{cell.market} prices overlap at {local_time(cell.start, tz)}")
        if cell.start > t:
            out.extend(_fill(t, cell.start, layers[1:], tz))
        out.append(cell)
        t = cell.end
    if t < end:
        out.extend(_fill(t, end, layers[1:], tz))
    return out


def price_grid(start: int, end: int, *layers: Sequence[PriceInterval],
               tz: dt.tzinfo = LOCAL_TZ) -> list[PriceCell]:
    """The settlement grid for [start, end): finest prices first, e.g. price_grid(s, e, rtm, dam).
    `tz` is the zone its error messages name times in (the tariff's)."""
    if end <= start:
        raise ValueError(f"window ends ({local_time(end, tz)}) before it starts ({local_time(start, tz)})")
    return _fill(start, end, layers, tz)


def _unpriced_error(unpriced: Sequence[tuple[PriceCell, float]], tz: dt.tzinfo) -> SettlementError:
    first, deviation = unpriced[0]
    text = (f"{deviation:+.4f} kWh to settle in {local_span(first.start, first.end, tz)} but no real-time "
            "or day-ahead price covers it")
    if len(unpriced) > 1:
        # One message for the whole stretch: a user fixing it needs its extent, not 744 errors.
        hours = sum(c.end - c.start for c, _ in unpriced) / HOUR
        text += (f"; {len(unpriced)} intervals in all, {hours:,.1f} h between {local_time(first.start, tz)} "
                 f"and {local_time(unpriced[-1][0].end, tz)}")
    return SettlementError(text)


def settle(metered: Sequence[UsageInterval], position: Sequence[UsageInterval], grid: Sequence[PriceCell],
           config: TenderConfig, feeder_load_ratio: float = 0.0,
           tz: dt.tzinfo = LOCAL_TZ) -> list[SettledInterval]:
    """One settled interval per grid cell; SettlementError (times local to `tz`) if any deviation
    has no price."""
    cells = [(c.start, c.end) for c in grid]
    meter_kwh = energy_grid.on_cells(metered, cells)
    position_kwh = energy_grid.on_cells(position, cells)
    out = []
    unpriced: list[tuple[PriceCell, float]] = []
    for cell, m, p in zip(grid, meter_kwh, position_kwh, strict=True):
        deviation = m - p
        price: float | None = None
        amount = 0.0
        if deviation != 0.0:
            if cell.lmp_usd_per_mwh is None:
                unpriced.append((cell, deviation))
                continue
            buy, sell = tender_prices(cell.lmp_usd_per_mwh, cell.start, config, feeder_load_ratio)
            price = buy if deviation > 0 else sell
            amount = deviation * price
        out.append(SettledInterval(cell.start, cell.end - cell.start, m, p, deviation, price, cell.market,
                                   amount))
    if unpriced:
        raise _unpriced_error(unpriced, tz)
    return out


def totals(settled: Sequence[SettledInterval]) -> SettlementTotals:
    bought = [s for s in settled if s.deviation_kwh > 0]
    sold = [s for s in settled if s.deviation_kwh < 0]
    markets: dict[str, int] = {}
    for s in settled:
        if s.market:
            markets[s.market] = markets.get(s.market, 0) + 1
    return SettlementTotals(
        bought_kwh=sum(s.deviation_kwh for s in bought), bought_usd=sum(s.amount_usd for s in bought),
        sold_kwh=-sum(s.deviation_kwh for s in sold), sold_usd=-sum(s.amount_usd for s in sold),
        intervals=len(settled), markets=markets)

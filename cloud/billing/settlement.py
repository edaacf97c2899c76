"""Ex-post settlement: per interval, metered - position is bought or sold at the real-time tender price.

The settlement grid is the real-time price grid (CAISO RTM 5-minute) where it has prices; a gap
in it is filled from the next finest series given (DAM hourly), and any stretch neither covers is
cut into clock hours with no price. Meter data and positions are laid on that grid by overlap
(flat within each meter interval). A positive deviation is bought at the buy tender price, a
negative one sold at the sell price, both from cloud.market.tenders.tender_prices on the interval's LMP.

An interval whose deviation is exactly zero needs no price; one that has a deviation and no price
is an error naming it, never a silent zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tendril_transactive.cloud.billing import energy_grid
from tendril_transactive.cloud.market.tenders import TenderConfig, tender_prices
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.sources.prices import PriceInterval

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


def _fill(start: int, end: int, layers: Sequence[Sequence[PriceInterval]]) -> list[PriceCell]:
    """Cells covering [start, end): the first layer's intervals, its gaps filled from the next."""
    if not layers:
        return _unpriced(start, end)
    out: list[PriceCell] = []
    t = start
    for cell in _clipped(layers[0], start, end):
        if cell.start < t:
            raise ValueError(f"{cell.market} prices overlap at {cell.start}")
        if cell.start > t:
            out.extend(_fill(t, cell.start, layers[1:]))
        out.append(cell)
        t = cell.end
    if t < end:
        out.extend(_fill(t, end, layers[1:]))
    return out


def price_grid(start: int, end: int, *layers: Sequence[PriceInterval]) -> list[PriceCell]:
    """The settlement grid for [start, end): finest prices first, e.g. price_grid(s, e, rtm, dam)."""
    if end <= start:
        raise ValueError(f"window ends ({end}) before it starts ({start})")
    return _fill(start, end, layers)


def settle(metered: Sequence[UsageInterval], position: Sequence[UsageInterval], grid: Sequence[PriceCell],
           config: TenderConfig, feeder_load_ratio: float = 0.0) -> list[SettledInterval]:
    """One settled interval per grid cell."""
    cells = [(c.start, c.end) for c in grid]
    meter_kwh = energy_grid.on_cells(metered, cells)
    position_kwh = energy_grid.on_cells(position, cells)
    out = []
    for cell, m, p in zip(grid, meter_kwh, position_kwh, strict=True):
        deviation = m - p
        price: float | None = None
        amount = 0.0
        if deviation != 0.0:
            if cell.lmp_usd_per_mwh is None:
                raise SettlementError(
                    f"{deviation:+.4f} kWh to settle in [{cell.start}, {cell.end}) but no real-time or "
                    "day-ahead price covers it")
            buy, sell = tender_prices(cell.lmp_usd_per_mwh, cell.start, config, feeder_load_ratio)
            price = buy if deviation > 0 else sell
            amount = deviation * price
        out.append(SettledInterval(cell.start, cell.end - cell.start, m, p, deviation, price, cell.market,
                                   amount))
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

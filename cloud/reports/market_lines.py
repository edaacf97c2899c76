"""The market side of a run as line protocol: prices, tenders, schedules, settlement, feeders.

Devices' own points come from ingestion (cloud.store.line_protocol). What the cloud decided --
the LMPs it priced from, the tenders it issued, the relay schedule the optimizer chose and
what each hour cost -- is written here, beside them in the same store, so the operators'
dashboards and the demo report read one source. Pure: inputs in, lines out; the caller
writes them (EmbeddedStore.add_lines or any Sink).

Names are spelled once here, as cloud.store.line_protocol does for device points.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tendril_transactive.cloud.billing.tariff import Tariff
from tendril_transactive.cloud.market.tenders import TenderConfig, tender_prices
from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.cloud.store.line_protocol import TAG_DEVICE, TAG_SITE, LinePoint, format_line, seconds_to_ns

MEASUREMENT_LMP = "lmp"
MEASUREMENT_TENDER = "tender"
MEASUREMENT_SCHEDULE = "schedule"
MEASUREMENT_SETTLEMENT = "settlement"
MEASUREMENT_BILL = "bill"
MEASUREMENT_FEEDER = "feeder"
MARKET_MEASUREMENTS = (
    MEASUREMENT_LMP, MEASUREMENT_TENDER, MEASUREMENT_SCHEDULE, MEASUREMENT_SETTLEMENT, MEASUREMENT_BILL,
    MEASUREMENT_FEEDER,
)

TAG_MARKET = "market"
TAG_SIDE = "side"
TAG_FEEDER = "feeder"
TAG_PLAN = "plan"

PLAN_OPTIMIZED = "optimized"
PLAN_BASELINE = "baseline"  # what the relay would do without Tendril: a plain timer

FIELD_LMP = "lmp_usd_per_mwh"
FIELD_PRICE = "price_usd_per_kwh"
FIELD_DURATION_S = "duration_s"
FIELD_PLANNED_RELAY = "relay"
FIELD_PLANNED_KW = "planned_kw"
FIELD_ENERGY_KWH = "energy_kwh"
FIELD_COST_USD = "cost_usd"
FIELD_OAT_USD = "oat_usd"
FIELD_SHADOW_USD = "shadow_usd"
FIELD_REBATE_USD = "rebate_usd"
FIELD_LOAD_RATIO = "forecast_load_ratio"

SIDES = ("BUY", "SELL")


@dataclass(frozen=True)
class SitePlan:
    """One site as the cloud planned it: where it hangs, what its relay switches, the hourly schedule."""

    site: str
    feeder: str
    feeder_load_ratio: float
    relay_device: str
    relay_kw: float
    schedule: Sequence[int]  # relay on/off per hour from the window start


def _line(measurement: str, tags: dict[str, str], fields: Mapping[str, float | int | str | bool], t: float) -> str:
    return format_line(LinePoint(measurement, tags, fields, seconds_to_ns(t)))


def lmp_lines(prices: Iterable[PriceInterval]) -> list[str]:
    """CAISO LMPs, one point per interval, tagged with their market (DAM hourly, RTM 5-minute)."""
    return [_line(MEASUREMENT_LMP, {TAG_MARKET: p.market}, {FIELD_LMP: float(p.lmp_usd_per_mwh)}, p.start)
            for p in prices]


def tender_lines(plan: SitePlan, prices: Iterable[PriceInterval], config: TenderConfig) -> list[str]:
    """The BUY and SELL tender prices the site was offered for each interval (as cloud.market.tenders prices them)."""
    out = []
    for p in prices:
        buy, sell = tender_prices(p.lmp_usd_per_mwh, p.start, config, plan.feeder_load_ratio)
        for side, price in zip(SIDES, (buy, sell), strict=True):
            tags = {TAG_SITE: plan.site, TAG_FEEDER: plan.feeder, TAG_MARKET: p.market, TAG_SIDE: side}
            out.append(_line(MEASUREMENT_TENDER, tags, {FIELD_PRICE: price, FIELD_DURATION_S: p.duration_s},
                             p.start))
    return out


def baseline_schedule(schedule: Sequence[int]) -> list[int]:
    """Without optimization: a timer runs the relay for the same number of hours from the window start."""
    on_hours = sum(1 for s in schedule if s)
    return [1 if i < on_hours else 0 for i in range(len(schedule))]


def schedule_lines(plan: SitePlan, start: float, step_s: int) -> list[str]:
    """Optimized and baseline relay plans per step, so dashboards and reports can compare them."""
    out = []
    for name, sched in ((PLAN_OPTIMIZED, list(plan.schedule)), (PLAN_BASELINE, baseline_schedule(plan.schedule))):
        tags = {TAG_SITE: plan.site, TAG_DEVICE: plan.relay_device, TAG_FEEDER: plan.feeder, TAG_PLAN: name}
        for i, on in enumerate(sched):
            fields = {FIELD_PLANNED_RELAY: int(bool(on)), FIELD_PLANNED_KW: plan.relay_kw if on else 0.0}
            out.append(_line(MEASUREMENT_SCHEDULE, tags, fields, start + i * step_s))
    return out


def _price_at(prices: Sequence[PriceInterval], t: float, plan: SitePlan, config: TenderConfig) -> float | None:
    for p in prices:
        if p.start <= t < p.end:
            return tender_prices(p.lmp_usd_per_mwh, p.start, config, plan.feeder_load_ratio)[0]
    return None


def settlement_lines(
    plan: SitePlan, meter: Sequence[tuple[float, float]], prices: Sequence[PriceInterval], config: TenderConfig,
    tariff: Tariff, start: float, end: float, step_s: int = 3600,
) -> list[str]:
    """Per step: metered kWh, its cost at the buy tender in force (shadow) and at the OAT; then the bill.

    `meter` is cumulative (ts, energy_wh). Each reading-to-reading increment is priced at its start
    time; a meter reset never bills negative energy. Steps without readings get no point.
    """
    ordered = sorted(r for r in meter if start <= r[0] <= end)
    steps: dict[int, list[float]] = {}
    for (t0, e0), (_t1, e1) in itertools.pairwise(ordered):
        kwh = max(0.0, e1 - e0) / 1000.0
        price = _price_at(prices, t0, plan, config)
        if price is None:
            continue
        oat = float(tariff.period_at(t0)[1].usd_per_kwh)
        acc = steps.setdefault(int((t0 - start) // step_s), [0.0, 0.0, 0.0])
        acc[0] += kwh
        acc[1] += kwh * price
        acc[2] += kwh * oat
    tags = {TAG_SITE: plan.site, TAG_FEEDER: plan.feeder}
    out = [
        _line(MEASUREMENT_SETTLEMENT, tags,
              {FIELD_ENERGY_KWH: round(kwh, 6), FIELD_COST_USD: round(cost, 6), FIELD_OAT_USD: round(oat, 6)},
              start + i * step_s)
        for i, (kwh, cost, oat) in sorted(steps.items())
    ]
    shadow = sum(v[1] for v in steps.values())
    oat_total = sum(v[2] for v in steps.values())
    bill = {FIELD_SHADOW_USD: round(shadow, 6), FIELD_OAT_USD: round(oat_total, 6),
            FIELD_REBATE_USD: round(max(0.0, oat_total - shadow), 6)}
    out.append(_line(MEASUREMENT_BILL, tags, bill, end))
    return out


def feeder_lines(plans: Sequence[SitePlan], prices: Iterable[PriceInterval]) -> list[str]:
    """Each feeder's forecast load / limit for every interval the sites were priced for."""
    ratios = {p.feeder: p.feeder_load_ratio for p in plans}
    return [_line(MEASUREMENT_FEEDER, {TAG_FEEDER: feeder}, {FIELD_LOAD_RATIO: ratio}, p.start)
            for p in prices for feeder, ratio in sorted(ratios.items())]

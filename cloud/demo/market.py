"""The demo's market points: what `tendril demo` priced and planned, as lines for its store.

Glue between the demo's run objects and cloud.reports.market_lines; the demo calls `demo_market_lines`
once the run is over (it reads the meters from the store) and adds the result to the store.
"""

from __future__ import annotations

from collections.abc import Sequence

from tendril_transactive.cloud.billing.tariff import Tariff, default_tariff
from tendril_transactive.cloud.demo.fleet import PUMP_KW, DemoSite
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.reports.market_lines import (
    SitePlan,
    feeder_lines,
    lmp_lines,
    schedule_lines,
    settlement_lines,
    tender_lines,
)
from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.cloud.store.line_protocol import (
    FIELD_ENERGY_WH,
    MEASUREMENT_METER,
    MEASUREMENT_RELAY,
    TAG_DEVICE,
)
from tendril_transactive.cloud.store.sinks import EmbeddedStore

HOUR = 3600
PUMP = "pump"


def site_plan(site: DemoSite, store: EmbeddedStore | None, start: float, end: float) -> SitePlan:
    """The pool pump as the agent ran it: its relay per hour from the stored relay telemetry (the
    state held longest in the hour), so the report can set it against a fixed timer."""
    hours = max(0, int((end - start) // HOUR))
    schedule = [0] * hours
    if store is not None:
        points = sorted((p.ts_ns / 1e9, int(p.fields.get("relay", 0)))
                        for p in store.points(MEASUREMENT_RELAY, site=site.site) if p.tags.get(TAG_DEVICE) == PUMP)
        for h in range(hours):
            inside = [r for t, r in points if start + h * HOUR <= t < start + (h + 1) * HOUR]
            schedule[h] = 1 if inside and 2 * sum(inside) >= len(inside) else 0
    return SitePlan(site.site, site.feeder, site.feeder_load_ratio, PUMP, PUMP_KW, schedule)


def demo_market_lines(
    sites: Sequence[DemoSite], da: Sequence[PriceInterval], rt: Sequence[PriceInterval], tconf: TenderConfig,
    store: EmbeddedStore | None, start: float, end: float, tariff: Tariff | None = None,
) -> list[str]:
    """LMPs, tenders (day-ahead and real-time), schedules, hourly settlement and bills, feeder ratios.

    Settlement and bills need the meters, read from `store`; with an external store (None here)
    they are left out and the rest is still returned.
    """
    tariff = tariff if tariff is not None else default_tariff()
    plans = [site_plan(s, store, start, end) for s in sites]
    lines = lmp_lines([*da, *rt])
    for plan in plans:
        lines += tender_lines(plan, [*da, *rt], tconf)
        lines += schedule_lines(plan, start, HOUR)
        if store is None:
            continue
        meter = [(p.ts_ns / 1e9, float(p.fields[FIELD_ENERGY_WH]))
                 for p in store.points(MEASUREMENT_METER, site=plan.site) if FIELD_ENERGY_WH in p.fields]
        lines += settlement_lines(plan, meter, rt, tconf, tariff, start, end, HOUR)
    lines += feeder_lines(plans, da)
    return lines

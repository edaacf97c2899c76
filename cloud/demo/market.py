"""The demo's market points: what `tendril demo` priced and planned, as lines for its store.

Glue between the demo's run objects and cloud.reports.market_lines; the demo calls `demo_market_lines`
once the run is over (it reads the meters from the store) and adds the result to the store.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.billing.tariff import Tariff, default_tariff
from cloud.demo.fleet import DemoSite
from cloud.market.tenders import TenderConfig
from cloud.reports.market_lines import (
    SitePlan,
    feeder_lines,
    lmp_lines,
    schedule_lines,
    settlement_lines,
    tender_lines,
)
from cloud.sources.prices import PriceInterval
from cloud.store.line_protocol import FIELD_ENERGY_WH, MEASUREMENT_METER
from cloud.store.sinks import EmbeddedStore

HOUR = 3600


def site_plan(site: DemoSite) -> SitePlan:
    return SitePlan(site.site, site.feeder, site.feeder_load_ratio, site.relay_device,
                    site.model.relay_load_w / 1000.0, list(site.schedule))


def demo_market_lines(
    sites: Sequence[DemoSite], da: Sequence[PriceInterval], rt: Sequence[PriceInterval], tconf: TenderConfig,
    store: EmbeddedStore | None, start: float, end: float, tariff: Tariff | None = None,
) -> list[str]:
    """LMPs, tenders (day-ahead and real-time), schedules, hourly settlement and bills, feeder ratios.

    Settlement and bills need the meters, read from `store`; with an external store (None here)
    they are left out and the rest is still returned.
    """
    tariff = tariff if tariff is not None else default_tariff()
    plans = [site_plan(s) for s in sites]
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

"""Market points for the dashboards and the report: tenders, schedules, settlement, bills, feeders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.demo.fleet import make_sites
from tendril_transactive.cloud.demo.market import demo_market_lines, site_plan
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.cloud.market.tenders import TenderConfig, tender_prices
from tendril_transactive.cloud.reports import market_lines as mk
from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.cloud.store.line_protocol import parse_line
from tendril_transactive.cloud.store.sinks import EmbeddedStore

pytestmark = pytest.mark.unit

START = 1710486000  # 2024-03-15 00:00 America/Los_Angeles
PLAN = mk.SitePlan("site-1", "feeder-b", 0.95, "pump", 1.5, [0, 1, 1, 0])
RT = [PriceInterval(START + i * 300, 300, 20.0 + i, "RTM") for i in range(24)]  # two hours of 5-minute LMPs


def _points(lines: list[str]) -> list[tuple[str, dict[str, str], dict[str, Any], float]]:
    out = []
    for line in lines:
        p = parse_line(line)
        out.append((p.measurement, dict(p.tags), dict(p.fields), p.ts_ns / 1e9))
    return out


def test_tender_points_carry_the_prices_cloud_tenders_offers() -> None:
    pts = _points(mk.tender_lines(PLAN, RT[:1], TenderConfig()))
    buy, sell = tender_prices(20.0, START, TenderConfig(), 0.95)
    assert pts == [
        ("tender", {"site": "site-1", "feeder": "feeder-b", "market": "RTM", "side": "BUY"},
         {"price_usd_per_kwh": buy, "duration_s": 300}, START),
        ("tender", {"site": "site-1", "feeder": "feeder-b", "market": "RTM", "side": "SELL"},
         {"price_usd_per_kwh": sell, "duration_s": 300}, START),
    ]


def test_baseline_runs_the_same_hours_from_the_start() -> None:
    assert mk.baseline_schedule([0, 1, 0, 1, 0]) == [1, 1, 0, 0, 0]
    assert mk.baseline_schedule([]) == []
    pts = _points(mk.schedule_lines(PLAN, START, 3600))
    optimized = [(f["relay"], f["planned_kw"]) for m, t, f, _ in pts if t["plan"] == "optimized"]
    baseline = [(f["relay"], f["planned_kw"]) for m, t, f, _ in pts if t["plan"] == "baseline"]
    assert optimized == [(0, 0.0), (1, 1.5), (1, 1.5), (0, 0.0)]
    assert baseline == [(1, 1.5), (1, 1.5), (0, 0.0), (0, 0.0)]


def test_settlement_prices_each_increment_at_its_tender_and_the_oat() -> None:
    # 1 kWh in the first five minutes, 2 kWh in the hour's last five, a meter reset, then 0.5 kWh.
    meter = [(START, 100.0), (START + 300, 1100.0), (START + 3300, 1100.0), (START + 3600, 3100.0),
             (START + 3900, 50.0), (START + 4200, 550.0)]
    tariff = default_tariff()
    lines = mk.settlement_lines(PLAN, meter, RT, TenderConfig(), tariff, START, START + 7200)
    pts = _points(lines)
    buy = [tender_prices(p.lmp_usd_per_mwh, p.start, TenderConfig(), 0.95)[0] for p in RT]
    oat = float(tariff.period_at(START)[1].usd_per_kwh)
    hour0, hour1, bill = pts
    assert hour0[0] == "settlement" and hour0[3] == START
    # The increment from START+3300 to START+3600 starts in hour 0 at the 12th RT interval.
    assert hour0[2]["energy_kwh"] == pytest.approx(3.0)
    assert hour0[2]["cost_usd"] == pytest.approx(1.0 * buy[0] + 2.0 * buy[11], abs=1e-6)
    assert hour0[2]["oat_usd"] == pytest.approx(3.0 * oat, abs=1e-6)
    assert hour1[2]["energy_kwh"] == pytest.approx(0.5)  # the reset bills nothing, not minus 3 kWh
    assert bill[0] == "bill" and bill[3] == START + 7200
    shadow = hour0[2]["cost_usd"] + hour1[2]["cost_usd"]
    assert bill[2]["shadow_usd"] == pytest.approx(shadow, abs=1e-6)
    assert bill[2]["rebate_usd"] == pytest.approx(max(0.0, bill[2]["oat_usd"] - shadow), abs=1e-6)


def test_rebate_is_never_negative() -> None:
    # Priced far above the OAT: the shadow bill exceeds it and the rebate is zero, not negative.
    dear = [PriceInterval(START, 3600, 5000.0, "RTM")]
    lines = mk.settlement_lines(PLAN, [(START, 0.0), (START + 600, 1000.0)], dear, TenderConfig(), default_tariff(),
                                START, START + 3600)
    bill = _points(lines)[-1]
    assert bill[2]["shadow_usd"] > bill[2]["oat_usd"]
    assert bill[2]["rebate_usd"] == 0.0


def test_lmp_and_feeder_points() -> None:
    lmp = _points(mk.lmp_lines(RT[:2]))
    assert [(m, t, f) for m, t, f, _ in lmp] == [("lmp", {"market": "RTM"}, {"lmp_usd_per_mwh": 20.0}),
                                                 ("lmp", {"market": "RTM"}, {"lmp_usd_per_mwh": 21.0})]
    other = mk.SitePlan("site-2", "feeder-a", 0.55, "pump", 1.5, [1])
    feeders = _points(mk.feeder_lines([PLAN, other], RT[:1]))
    assert [(t["feeder"], f["forecast_load_ratio"]) for _, t, f, _ in feeders] == [("feeder-a", 0.55),
                                                                                   ("feeder-b", 0.95)]


def test_demo_market_lines_from_demo_sites(tmp_path: Path) -> None:
    sites = make_sites(2, tmp_path, START, Registry(tmp_path / "registry"))
    store = EmbeddedStore()
    store.add_lines([f"meter,device=meter,site=site-1 energy_wh={e}.0 {(START + i * 600) * 10**9}"
                     for i, e in enumerate((0, 500, 1000))])
    # the pump as it ran: on in the first hour, off in the second (the demo's plan lines read it back)
    store.add_lines([f"relay,device=pump,site=site-1 relay={r}i,load_w={1500 * r}.0 {(START + h * 3600) * 10**9}"
                     for h, r in enumerate((1, 0))])
    da = [PriceInterval(START, 3600, 30.0, "DAM"), PriceInterval(START + 3600, 3600, 31.0, "DAM")]
    with_store = {parse_line(x).measurement for x in demo_market_lines(sites, da, RT, TenderConfig(), store,
                                                                         START, START + 7200)}
    assert with_store == {"lmp", "tender", "schedule", "settlement", "bill", "feeder"}
    without = {parse_line(x).measurement for x in demo_market_lines(sites, da, RT, TenderConfig(), None,
                                                                      START, START + 7200)}
    assert without == {"lmp", "tender", "schedule", "feeder"}
    assert list(site_plan(sites[0], store, START, START + 7200).schedule) == [1, 0]

"""report.html: four embedded PNGs that decode and carry curves, read from what a store holds."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.demo.report import ReportError, fleet_load, write_report
from tendril_transactive.cloud.demo.summary import DemoSummary, SiteResult
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.reports.market_lines import (
    SitePlan,
    lmp_lines,
    schedule_lines,
    settlement_lines,
    tender_lines,
)
from tendril_transactive.cloud.sources.prices import default_prices, prices_between
from tendril_transactive.cloud.store.line_protocol import LinePoint, format_line, seconds_to_ns
from tendril_transactive.cloud.store.sinks import EmbeddedStore
from tendril_transactive.edge.site import SiteModel

pytestmark = pytest.mark.unit

START = 1710486000.0  # 2024-03-15 00:00 America/Los_Angeles
HOURS = 4
END = START + HOURS * 3600
PLANS = (SitePlan("site-1", "feeder-a", 0.55, "pump", 1.5, [0, 1, 1, 0]),
         SitePlan("site-2", "feeder-b", 0.95, "pump", 1.5, [0, 0, 1, 1]))


def _device_lines(plan: SitePlan, seed: int) -> list[str]:
    """A minute of meter and relay telemetry from the house model, relay following the plan."""
    model = SiteModel(plan.site, seed=seed, relay_load_w=plan.relay_kw * 1000)
    lines, energy = [], 0.0
    for minute in range(HOURS * 60 + 1):
        t = START + minute * 60
        on = plan.schedule[min(minute // 60, HOURS - 1)]
        power = model.power_w(t, on)
        energy += power / 60.0
        tags = {"site": plan.site}
        lines.append(format_line(LinePoint("meter", {**tags, "device": "meter"},
                                           {"seq": minute, "power_w": power, "energy_wh": energy}, seconds_to_ns(t))))
        lines.append(format_line(LinePoint("relay", {**tags, "device": plan.relay_device},
                                           {"seq": minute, "relay": on, "load_w": on * plan.relay_kw * 1000},
                                           seconds_to_ns(t))))
    return lines


def _store(with_market: bool = True) -> EmbeddedStore:
    store = EmbeddedStore()
    rt = prices_between(default_prices("RTM"), START, END)
    da = prices_between(default_prices("DAM"), START, END)
    config = TenderConfig()
    for seed, plan in enumerate(PLANS):
        store.add_lines(_device_lines(plan, seed))
    if with_market:
        store.add_lines(lmp_lines([*da, *rt]))
        for plan in PLANS:
            store.add_lines(tender_lines(plan, [*da, *rt], config))
            store.add_lines(schedule_lines(plan, START, 3600))
            meter = [(p.ts_ns / 1e9, float(p.fields["energy_wh"])) for p in store.points("meter", site=plan.site)]
            store.add_lines(settlement_lines(plan, meter, rt, config, default_tariff(), START, END))
    return store


def _summary() -> DemoSummary:
    return DemoSummary(HOURS, 3.0, 100, 0, 10, 8, 8, 0, 4, 4,
                       [SiteResult(p.site, 241, 5.0, 1.0, 2.0, 2) for p in PLANS])


def _images(report: Path) -> list[Image.Image]:
    data = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report.read_text())
    return [Image.open(io.BytesIO(base64.b64decode(d))).convert("RGB") for d in data]


def _share(img: Image.Image, color: tuple[int, int, int], tol: int = 40) -> float:
    """Fraction of pixels within `tol` of `color` on every channel."""
    raw = img.tobytes()
    r, g, b = color
    count = len(raw) // 3
    near = sum(1 for i in range(0, len(raw), 3)
               if abs(raw[i] - r) <= tol and abs(raw[i + 1] - g) <= tol and abs(raw[i + 2] - b) <= tol)
    return near / count


def test_report_has_four_pngs_with_curves(tmp_path: Path) -> None:
    path = write_report(tmp_path, _store(), _summary(), start=START, end=END)
    assert path == tmp_path / "report.html"
    images = _images(path)
    assert len(images) == 4
    for img in images:
        assert img.width > 300 and img.height > 150
        assert _share(img, (255, 255, 255), tol=8) < 0.97, "an all-white image"
    prices, fleet, site, bills = images
    assert _share(prices, (31, 119, 180)) > 0.002  # tab:blue: RTM buy tender
    assert _share(fleet, (44, 160, 44)) > 0.002  # tab:green: metered fleet load
    assert _share(fleet, (127, 127, 127), tol=10) > 0.001  # tab:gray: the timer baseline
    assert _share(site, (31, 119, 180)) > 0.002  # meter trace
    assert _share(bills, (255, 127, 14)) > 0.005  # tab:orange: rebate bars
    html = path.read_text()
    assert "site-1" in html and "Fleet load with and without optimization" in html


def test_fleet_load_swaps_the_placed_relay_load_for_the_timer_baseline() -> None:
    store = _store()
    # Hour 0: site-1's timer runs (2 planned hours from the start), the optimizer had it off.
    t = [START + 1800]
    optimized, baseline = fleet_load(store, ["site-1"], t)
    assert baseline[0] == pytest.approx(optimized[0] + 1.5)
    # Hour 3: the optimizer runs it, the timer is done.
    t = [START + 3 * 3600 + 1800]
    optimized, baseline = fleet_load(store, ["site-1"], t)
    assert optimized[0] == pytest.approx(baseline[0])  # both off at hour 3 for site-1
    optimized, baseline = fleet_load(store, ["site-2"], t)
    assert optimized[0] == pytest.approx(baseline[0] + 1.5)


def test_report_without_market_points_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="demo_market_lines"):
        write_report(tmp_path, _store(with_market=False), _summary(), start=START, end=END)
    assert not (tmp_path / "report.html").exists()


def test_report_for_an_unknown_site_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="site-9"):
        write_report(tmp_path, _store(), _summary(), start=START, end=END, site="site-9")

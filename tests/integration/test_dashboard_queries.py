"""Every dashboard query, run on a real InfluxQL engine against what Tendril actually stores.

A short `tendril demo` run produces the line protocol (device points from ingestion in
OUT/telemetry.lp, market points from cloud.demo.market); it is written into Debian's
InfluxDB 1.6 through /write, and every panel and variable query of the committed dashboard
JSON runs through /query with its variables filled in. A field renamed in the ingestion path
makes the panels that read it fail -- shown here by renaming one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tendril_transactive.cloud.demo.fleet import make_sites
from tendril_transactive.cloud.demo.market import demo_market_lines
from tendril_transactive.cloud.demo.report import write_report
from tendril_transactive.cloud.demo.run import HOUR, DemoConfig, run_demo
from tendril_transactive.cloud.demo.summary import DemoSummary
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.sources.prices import default_prices, prices_between
from tendril_transactive.cloud.store.line_protocol import (
    FIELD_POWER_W,
    MEASUREMENT_METER,
    LinePoint,
    format_line,
    parse_line,
)
from tendril_transactive.cloud.store.sinks import EmbeddedStore
from tendril_transactive.dashboards.checks import ALL, load_dir
from tendril_transactive.dashboards.verify import verify
from tendril_transactive.hil.servers import InfluxDB1

pytestmark = [pytest.mark.integration, pytest.mark.firmware, pytest.mark.slow]

DB = "tendril"


@dataclass(frozen=True)
class Stored:
    lines: list[str]
    start: int
    end: int
    out: Path


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Stored:
    out = tmp_path_factory.mktemp("demo")
    # 600x: four firmware nodes a site and the agent planning need their share of a busy machine
    cfg = DemoConfig(sites=2, hours=2, speed=600, out=out, progress=False)
    asyncio.run(run_demo(cfg))
    device_lines = (out / "telemetry.lp").read_text().splitlines()
    start = cfg.sim_start()
    end = start + cfg.hours * HOUR
    # The market side as the demo wrote it (same sites, prices and stored telemetry). If the demo
    # already stored these points, writing them again is a no-op: InfluxDB keys a point by series and time.
    da, rt = prices_between(default_prices("DAM"), start, end), prices_between(default_prices("RTM"), start, end)
    plan_dir = tmp_path_factory.mktemp("plan")
    sites = make_sites(cfg.sites, plan_dir, start, Registry(plan_dir / "registry"))
    store = EmbeddedStore()
    store.add_lines(device_lines)
    market = demo_market_lines(sites, da, rt, TenderConfig(), store, start, end)
    # The firmware boots before the simulated start; include its first reports.
    return Stored(device_lines + market, int(start) - 1800, int(end) + 600, out)


def _load(server: InfluxDB1, lines: list[str]) -> None:
    body = server.query(f"CREATE DATABASE {DB}", post=True)
    assert "error" not in body["results"][0], body  # type: ignore[index]
    server.write(DB, lines)


def _runner(server: InfluxDB1) -> Any:
    def run(query: str) -> Mapping[str, Any]:
        return server.query(query, DB)

    return run


VALUES = ({"site": "site-1", "device": "pump", "feeder": "feeder-a"},
          {"site": "site-2", "device": ALL, "feeder": ALL})


def test_every_panel_and_variable_query_returns_its_columns(influxdb1: InfluxDB1, stored: Stored) -> None:
    _load(influxdb1, stored.lines)
    dashboards = load_dir()
    assert len(dashboards) >= 6
    for values in VALUES:
        failures = verify(dashboards, _runner(influxdb1), values, stored.start, stored.end)
        assert not failures, f"{len(failures)} queries failed for {values}:\n" + "\n".join(map(str, failures))


def _renamed(lines: list[str], measurement: str, old: str, new: str) -> list[str]:
    out = []
    for line in lines:
        pt = parse_line(line)
        if pt.measurement == measurement and old in pt.fields:
            fields = {(new if k == old else k): v for k, v in pt.fields.items()}
            pt = LinePoint(pt.measurement, pt.tags, fields, pt.ts_ns)
        out.append(format_line(pt))
    return out


def test_a_field_renamed_in_the_ingestion_path_fails_the_panels_that_read_it(
    influxdb1: InfluxDB1, stored: Stored
) -> None:
    # As if ingestion wrote meter power under another name: every panel reading it must fail.
    lines = _renamed(stored.lines, MEASUREMENT_METER, FIELD_POWER_W, "power_watts")
    assert lines != stored.lines
    _load(influxdb1, lines)
    failures = verify(load_dir(), _runner(influxdb1), VALUES[0], stored.start, stored.end)
    failed = {(f.dashboard, f.where) for f in failures}
    assert ("Tendril / Site detail", "panel 'Meter power' query A") in failed, failures
    assert ("Tendril / Fleet overview", "panel 'Total metered load' query A") in failed, failures
    assert ("Tendril / Fleet overview", "panel 'Metered load by site' query A") in failed, failures
    # ... and only those: the other panels still find what they read.
    assert all(FIELD_POWER_W in f.query for f in failures), "\n".join(map(str, failures))


def test_a_measurement_nobody_writes_fails_verification(influxdb1: InfluxDB1, stored: Stored) -> None:
    _load(influxdb1, stored.lines)
    dashboards = load_dir()
    dash = dashboards["tendril-site.json"]
    panel = dash["panels"][0]
    panel["targets"][0]["query"] = panel["targets"][0]["query"].replace('FROM "meter"', 'FROM "indoor_temp"')
    failures = verify({"tendril-site.json": dash}, _runner(influxdb1), VALUES[0], stored.start, stored.end)
    assert [f.where for f in failures] == [f"panel {panel['title']!r} query A"]
    assert failures[0].reason == "no data"



def test_report_from_the_demo_run_embeds_pngs_with_curves(stored: Stored, tmp_path: Path) -> None:
    store = EmbeddedStore()
    store.add_lines(stored.lines)
    raw = json.loads((stored.out / "summary.json").read_text())
    summary = DemoSummary.from_json(raw)
    path = write_report(tmp_path, store, summary, start=stored.start + 1800, end=stored.end - 600)
    encoded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', path.read_text())
    assert len(encoded) == 4
    for data in encoded:
        img = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
        histogram = img.histogram()
        ink = sum(histogram[:200]) / (img.width * img.height)  # pixels clearly darker than the background
        assert 0.005 < ink < 0.9, f"a blank or solid image: {ink:.4f} of pixels drawn"

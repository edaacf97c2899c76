"""The whole loop, end to end, as `tendril demo` composes it: real firmware processes (meter, pump,
heat-pump and EV relays), broker, ingestion, the market service and the agent service.

Checks what was *stored* (telemetry, ledger) against what was *decided*: the market's ledger
verifies, every real-time interval got tenders, transactions were confirmed or refused with a
reason, commands were acknowledged, and each settlement's metered energy is what the stored meter
register says, priced at the interval's own tender.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
from pathlib import Path

import pytest

from tendril_transactive.cloud.demo.run import DemoConfig, run_demo
from tendril_transactive.cloud.ledger.chain import Ledger
from tendril_transactive.cloud.market.settle import KIND_SETTLEMENT
from tendril_transactive.cloud.market.transactions import KIND_REFUSAL, KIND_TENDER, KIND_TRANSACTION
from tendril_transactive.cloud.store.line_protocol import parse_line

pytestmark = [pytest.mark.integration, pytest.mark.firmware, pytest.mark.slow]
SITES = 2
HOURS = 4


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> tuple[DemoConfig, Path]:
    out = tmp_path_factory.mktemp("demo")
    # 600x leaves every process a few real milliseconds per simulated second on a busy machine.
    cfg = DemoConfig(sites=SITES, hours=HOURS, speed=600, out=out, progress=False)
    asyncio.run(run_demo(cfg))
    return cfg, out


def _summary(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "summary.json").read_text())
    return data


def _ledger(out: Path) -> Ledger:
    return Ledger(f"sqlite:///{out / 'ledger.db'}")


def _points(out: Path, measurement: str, site: str, **tags: str) -> list[tuple[float, dict[str, object]]]:
    rows = []
    for line in (out / "telemetry.lp").read_text().splitlines():
        pt = parse_line(line)
        if pt.measurement == measurement and pt.tags.get("site") == site and tags.items() <= pt.tags.items():
            rows.append((pt.ts_ns / 1e9, dict(pt.fields)))
    return sorted(rows, key=lambda r: r[0])


def test_every_summary_line_is_non_zero(demo_run: tuple[DemoConfig, Path]) -> None:
    _, out = demo_run
    s = _summary(out)
    for key in ("messages_ingested", "tenders_issued", "commands_sent", "commands_acked", "firmware_nodes"):
        assert s[key], f"{key} is zero in {s}"
    assert s["firmware_nodes"] == 4 * SITES  # meter, pump, hvac, ev
    assert s["messages_rejected"] == 0
    assert s["ledger_ok"] is True
    market = s["market"]
    assert isinstance(market, list) and len(market) == SITES
    for site in market:
        assert site["accepted"] > 0 and site["intervals_settled"] > 0 and site["metered_kwh"] > 0, site
    assert (out / "report.html").stat().st_size > 10_000


def test_every_real_time_interval_was_tendered_to_every_site(demo_run: tuple[DemoConfig, Path]) -> None:
    cfg, out = demo_run
    start = cfg.sim_start()
    rt = {(r.site, int(r.body["intervalStart"]), r.body["side"]) for r in _ledger(out).records(KIND_TENDER)
          if r.body["marketId"] == "RTM"}
    for site, k, side in itertools.product(range(1, SITES + 1), range(HOURS * 12), ("BUY", "SELL")):
        assert (f"site-{site}", int(start + 300 * k), side) in rt


def test_every_transaction_was_confirmed_or_refused_with_a_reason(demo_run: tuple[DemoConfig, Path]) -> None:
    _, out = demo_run
    ledger = _ledger(out)
    accepted = [r.body for r in ledger.records(KIND_TRANSACTION)]
    refused = [r.body for r in ledger.records(KIND_REFUSAL)]
    assert accepted
    ids = [tx["transaction_id"] for tx in accepted]
    assert len(ids) == len(set(ids)), "a transaction was recorded twice"
    assert all(r.get("reason") for r in refused), refused


def test_commands_were_acknowledged(demo_run: tuple[DemoConfig, Path]) -> None:
    _, out = demo_run
    s = _summary(out)
    assert s["commands_acked"] > 0
    # acks are stored too: each stored ack answers a command id the agent sent, once accepted
    acks = [f for site in range(1, SITES + 1) for _, f in _points(out, "command_ack", f"site-{site}")]
    assert acks and all(isinstance(a["ok"], bool) for a in acks)
    assert sum(1 for a in acks if a["ok"]) >= int(str(s["commands_acked"])) * 0.9


def _register(series: list[tuple[float, float]], t: float) -> float | None:
    """The meter register (Wh) at t, linear between the readings around it."""
    times = [p[0] for p in series]
    i = bisect.bisect_left(times, t)
    if i < len(times) and times[i] == t:
        return series[i][1]
    if i == 0 or i == len(times):
        return None
    (t0, e0), (t1, e1) = series[i - 1], series[i]
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0)


def test_settlement_is_the_stored_meter_priced_at_the_interval_tender(demo_run: tuple[DemoConfig, Path]) -> None:
    """Recomputed here from the telemetry file and the ledger's own tenders: metered kWh of every
    settled interval, its deviation from the position and the amount, to the cent."""
    _, out = demo_run
    ledger = _ledger(out)
    tenders = {r.body["tenderId"]: r.body for r in ledger.records(KIND_TENDER)}
    settled = 0
    for site_no in range(1, SITES + 1):
        site = f"site-{site_no}"
        meter = [(t, float(str(f["energy_wh"]))) for t, f in _points(out, "meter", site, device="meter")]
        for rec in ledger.records(KIND_SETTLEMENT, site=site):
            body = rec.body
            if "intervalStart" not in body:
                continue
            start = float(body["intervalStart"])
            e0, e1 = _register(meter, start), _register(meter, start + 300)
            assert e0 is not None and e1 is not None, f"{site}: settled {start} without meter readings around it"
            assert body["meteredKwh"] == pytest.approx((e1 - e0) / 1000.0, abs=1e-4), body
            assert body["deviationKwh"] == pytest.approx(body["meteredKwh"] - body["positionKwh"], abs=2e-6)
            tender = tenders[body["tenderId"]]
            assert tender["intervalStart"] == start and tender["marketId"] == "RTM"
            assert body["priceUsdPerKwh"] == tender["price"]
            assert body["amountUsd"] == pytest.approx(body["deviationKwh"] * tender["price"], abs=0.005)
            settled += 1
    assert settled >= SITES * (HOURS * 12 - 4)  # all but the last intervals (settled after a delay)

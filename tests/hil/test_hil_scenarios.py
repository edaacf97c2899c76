"""Every shipped scenario against the real firmware (MicroPython unix port, bench board) through a
real pty and a real Mosquitto; and a deliberately broken build that the bench must catch."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tendril_transactive.hil.record import FAIL, PASS, RunRecord
from tendril_transactive.hil.report import write_report
from tendril_transactive.hil.runner import RunOptions, run_scenario
from tendril_transactive.hil.scenario import SCENARIO_DIR, load_scenario, shipped_scenarios
from tendril_transactive.hil.servers import Mosquitto

pytestmark = pytest.mark.hil

SCENARIOS = shipped_scenarios()


def _run(name: str, tmp_path: Path, mosquitto: Mosquitto, **overrides: object) -> RunRecord:
    scenario = load_scenario(SCENARIO_DIR / f"{name}.yaml")
    options = RunOptions(device="unix", broker_port=mosquitto.port, config_overrides=dict(overrides))
    return run_scenario(scenario, tmp_path / name, options)


def _explain(record: RunRecord, out: Path) -> str:
    log = (out / "device.log").read_text(errors="replace")[-3000:] if (out / "device.log").exists() else ""
    return "\n".join(record.failures()) + f"\ndevice log tail:\n{log}"


def test_every_issue_scenario_is_shipped() -> None:
    names = {path.stem for path in SCENARIOS}
    assert {"relay_obeys_command", "anti_short_cycle", "safe_default_after_expiry", "store_and_forward",
            "watchdog_recovers", "tender_to_relay_latency"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_passes_on_unix_port(path: Path, tmp_path: Path, mosquitto: Mosquitto, micropython: str) -> None:
    record = _run(path.stem, tmp_path, mosquitto)
    out = tmp_path / path.stem
    assert record.outcome == PASS, _explain(record, out)
    doc = json.loads((out / "record.json").read_text())
    assert doc["outcome"] == PASS and doc["device_id"] == record.device_id and doc["fw_version"]
    assert all(m["outcome"] == PASS for s in doc["steps"] for m in s["measurements"])
    assert doc["trace"], "the plant was never stepped"
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert int(suite.get("tests", "0")) == len(doc["steps"])
    if path.stem == "tender_to_relay_latency":
        p50, p99 = record.measurement("latency_p50_s"), record.measurement("latency_p99_s")
        assert record.measurement("commands").value == 100
        loop = next(s for s in doc["steps"] if s["action"] == "tender_loop")
        assert loop["details"]["sources"] == {"plan": 100}  # every command a SiteAgent's planned decision
        assert p50.value is not None and p99.value is not None and p50.value <= p99.value
        print(f"\ntender -> relay switch latency over 100 commands: p50 {p50.value * 1000:.1f} ms, "
              f"p99 {p99.value * 1000:.1f} ms")
    html = write_report(out / "record.json").read_text()
    assert "data:image/png;base64," in html and record.scenario in html


def test_broken_build_without_min_off_time_fails_anti_short_cycle(
        tmp_path: Path, mosquitto: Mosquitto, micropython: str) -> None:
    # A test-only configuration of the same firmware: minimum off time disabled.
    record = _run("anti_short_cycle", tmp_path, mosquitto, min_off_s=0)
    assert record.outcome == FAIL, "the bench passed a build that short-cycles the load"
    off = record.measurement("shortest_off_s")
    assert off.outcome == FAIL and off.low == 300 and off.value is not None and off.value < 300
    doc = json.loads((tmp_path / "anti_short_cycle" / "record.json").read_text())
    failed = [m for s in doc["steps"] for m in s["measurements"] if m["outcome"] == FAIL]
    assert [(m["name"], m["low"], m["unit"]) for m in failed] == [("shortest_off_s", 300, "s")]
    failure = ET.parse(tmp_path / "anti_short_cycle" / "junit.xml").getroot().find("testcase/failure")
    assert failure is not None and "shortest_off_s" in failure.get("message", "")
    assert "[300, +inf] s" in failure.get("message", "")


def test_store_and_forward_in_an_esp32_sized_heap(
    tmp_path: Path, mosquitto: Mosquitto, micropython: str, mpy_cross: str
) -> None:
    """The firmware precompiled (as deployed) in a 56K-word heap still delivers every seq of a 10-minute cut.

    56wK, not 52wK: the contract gained the market's and agent's schemas (transaction, confirm);
    the device drops them after boot (tendril_wire.trim_for_device, below the old steady state), but
    the bench board's link buffers no longer fit at 52wK. Frozen modules / ROMFS are the way back
    (firmware/README.md, Memory)."""
    scenario = load_scenario(SCENARIO_DIR / "store_and_forward.yaml")
    options = RunOptions(device="unix", broker_port=mosquitto.port, heapsize="56wK")
    record = run_scenario(scenario, tmp_path / "small-heap", options)
    assert record.outcome == PASS, _explain(record, tmp_path / "small-heap")
    assert record.measurement("missing_seqs").value == 0

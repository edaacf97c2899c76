"""Scenario files, records and the command line: bad input is refused with the file and the reason,
records judge limits as declared, the report renders from a record."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tendril_transactive.hil import cli as hil_cli
from tendril_transactive.hil.record import FAIL, PASS, Measurement, MeasurementSpec, RunRecord, StepRecord
from tendril_transactive.hil.report import write_report
from tendril_transactive.hil.scenario import ScenarioError, load_scenario, shipped_scenarios

pytestmark = pytest.mark.hil

GOOD = """
name: t
clock_speed: 10
device: {min_off_s: 60}
plant: {load: ev}
steps:
  - do: command
    with: {relay: 1}
    measure: [{name: accepted, low: 1, high: 1}]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_shipped_scenarios_all_load() -> None:
    for path in shipped_scenarios():
        scenario = load_scenario(path)
        assert scenario.steps and scenario.clock_speed > 0


@pytest.mark.parametrize(("edit", "reason"), [
    (("do: command", "do: comand"), "unknown action 'comand'"),
    (("min_off_s", "broker_port"), "not firmware settings"),
    (("load: ev", "load: boiler"), "plant load must be one of"),
    (("high: 1}", "high: 1, hgh: 2}"), "unknown measurement keys"),
    (("clock_speed: 10", "clock_speed: 0"), "clock_speed must be a number > 0"),
    (("low: 1,", "low: .nan,"), "low must be a finite number"),
])
def test_bad_scenarios_are_refused_with_file_and_reason(tmp_path: Path, edit: tuple[str, str], reason: str) -> None:
    load_scenario(_write(tmp_path, GOOD))
    path = _write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ScenarioError, match=reason) as err:
        load_scenario(path)
    assert str(path) in str(err.value)


def test_duplicate_measurement_names_are_refused(tmp_path: Path) -> None:
    text = GOOD + "  - do: command\n    with: {relay: 0}\n    measure: [{name: accepted}]\n"
    with pytest.raises(ScenarioError, match="unique"):
        load_scenario(_write(tmp_path, text))


def test_limits_are_inclusive_and_unmeasured_fails() -> None:
    spec = MeasurementSpec("x", "s", low=1.0, high=2.0)
    assert [spec.outcome(v) for v in (1.0, 2.0, 0.999, 2.001, None, float("nan"))] == [
        PASS, PASS, FAIL, FAIL, FAIL, FAIL]
    assert Measurement.of(spec, float("inf")).value is None


def _record(tmp_path: Path) -> Path:
    rec = RunRecord("demo", "a demo", "unix:x", "dut-1", "1.2.3", 1.7e9, outcome=FAIL, duration_s=1.0)
    step = StepRecord("burst", "burst", {}, outcome=FAIL, duration_s=0.5)
    step.measurements.append(Measurement.of(MeasurementSpec("shortest_off_s", "s", low=300), 20.0))
    rec.steps.append(step)
    rec.trace = [{"t": 1.7e9 + 60 * i, "t_in_c": 19 + i / 10, "relay": i % 2, "power_w": 500.0,
                  "ev_stored_kwh": 0.0, "price": 0.1 * (i % 3) if i > 2 else None} for i in range(10)]
    path = rec.write_json(tmp_path / "record.json")
    rec.write_junit(tmp_path / "junit.xml")
    return path


def test_record_json_junit_and_report(tmp_path: Path) -> None:
    path = _record(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["steps"][0]["measurements"][0]["outcome"] == FAIL
    failure = ET.parse(tmp_path / "junit.xml").getroot().find("testcase/failure")
    assert failure is not None and "shortest_off_s = 20.0 s, limits [300, +inf] s: FAIL" in failure.get("message", "")
    html = write_report(path).read_text()
    assert "data:image/png;base64," in html and "shortest_off_s" in html and "1.2.3" in html


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tendril")
    hil_cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_cli_report_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _record(tmp_path)
    assert _cli("hil", "report", str(path), "--out", str(tmp_path / "r.html")) == 0
    assert (tmp_path / "r.html").exists()
    (tmp_path / "junk.json").write_text("{}")
    assert _cli("hil", "report", str(tmp_path / "junk.json")) == 2
    assert "not a HIL record" in capsys.readouterr().err
    assert _cli("hil", "run", "no_such_scenario") == 2
    assert "no scenario file" in capsys.readouterr().err
    assert _cli("hil", "run", "anti_short_cycle", "--device", "usb") == 2
    assert "serial:/dev/ttyUSBn" in capsys.readouterr().err
    assert _cli("hil", "run", "anti_short_cycle", "--set", "min_off_s") == 2
    assert "KEY=JSON" in capsys.readouterr().err
    assert _cli("hil", "run", "x", "--list") == 0
    assert "anti_short_cycle" in capsys.readouterr().out

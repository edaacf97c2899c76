"""`tendril hil run` from the command line: --list on its own, a missing scenario named with the
choices, and records kept per run, so a run that never reaches its device neither replaces the
last passing record nor claims a firmware version for a board it never talked to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tendril_transactive.cloud.cli.main import main
from tendril_transactive.hil.record import ERROR, PASS, new_run_dir
from tendril_transactive.hil.scenario import shipped_scenarios
from tendril_transactive.hil.servers import Mosquitto

pytestmark = pytest.mark.hil

# Short on purpose: the test needs a real passing record, not a long one.
SCENARIO = """
name: contact
description: the device comes online and obeys one signed command
clock_speed: 200
plant_step_s: 60
device: {type: relay, min_on_s: 0, min_off_s: 0}
plant: {load: hvac}
steps:
  - do: wait_online
    measure: [{name: online_s, unit: s, high: 15}]
  - do: command
    with: {relay: 1, ttl_s: 600}
    measure: [{name: accepted, low: 1, high: 1}, {name: relay, low: 1, high: 1}]
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_list_alone_lists_the_shipped_scenarios() -> None:
    proc = subprocess.run([sys.executable, "-m", "tendril_transactive.cloud.cli.main", "hil", "run", "--list"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [p.stem for p in shipped_scenarios()]
    assert "anti_short_cycle" in proc.stdout.split()


def test_run_without_a_scenario_names_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hil", "run"]) == 2
    err = capsys.readouterr().err
    assert "SCENARIO" in err and "Traceback" not in err
    assert all(p.stem in err for p in shipped_scenarios())


def test_run_help_says_where_records_go(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["hil", "run", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines wherever it likes
    for phrase in ("OUT/SCENARIO/<UTC start time>", "default OUT: hil-runs", "OUT/SCENARIO/latest",
                   "last-pass", "no run overwrites", "record.json"):
        assert phrase in text, phrase


def test_runs_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "s", now=1_767_225_600.0)
    second = new_run_dir(tmp_path, "s", now=1_767_225_600.0)
    assert first.name == "20260101T000000Z" and second.name == "20260101T000000Z-2"
    assert first.is_dir() and second.is_dir()


def _assert_not_contacted(run_dir: Path, device: str) -> None:
    doc = json.loads((run_dir / "record.json").read_text())
    assert doc["outcome"] == ERROR and doc["device"] == device
    assert doc["fw_version"] is None and doc["device_id"] is None
    html = (run_dir / "report.html").read_text()
    assert "<tr><th>firmware</th><td>not contacted</td></tr>" in html
    props = {p.get("name"): p.get("value") for p in ET.parse(run_dir / "junit.xml").getroot().iter("property")}
    assert props["fw_version"] == "not contacted" and props["device_id"] == "not contacted"


def test_a_run_that_cannot_reach_its_device_keeps_the_last_pass_and_claims_no_firmware(
        tmp_path: Path, mosquitto: Mosquitto, micropython: str, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "contact.yaml"
    scenario.write_text(SCENARIO)
    root = tmp_path / "runs"
    common = [str(scenario), "--out", str(root), "--broker-port", str(mosquitto.port)]

    assert main(["hil", "run", *common]) == 0, capsys.readouterr()
    capsys.readouterr()
    passed = (root / "contact" / "last-pass").resolve()
    assert (root / "contact" / "latest").resolve() == passed
    before = _files(passed)
    good = json.loads(before["record.json"])
    assert good["outcome"] == PASS and good["fw_version"]  # the unix firmware did report its version

    device = f"serial:/dev/tendril-no-such-tty-{os.getpid()}"
    assert main(["hil", "run", *common, "--device", device]) == 3
    out, err = capsys.readouterr()
    assert f"did not reach the device {device}" in err and "could not open port" in err, err
    assert "Traceback" not in out + err
    assert f"fw {good['fw_version']}" not in out and "fw not contacted" in out, out

    assert _files(passed) == before, "the failed run wrote over the passing record"
    assert (root / "contact" / "last-pass").resolve() == passed
    failed = (root / "contact" / "latest").resolve()
    assert failed != passed and failed.parent == passed.parent
    assert sorted(p.name for p in passed.parent.iterdir()) == sorted([passed.name, failed.name, "latest", "last-pass"])
    _assert_not_contacted(failed, device)


def test_a_port_that_opens_but_never_answers_is_not_contacted(
        tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    # A real pty with nothing behind it: the port opens, so only the device's reply counts as contact.
    master, slave = os.openpty()
    try:
        device = f"serial:{os.ttyname(slave)}"
        code = main(["hil", "run", "relay_obeys_command", "--device", device, "--out", str(tmp_path),
                     "--broker-port", str(mosquitto.port)])
    finally:
        os.close(slave)
        os.close(master)
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert f"did not reach the device {device}" in err and "no reply to 'get'" in err, err
    assert not (tmp_path / "relay_obeys_command" / "last-pass").exists()
    _assert_not_contacted((tmp_path / "relay_obeys_command" / "latest").resolve(), device)

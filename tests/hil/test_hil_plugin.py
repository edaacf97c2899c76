"""The pytest plugin (hil.pytest_plugin) runs a scenario file as a test and fails it naming the
measurement and its limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tendril_transactive.hil.scenario import SCENARIO_DIR

pytestmark = pytest.mark.hil


def test_plugin_fails_a_scenario_outside_its_limits_and_names_the_measurement(
        tmp_path: Path, micropython: str, mosquitto_binary: str) -> None:
    text = (SCENARIO_DIR / "safe_default_after_expiry.yaml").read_text()
    impossible = text.replace("{name: fallback_after_expiry_s, unit: s, low: 0, high: 60}",
                              "{name: fallback_after_expiry_s, unit: s, low: -2, high: -1}")
    assert impossible != text
    (tmp_path / "impossible.yaml").write_text(impossible)
    (tmp_path / "not_a_scenario.yaml").write_text("just: data\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tendril_transactive.hil.pytest_plugin", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--hil-out", str(tmp_path / "runs"), str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout and "passed" not in proc.stdout, proc.stdout
    assert "fallback_after_expiry_s" in proc.stdout and "limits [-2, -1] s: FAIL" in proc.stdout, proc.stdout
    runs = tmp_path / "runs" / "safe_default_after_expiry"
    assert (runs / "latest" / "record.json").exists() and not (runs / "last-pass").exists()

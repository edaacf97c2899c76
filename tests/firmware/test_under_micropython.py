"""Run every shared firmware test module under the real MicroPython unix port and check
each test passed there too, by name (pytest runs the same modules under CPython)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tendril_transactive.edge.resources import FIRMWARE_DIR

pytestmark = pytest.mark.firmware

HERE = Path(__file__).resolve().parent
MODULES = sorted(path.stem for path in HERE.glob("test_fw_*.py"))
Results = dict[tuple[str, str], dict[str, Any]]


def _test_names(module: str) -> list[str]:
    tree = ast.parse((HERE / f"{module}.py").read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


CASES = [(module, name) for module in MODULES for name in _test_names(module)]


def run_under_micropython(binary: str) -> Results:
    env = dict(os.environ, MICROPYPATH=f".frozen:{FIRMWARE_DIR / 'lib'}:{HERE}")
    try:
        proc = subprocess.run(
            [binary, str(HERE / "mp_runner.py"), *MODULES],
            env=env, cwd=HERE, capture_output=True, text=True, timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"firmware tests under MicroPython did not finish in 300 s; output:\n{exc.stdout!r}")
    results: Results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("TENDRIL-TEST "):
            record = json.loads(line.removeprefix("TENDRIL-TEST "))
            results[(record["module"], record["test"])] = record
    if not results:
        pytest.fail(f"no results from micropython (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return results


@pytest.fixture(scope="module")
def mp_results(micropython: str) -> Results:
    return run_under_micropython(micropython)


def test_every_module_was_found() -> None:
    expected = {"test_fw_packets", "test_fw_meter", "test_fw_relay", "test_fw_outbox", "test_fw_node",
                "test_fw_mqtt_client", "test_fw_store", "test_fw_health", "test_fw_uplink", "test_fw_wire_contract",
                "test_fw_bench_link", "test_fw_esp32_bench", "test_fw_wifi"}
    assert expected <= set(MODULES)


@pytest.mark.parametrize(("module", "name"), CASES, ids=[f"{m}::{n}" for m, n in CASES])
def test_passes_under_micropython(mp_results: Results, module: str, name: str) -> None:
    imported = mp_results.get((module, "<import>"))
    assert imported is None, f"{module} failed to import under MicroPython:\n{imported and imported['error']}"
    result = mp_results.get((module, name))
    assert result is not None, f"{module}::{name} was not run under MicroPython"
    assert result["ok"], f"{module}::{name} failed under MicroPython:\n{result['error']}"

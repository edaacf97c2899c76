"""A pytest plugin that runs HIL scenario files as tests: each `*.yaml` scenario collected is one
test item, which passes when every measurement is within its limits and otherwise fails naming
them. Records land in --hil-out, a folder per run as `tendril hil run` keeps them
(--hil-out/SCENARIO/<UTC start time>/, with `latest` and `last-pass` links beside).

    pytest -p hil.pytest_plugin hil/scenarios/                          # unix-port firmware
    pytest -p hil.pytest_plugin my_scenarios/ --hil-device serial:/dev/ttyUSB0 \\
        --hil-key-hex $KEY --hil-power-cycle-cmd 'uhubctl -l 1-1 -p 2 -a cycle'

Only files whose top level has `steps:` are taken, so other YAML next to them is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tendril_transactive.hil.record import PASS, new_run_dir, point_to
from tendril_transactive.hil.runner import RunOptions, run_scenario
from tendril_transactive.hil.scenario import ScenarioError, load_scenario


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop scenarios")
    group.addoption("--hil-device", default="unix", help="'unix' (default) or 'serial:/dev/ttyUSB0'")
    group.addoption("--hil-baud", type=int, default=115200, help="serial baud rate")
    group.addoption("--hil-key-hex", default=None, help="a real board's command-signing key (hex)")
    group.addoption("--hil-power-cycle-cmd", default=None, help="command that power-cycles a real board")
    group.addoption("--hil-out", default="hil-runs",
                    help="root folder for records: HIL_OUT/SCENARIO/<UTC start time>/ per run (default hil-runs)")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    try:
        doc = yaml.safe_load(file_path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict) or "steps" not in doc:
        return None
    collected: pytest.Collector = ScenarioFile.from_parent(parent, path=file_path)
    return collected


class ScenarioFile(pytest.File):
    def collect(self) -> list[pytest.Item]:
        return [ScenarioItem.from_parent(self, name=self.path.stem)]


class ScenarioFailed(AssertionError):
    pass


class ScenarioItem(pytest.Item):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(pytest.mark.hil)

    def runtest(self) -> None:
        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:
            raise ScenarioFailed(str(exc)) from None
        opt = self.config.getoption
        key_hex = opt("--hil-key-hex")
        options = RunOptions(device=opt("--hil-device"), baud=opt("--hil-baud"),
                             power_cycle_cmd=opt("--hil-power-cycle-cmd"),
                             key=bytes.fromhex(key_hex) if key_hex else None)
        out = new_run_dir(Path(opt("--hil-out")), scenario.name)
        record = run_scenario(scenario, out, options)
        point_to(out, record.outcome)
        self.user_properties.append(("record", str(out / "record.json")))
        if record.outcome != PASS:
            raise ScenarioFailed("\n".join([f"{scenario.name}: {record.outcome}", *record.failures()]))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"hil scenario {self.name}"

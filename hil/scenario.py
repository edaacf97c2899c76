"""Declarative HIL scenarios (YAML): the device's configuration, the house, and steps with
measurements and limits. Checked fully at load time, so a typo fails before any device starts.

    name: relay_obeys_command
    description: ...
    clock_speed: 50            # device seconds per real second
    plant_step_s: 30           # device seconds between plant updates while advancing
    device: {min_off_s: 0}     # FirmwareConfig fields (the bench fills site, broker, key, files)
    plant: {load: hvac, t_in_c: 19, t_out_c: 5}
    steps:
      - do: command
        name: switch on        # optional, defaults to the action
        with: {relay: 1, ttl_s: 600}
        measure:
          - {name: ack_latency, unit: s, high: 2.0}
          - {name: ack_latency_again, of: ack_latency, unit: s}   # `of`: the step value judged
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tendril_transactive.edge.firmware_process import FirmwareConfig
from tendril_transactive.hil.plant import PlantConfig
from tendril_transactive.hil.record import MeasurementSpec

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
BENCH_OWNED = {"site", "device", "type", "broker_host", "broker_port", "key", "relay_file", "power_file",
               "state_dir", "override_file"}
DEVICE_FIELDS = {f.name for f in dataclasses.fields(FirmwareConfig)} - BENCH_OWNED | {"type"}


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the problem."""


@dataclass(frozen=True)
class Step:
    name: str
    action: str
    args: dict[str, Any]
    measure: tuple[MeasurementSpec, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: Path
    clock_speed: float
    plant_step_s: float
    device: dict[str, Any]
    plant: PlantConfig
    steps: tuple[Step, ...]


def _spec(where: str, doc: Any) -> MeasurementSpec:
    if not isinstance(doc, dict) or "name" not in doc:
        raise ScenarioError(f"{where}: a measurement needs at least a name, got {doc!r}")
    unknown = set(doc) - {"name", "unit", "low", "high", "of"}
    if unknown:
        raise ScenarioError(f"{where}: unknown measurement keys {sorted(unknown)}")
    for bound in ("low", "high"):
        value = doc.get(bound)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ScenarioError(f"{where}: {bound} must be a finite number, got {value!r}")
    of = doc.get("of")
    return MeasurementSpec(str(doc["name"]), str(doc.get("unit", "")), doc.get("low"), doc.get("high"),
                           None if of is None else str(of))


def _step(where: str, doc: Any, actions: set[str]) -> Step:
    if not isinstance(doc, dict) or "do" not in doc:
        raise ScenarioError(f"{where}: a step is a mapping with 'do', got {doc!r}")
    unknown = set(doc) - {"do", "name", "with", "measure"}
    if unknown:
        raise ScenarioError(f"{where}: unknown step keys {sorted(unknown)}")
    action = doc["do"]
    if action not in actions:
        raise ScenarioError(f"{where}: unknown action {action!r} (known: {', '.join(sorted(actions))})")
    args = doc.get("with") or {}
    if not isinstance(args, dict):
        raise ScenarioError(f"{where}: 'with' must be a mapping, got {args!r}")
    measure = doc.get("measure") or []
    if not isinstance(measure, list):
        raise ScenarioError(f"{where}: 'measure' must be a list")
    specs = tuple(_spec(f"{where} measure[{i}]", m) for i, m in enumerate(measure))
    return Step(str(doc.get("name", action)), str(action), dict(args), specs)


def load_scenario(path: Path) -> Scenario:
    from tendril_transactive.hil.steps import ACTIONS  # the actions are the scenario language's verbs

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"{path}: a scenario is a YAML mapping")
    unknown = set(doc) - {"name", "description", "clock_speed", "plant_step_s", "device", "plant", "steps"}
    if unknown:
        raise ScenarioError(f"{path}: unknown keys {sorted(unknown)}")
    device = doc.get("device") or {}
    if not isinstance(device, dict) or set(device) - DEVICE_FIELDS:
        bad = sorted(set(device) - DEVICE_FIELDS) if isinstance(device, dict) else device
        raise ScenarioError(f"{path}: device: not firmware settings the bench lets a scenario choose: {bad}")
    try:
        plant = PlantConfig.from_dict(doc.get("plant") or {})
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: plant: {exc}") from None
    speed = doc.get("clock_speed", 1.0)
    step_s = doc.get("plant_step_s", 60.0)
    for label, value in (("clock_speed", speed), ("plant_step_s", step_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ScenarioError(f"{path}: {label} must be a number > 0, got {value!r}")
    steps_doc = doc.get("steps")
    if not isinstance(steps_doc, list) or not steps_doc:
        raise ScenarioError(f"{path}: steps must be a non-empty list")
    steps = tuple(_step(f"{path}: steps[{i}]", s, set(ACTIONS)) for i, s in enumerate(steps_doc))
    names = [m.name for s in steps for m in s.measure]
    if len(names) != len(set(names)):
        raise ScenarioError(f"{path}: measurement names must be unique, got {names}")
    return Scenario(str(doc.get("name", path.stem)), str(doc.get("description", "")), path, float(speed),
                    float(step_s), dict(device), plant, steps)


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))

"""What a HIL run leaves behind: a JSON record (device, firmware, every step with its timing and
measurements, pass/fail against the limits, the plant's trace) and a JUnit XML for CI; and where
runs keep them: a folder per run, never reused, so a failed run cannot replace the evidence of
the last passing one.

    hil-runs/anti_short_cycle/20260101T120000Z/   record.json junit.xml report.html device.log
    hil-runs/anti_short_cycle/latest    -> 20260101T120000Z   the newest run, whatever its outcome
    hil-runs/anti_short_cycle/last-pass -> 20251231T090000Z   the newest run that passed
"""

from __future__ import annotations

import json
import math
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PASS = "PASS"
FAIL = "FAIL"
ERROR = "ERROR"
SKIPPED = "SKIPPED"
NOT_CONTACTED = "not contacted"  # shown for firmware and device id when the device never answered
LATEST = "latest"
LAST_PASS = "last-pass"


@dataclass(frozen=True)
class MeasurementSpec:
    """OpenHTF-style: a named value with a unit and optional inclusive limits."""

    name: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    of: str | None = None  # the step value judged, when it differs from the name (a step used twice)

    def outcome(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return FAIL
        if self.low is not None and value < self.low:
            return FAIL
        if self.high is not None and value > self.high:
            return FAIL
        return PASS

    def limits(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "+inf" if self.high is None else f"{self.high:g}"
        return f"[{low}, {high}] {self.unit}".strip()


@dataclass
class Measurement:
    name: str
    value: float | None
    unit: str
    low: float | None
    high: float | None
    outcome: str

    @classmethod
    def of(cls, spec: MeasurementSpec, value: float | None) -> Measurement:
        """Judge `value`; None or not finite means not measured (stored as null) and fails."""
        if value is not None and not math.isfinite(value):
            value = None
        return cls(spec.name, value, spec.unit, spec.low, spec.high, spec.outcome(value))

    def describe(self) -> str:
        spec = MeasurementSpec(self.name, self.unit, self.low, self.high)
        return f"{self.name} = {self.value} {self.unit}, limits {spec.limits()}: {self.outcome}"


@dataclass
class StepRecord:
    name: str
    action: str
    args: dict[str, Any]
    outcome: str = SKIPPED
    started: float = 0.0  # seconds since the run started (real)
    duration_s: float = 0.0
    device_time: float | None = None  # device clock when the step ended
    error: str | None = None
    measurements: list[Measurement] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # extra observations (not judged)


@dataclass
class RunRecord:
    scenario: str
    description: str
    device: str  # driver name, e.g. unix:pump-1 or serial:/dev/ttyUSB0
    # Both as the device reported them: None until it answers, so a run that never reached it
    # claims no firmware (the bench's own copy of the version says nothing about a real board).
    device_id: str | None
    fw_version: str | None
    started_unix: float
    outcome: str = ERROR
    duration_s: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)  # plant samples: t, t_in_c, relay, power_w, price
    link: dict[str, Any] = field(default_factory=dict)  # link counters, both sides
    error: str | None = None

    @property
    def contacted(self) -> bool:
        return self.fw_version is not None

    def fw_label(self) -> str:
        return self.fw_version if self.fw_version is not None else NOT_CONTACTED

    def measurements(self) -> list[Measurement]:
        return [m for step in self.steps for m in step.measurements]

    def measurement(self, name: str) -> Measurement:
        for m in self.measurements():
            if m.name == name:
                return m
        raise KeyError(f"no measurement {name!r} in the record of {self.scenario}")

    def failures(self) -> list[str]:
        """One line per failed measurement or step error, naming value and limits."""
        out = [f"{step.name}: {m.describe()}" for step in self.steps for m in step.measurements if m.outcome != PASS]
        out += [f"{step.name}: {step.outcome}: {step.error}" for step in self.steps if step.error]
        if self.error:
            out.append(f"run: {self.error}")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False, default=_finite))
        return path

    def write_junit(self, path: Path) -> Path:
        """One testsuite per run, one testcase per step; a failed measurement is a <failure>."""
        failures = sum(1 for s in self.steps if s.outcome == FAIL)
        errors = sum(1 for s in self.steps if s.outcome == ERROR)
        skipped = sum(1 for s in self.steps if s.outcome == SKIPPED)
        suite = ET.Element("testsuite", name=f"hil.{self.scenario}", tests=str(len(self.steps)),
                           failures=str(failures), errors=str(errors), skipped=str(skipped),
                           time=f"{self.duration_s:.3f}")
        props = ET.SubElement(suite, "properties")
        for key, value in (("device", self.device), ("device_id", self.device_id or NOT_CONTACTED),
                           ("fw_version", self.fw_label())):
            ET.SubElement(props, "property", name=key, value=value)
        for step in self.steps:
            case = ET.SubElement(suite, "testcase", classname=f"hil.{self.scenario}", name=step.name,
                                 time=f"{step.duration_s:.3f}")
            lines = [m.describe() for m in step.measurements]
            if step.outcome == FAIL:
                bad = [m.describe() for m in step.measurements if m.outcome != PASS]
                ET.SubElement(case, "failure", message="; ".join(bad)).text = "\n".join(lines)
            elif step.outcome == ERROR:
                ET.SubElement(case, "error", message=step.error or "error").text = step.error
            elif step.outcome == SKIPPED:
                ET.SubElement(case, "skipped", message="an earlier step failed")
            if lines:
                ET.SubElement(case, "system-out").text = "\n".join(lines)
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
        return path


def _finite(value: object) -> object:
    raise TypeError(f"not JSON serialisable: {value!r}")


def load_record(path: Path) -> dict[str, Any]:
    """A record as written by RunRecord.write_json; ValueError naming the file if it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable HIL record: {exc}") from None
    if not isinstance(doc, dict) or not {"scenario", "steps", "outcome", "trace"} <= set(doc):
        raise ValueError(f"{path}: not a HIL record (needs scenario, steps, outcome, trace)")
    return doc


def new_run_dir(root: Path, scenario: str, now: float | None = None) -> Path:
    """Create and return ROOT/SCENARIO/<UTC time, e.g. 20260101T120000Z>, a folder no earlier run
    used: a second run within the same second gets -2, -3, ... (mkdir is the lock, so two benches
    writing to one shared ROOT cannot pick the same folder)."""
    parent = Path(root) / scenario
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        run_dir = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise FileExistsError(f"{parent}: 999 runs started in the second {stamp}")  # an OSError: the CLI reports it


def point_to(run_dir: Path, outcome: str) -> None:
    """Move the scenario's `latest` link to this run, and `last-pass` too when it passed. The links
    are relative, so a copied or archived hil-runs/ still resolves; each is swapped in with a
    rename, so a reader never finds it missing."""
    names = [LATEST, LAST_PASS] if outcome == PASS else [LATEST]
    for name in names:
        link = run_dir.parent / name
        tmp = run_dir.parent / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)

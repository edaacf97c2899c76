"""Run one scenario against one device: set up the bench, run the steps in order, judge the
measurements, write the JSON record and JUnit XML. A step that raises is an ERROR and the steps
after it are SKIPPED; a measurement outside its limits FAILs its step but the run goes on, so
the record shows everything that was measured."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import secrets
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tendril_transactive.cloud.agent.dispatch import Dispatcher
from tendril_transactive.edge.clock import SimClock
from tendril_transactive.edge.firmware_process import FirmwareConfig
from tendril_transactive.hil import servers
from tendril_transactive.hil.bench import Bench
from tendril_transactive.hil.broker import BrokerSide
from tendril_transactive.hil.dut import DeviceUnderTest, SerialDriver, UnixPortDriver, parse_device
from tendril_transactive.hil.plant import HousePlant
from tendril_transactive.hil.record import ERROR, FAIL, PASS, SKIPPED, Measurement, RunRecord, StepRecord
from tendril_transactive.hil.scenario import Scenario, Step
from tendril_transactive.hil.steps import ACTIONS

SITE = "hil"
SIM_ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the device clock of every run starts here
BENCH_DEFAULTS: dict[str, Any] = {  # fast links for a fast clock; scenarios may override any
    "telemetry_s": 10.0, "state_s": 60.0, "keepalive_s": 4, "ack_timeout_s": 2.0, "reconnect_max_s": 1.0,
    "replay_per_s": 50.0, "type": "relay", "relay_load_w": 3000.0,
}


@dataclasses.dataclass(frozen=True)
class RunOptions:
    device: str = "unix"  # "unix" or "serial:/dev/ttyUSB0"
    baud: int = 115200
    power_cycle_cmd: str | None = None
    key: bytes | None = None  # the device's signing key (a real board's, provisioned); random for unix
    broker_host: str = servers.LOOPBACK
    broker_port: int | None = None  # None = start a private Mosquitto for the run
    config_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. a broken build
    heapsize: str | None = None  # unix device: MicroPython heap, e.g. "52wK" for an ESP32-sized one


def firmware_config(scenario: Scenario, device_id: str, port: int, key: bytes, workdir: Path,
                    overrides: dict[str, Any]) -> FirmwareConfig:
    doc = {**BENCH_DEFAULTS, **scenario.device, **overrides}
    kind = doc.pop("type")
    files: dict[str, Any] = {"relay_file": workdir / "relay.out"} if kind == "relay" else {
        "power_file": workdir / "power.in"}
    return FirmwareConfig(site=SITE, device=device_id, type=kind, broker_host=servers.LOOPBACK, broker_port=port,
                          key=key, **files, **doc)


@contextlib.contextmanager
def _broker(options: RunOptions, workdir: Path) -> Iterator[tuple[str, int]]:
    if options.broker_port is not None:
        yield options.broker_host, options.broker_port
        return
    (workdir / "mosquitto").mkdir()
    server = servers.start_mosquitto(workdir / "mosquitto")
    try:
        yield servers.LOOPBACK, server.port
    finally:
        server.stop()


def _make_dut(options: RunOptions, config: FirmwareConfig, workdir: Path, clock: SimClock) -> DeviceUnderTest:
    kind, port = parse_device(options.device)
    if kind == "serial":
        assert port is not None
        return SerialDriver(port, options.baud, options.power_cycle_cmd)
    # A small heap cannot compile the firmware's source at import: run it precompiled, as deployed.
    return UnixPortDriver(config, workdir / "dut", clock.env_value(), heapsize=options.heapsize,
                          precompiled=options.heapsize is not None)


def _clock(options: RunOptions, scenario: Scenario) -> SimClock:
    """The unix device shares a fast simulated clock; a real board keeps its own (NTP) time, so the
    bench runs at wall-clock speed for it and the scenario's clock_speed does not apply."""
    if parse_device(options.device)[0] == "serial":
        now = time.time()
        return SimClock(sim_origin=now, speed=1.0, real_origin=now)
    return SimClock(sim_origin=SIM_ORIGIN, speed=scenario.clock_speed)


def run_step(bench: Bench, step: Step, rec: StepRecord, t_run: float) -> None:
    rec.started = time.monotonic() - t_run
    t0 = time.monotonic()
    try:
        values = ACTIONS[step.action](bench, step.args, rec.details)
    except Exception as exc:  # a step that cannot finish is the device's or the bench's failure: record it
        rec.outcome = ERROR
        rec.error = f"{type(exc).__name__}: {exc}"
        rec.details["traceback"] = traceback.format_exc(limit=4)
        values = {}
    rec.duration_s = time.monotonic() - t0
    rec.device_time = bench.now()
    for spec in step.measure:
        rec.measurements.append(Measurement.of(spec, values.get(spec.of or spec.name)))
    rec.details["values"] = {k: v for k, v in values.items() if math.isfinite(v)}
    if rec.outcome != ERROR:
        rec.outcome = PASS if all(m.outcome == PASS for m in rec.measurements) else FAIL


def run_scenario(scenario: Scenario, out_dir: Path, options: RunOptions | None = None) -> RunRecord:
    """Run `scenario`; writes record.json and junit.xml into `out_dir` and returns the record. Files
    already in `out_dir` are overwritten: give each run its own (record.new_run_dir)."""
    options = options or RunOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tendril-hil-"))
    device_id = "dut-" + secrets.token_hex(3)
    record = RunRecord(scenario.name, scenario.description, options.device, None, None, time.time())
    record.steps = [StepRecord(s.name, s.action, s.args) for s in scenario.steps]
    t_run = time.monotonic()
    try:
        with _broker(options, workdir) as (host, port):
            key = options.key or secrets.token_bytes(32)
            config = firmware_config(scenario, device_id, port, key, workdir, options.config_overrides)
            clock = _clock(options, scenario)
            dut = _make_dut(options, config, workdir, clock)
            broker: BrokerSide | None = None
            try:
                dut.start()
                # The unix device boots now; a real board may have booted long ago (its boot event is gone).
                boot = dut.link.wait_event("boot", 15.0) if isinstance(dut, UnixPortDriver) else None
                ident = dut.link.get()  # whom the bench is really talking to
                site, device = str(ident.get("site", SITE)), str(ident.get("device", device_id))
                record.device_id, record.fw_version = device, str(ident.get("fw", "unreported by the device"))
                broker = BrokerSide(host, port, site, device)
                bench = Bench(dut, broker, HousePlant(scenario.plant, clock.now()), clock,
                              Dispatcher({(site, device): key}, grace_s=0.0), site, device,
                              scenario.plant_step_s, config.safe_default)
                if boot is not None:
                    bench.rebooted(boot, 0)
                _run_steps(bench, scenario, record, t_run)
                record.link = {"bench": dut.link.counters(), "device": dut.link.get().get("counters", {})}
                record.trace = [dataclasses.asdict(s) for s in bench.plant.samples]
            finally:
                (workdir / "device.log").write_text(dut.log_text())
                dut.stop()
                if broker is not None:
                    broker.close()
        record.outcome = PASS if all(s.outcome == PASS for s in record.steps) else FAIL
    except Exception as exc:
        record.outcome = ERROR
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.duration_s = time.monotonic() - t_run
        log = workdir / "device.log"
        if log.exists():
            shutil.copy(log, out_dir / "device.log")
        shutil.rmtree(workdir, ignore_errors=True)
        record.write_json(out_dir / "record.json")
        record.write_junit(out_dir / "junit.xml")
    return record


def _run_steps(bench: Bench, scenario: Scenario, record: RunRecord, t_run: float) -> None:
    for step, rec in zip(scenario.steps, record.steps, strict=True):
        run_step(bench, step, rec, t_run)
        if rec.outcome == ERROR:
            break  # the rest stay SKIPPED
    for rec in record.steps:
        if rec.outcome == SKIPPED and rec.error is None:
            rec.details.setdefault("why", "an earlier step could not finish")

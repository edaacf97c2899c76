"""`tendril hil run SCENARIO` and `tendril hil report RECORD`: the hardware-in-the-loop bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hil", help="hardware-in-the-loop bench: run scenarios against firmware, report runs",
                       description="Hold a firmware build against a simulated house over a serial link.")
    hsub = p.add_subparsers(dest="hil_command", metavar="ACTION")
    hsub.required = True

    run = hsub.add_parser("run", help="run one scenario (YAML) and write its record",
                          description="Run a scenario. Each run gets its own folder, OUT/SCENARIO/<UTC start time> "
                                      "(default OUT: hil-runs), holding record.json, junit.xml, report.html and "
                                      "device.log; no run overwrites another's. OUT/SCENARIO/latest links to the "
                                      "newest run, OUT/SCENARIO/last-pass to the newest that passed. "
                                      "Exit 0 if every measurement passed, 1 if any failed, 2 on bad input, "
                                      "3 if the run could not finish (e.g. the device could not be contacted; "
                                      "its record says so).")
    # Optional so that --list stands alone; _run insists on it otherwise.
    run.add_argument("scenario", nargs="?", default=None, metavar="SCENARIO",
                     help="scenario YAML file, or the name of a shipped one (see --list)")
    run.add_argument("--device", default="unix",
                     help="'unix' (MicroPython unix port over a pty, default) or 'serial:/dev/ttyUSB0'")
    run.add_argument("--baud", type=int, default=115200, help="serial baud rate (serial devices)")
    run.add_argument("--power-cycle-cmd", default=None,
                     help="command that power-cycles a real board, e.g. 'uhubctl -l 1-1 -p 2 -a cycle'")
    run.add_argument("--key-hex", default=None,
                     help="a real board's command-signing key (hex); the unix device gets a fresh one")
    run.add_argument("--broker-port", type=int, default=None,
                     help="use a broker already on 127.0.0.1:PORT (default: start a private Mosquitto)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                     help="override a firmware setting for this run, e.g. --set min_off_s=0 (a test-only build)")
    run.add_argument("--heapsize", default=None,
                     help="unix device: MicroPython heap, e.g. 52wK for an ESP32-sized heap (default: 2 MiB)")
    run.add_argument("--out", type=Path, default=Path("hil-runs"),
                     help="root folder for records; this run's go to OUT/SCENARIO/<UTC start time>/ "
                          "(default hil-runs)")
    run.add_argument("--list", action="store_true", help="list shipped scenarios and exit (no SCENARIO needed)")
    run.set_defaults(func=_run)

    rep = hsub.add_parser("report", help="render a run's record.json as HTML with a plot",
                          description="Write report.html (steps, measurements, plant temperature, relay, price).")
    rep.add_argument("record", type=Path, help="record.json written by 'tendril hil run'")
    rep.add_argument("--out", type=Path, default=None, help="HTML file to write (default: report.html beside it)")
    rep.set_defaults(func=_report)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=JSON, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"--set {key}: {raw!r} is not a JSON value") from None
    return out


def _scenario_path(name: str) -> Path:
    from tendril_transactive.hil.scenario import SCENARIO_DIR

    path = Path(name)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name}.yaml"
    if shipped.exists():
        return shipped
    raise ValueError(f"no scenario file {name!r} and no shipped scenario of that name (tendril hil run --list)")


def _run(args: argparse.Namespace) -> int:
    from tendril_transactive.hil.dut import parse_device
    from tendril_transactive.hil.record import ERROR, PASS, new_run_dir, point_to
    from tendril_transactive.hil.report import write_report
    from tendril_transactive.hil.runner import RunOptions, run_scenario
    from tendril_transactive.hil.scenario import ScenarioError, load_scenario, shipped_scenarios

    if args.list:
        for path in shipped_scenarios():
            print(path.stem)
        return 0
    if args.scenario is None:
        names = ", ".join(path.stem for path in shipped_scenarios())
        print(f"tendril hil run: name a SCENARIO: a YAML file or a shipped one ({names})", file=sys.stderr)
        return 2
    try:
        parse_device(args.device)
        scenario = load_scenario(_scenario_path(args.scenario))
        overrides = _overrides(args.set)
        key = bytes.fromhex(args.key_hex) if args.key_hex else None
    except (ValueError, ScenarioError) as exc:
        print(f"tendril hil run: {exc}", file=sys.stderr)
        return 2
    try:
        out = new_run_dir(args.out, scenario.name)
    except OSError as exc:
        print(f"tendril hil run: cannot create a folder for the run under {args.out}: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(device=args.device, baud=args.baud, power_cycle_cmd=args.power_cycle_cmd, key=key,
                         broker_port=args.broker_port, config_overrides=overrides, heapsize=args.heapsize)
    record = run_scenario(scenario, out, options)
    write_report(out / "record.json")
    point_to(out, record.outcome)
    print(f"{scenario.name}: {record.outcome} in {record.duration_s:.1f} s ({record.device}, fw {record.fw_label()})")
    for m in record.measurements():
        print(f"  {m.describe()}")
    for line in record.failures():
        print(f"  FAILED {line}")
    print(f"record: {out / 'record.json'}\njunit:  {out / 'junit.xml'}\nreport: {out / 'report.html'}")
    if record.outcome == ERROR:
        what = "the run could not finish" if record.contacted else f"the run did not reach the device {record.device}"
        print(f"tendril hil run: {what}: {record.error}", file=sys.stderr)
        return 3
    return 0 if record.outcome == PASS else 1


def _report(args: argparse.Namespace) -> int:
    from tendril_transactive.hil.report import write_report

    try:
        path = write_report(args.record, args.out)
    except ValueError as exc:
        print(f"tendril hil report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0

"""`tendril simulate`: argument parsing and the printed comparison; the work is in cloud.sim.run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tendril_transactive.cloud.cli.args import positive_int
from tendril_transactive.cloud.sim.run import SimConfig, simulate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = SimConfig()
    p = sub.add_parser(
        "simulate",
        help="simulate homes on real March 2024 prices and weather, with and without the optimizer",
        description=(
            "N simulated homes (heat pump, and some with pool pump, EV, PV, battery) for D days on the "
            "bundled CAISO prices and TMY3 weather: once as the devices run on their own (thermostat, pump "
            "timer, EV charging at plug-in), once with each home's agent (the core `tendril agent` runs) "
            "answering every tender, its commands executed by the firmware relay logic. Prints cost, "
            "shadow bill, peak kW and comfort for both."
        ),
    )
    p.add_argument("--sites", type=positive_int("--sites"), default=d.sites, help=f"homes (default {d.sites})")
    p.add_argument("--days", type=positive_int("--days"), default=d.days, help=f"days (default {d.days})")
    p.add_argument("--start", default=d.start, help=f"local start date in March 2024 (default {d.start})")
    p.add_argument("--workers", type=positive_int("--workers"), default=d.workers,
                   help=f"planning processes behind the agents' Planner (default {d.workers})")
    p.add_argument("--loss", type=float, default=d.loss,
                   help=f"share of commands/acks lost in transit, to exercise retries (default {d.loss})")
    p.add_argument("--json", type=Path, default=None, help="also write both columns to this JSON file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = SimConfig(sites=args.sites, days=args.days, start=args.start, workers=args.workers, loss=args.loss)
    print(f"tendril simulate: {cfg.sites} homes, {cfg.days} days from {cfg.start} (America/Los_Angeles)",
          flush=True)
    t0 = time.monotonic()
    try:
        result = simulate(cfg, progress=lambda line: print(line, flush=True))
    except ValueError as exc:
        print(f"tendril simulate: {exc}", file=sys.stderr)
        return 2
    print()
    print(result.render())
    print(f"wall time {time.monotonic() - t0:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"baseline": asdict(result.baseline), "optimized": asdict(result.optimized),
                                         "notes": result.notes}, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="tendril")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))

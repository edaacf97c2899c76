"""`tendril demo`: argument parsing and the printed result; the work is in cloud.demo.run."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from tendril_transactive.cloud.cli.args import positive_float, positive_int
from tendril_transactive.cloud.demo.run import DemoConfig, format_window, run_demo
from tendril_transactive.cloud.settings import ENV_INFLUX_TOKEN, ENV_INFLUX_URL


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="run the whole loop on a simulated fleet with real firmware, faster than real time",
        description=(
            "Simulated houses, real MicroPython firmware nodes (unix port), an embedded MQTT broker and "
            "store: CAISO prices -> tenders -> Pyomo/HiGHS schedule -> signed commands -> relays -> "
            "telemetry -> ingestion. Prints a summary and writes it to OUT/summary.json."
        ),
    )
    p.add_argument("--sites", type=positive_int("--sites"), default=d.sites, help=f"sites (default {d.sites})")
    p.add_argument("--hours", type=positive_float("--hours"), default=d.hours,
                   help=f"simulated hours (default {d.hours:g})")
    p.add_argument("--speed", type=positive_float("--speed"), default=d.speed,
                   help=f"simulated seconds per wall second (default {d.speed:g})")
    p.add_argument("--start", default=d.start,
                   help=f"local start date YYYY-MM-DD within March 2024 (default {d.start})")
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder, replaced each run (default {d.out})")
    p.add_argument("--broker", default=None, help="use this MQTT broker (mqtt://host:port) instead of the embedded one")
    p.add_argument("--influx-url", default=os.environ.get(ENV_INFLUX_URL),
                   help="write telemetry to this InfluxDB 2/3 URL instead of the embedded store "
                        f"(env {ENV_INFLUX_URL})")
    p.add_argument("--influx-token", default=os.environ.get(ENV_INFLUX_TOKEN, ""),
                   help=f"InfluxDB token (env {ENV_INFLUX_TOKEN})")
    p.add_argument("--influx-org", default=d.influx_org, help=f"InfluxDB org (default {d.influx_org})")
    p.add_argument("--influx-bucket", default=d.influx_bucket, help=f"InfluxDB bucket (default {d.influx_bucket})")
    p.add_argument("--no-progress", action="store_true",
                   help="print progress as plain lines instead of a bar (automatic when not on a terminal)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        sites=args.sites, hours=args.hours, speed=args.speed, start=args.start, out=args.out,
        broker=args.broker, influx_url=args.influx_url, influx_token=args.influx_token,
        influx_org=args.influx_org, influx_bucket=args.influx_bucket,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    try:
        window = format_window(cfg)
    except ValueError:
        print(f"tendril demo: --start must be YYYY-MM-DD, got {args.start!r}", file=sys.stderr)
        return 2
    print(f"tendril demo: {cfg.sites} sites, {window}, {cfg.speed:g}x real time", flush=True)
    try:
        summary = asyncio.run(run_demo(cfg))
    except ValueError as exc:
        print(f"tendril demo: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    written = [cfg.out / name for name in ("summary.json", "telemetry.lp", "report.html")]
    print("\nwritten: " + ", ".join(str(p) for p in written if p.exists()))
    return 0

"""`tendril ingest`: run the ingestion service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import urllib.parse
from pathlib import Path

from cloud.ingest import Ingestor
from cloud.store import EmbeddedStore, InfluxSink, Sink

log = logging.getLogger("tendril.ingest")

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_STORE_FILE = Path("tendril-data") / "telemetry.lp"
ENV_MQTT_PASSWORD = "TENDRIL_MQTT_PASSWORD"
ENV_INFLUX_URL = "TENDRIL_INFLUX_URL"
ENV_INFLUX_TOKEN = "TENDRIL_INFLUX_TOKEN"

_EPILOG = f"""\
Subscribes (QoS 1) to every device's telemetry, state, status and ack topics, validates
each message against the wire contract and writes it as line protocol. Invalid messages
are logged, counted and republished to the dead-letter topic with their reason.

Without --influx-url (or ${ENV_INFLUX_URL}) points go to an embedded store that appends
line protocol to --store-file; import it later with
  influx write --bucket BUCKET --precision ns --file {DEFAULT_STORE_FILE}

Secrets come from the environment so they stay out of the process list:
  {ENV_MQTT_PASSWORD}   MQTT password (or --password)
  {ENV_INFLUX_TOKEN}    InfluxDB API token (or --influx-token)

Examples:
  tendril ingest
  tendril ingest --broker mqtt://10.0.0.5:1883 --username ingest \\
      --influx-url http://127.0.0.1:8086 --influx-org tendril --influx-bucket telemetry
"""


class UsageError(ValueError):
    """A bad option value; the message says which and why."""


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` -> (host, port); port defaults to 1883."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mqtt":
        raise UsageError(f"--broker must look like mqtt://host:port (TLS is not supported yet), got {url!r}")
    if parts.username or parts.password:
        raise UsageError(
            f"put MQTT credentials in --username and ${ENV_MQTT_PASSWORD}, not in the URL: {url!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"--broker takes only host and port, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--broker has a bad port: {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"--broker has no host: {url!r}")
    return parts.hostname, port if port is not None else 1883


def check_http_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--influx-url must look like http://host:8086, got {url!r}")
    try:
        _ = parts.port
    except ValueError:
        raise UsageError(f"--influx-url has a bad port: {url!r}") from None
    return url


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="MQTT telemetry -> validated -> InfluxDB (or the embedded store)",
        description="Ingest device messages from an MQTT broker into a time-series store.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mqtt = p.add_argument_group("MQTT")
    mqtt.add_argument(
        "--broker",
        default=DEFAULT_BROKER,
        metavar="URL",
        help=f"broker as mqtt://host:port (default {DEFAULT_BROKER})",
    )
    mqtt.add_argument("--username", help="MQTT user name")
    mqtt.add_argument("--password", help=f"MQTT password (prefer ${ENV_MQTT_PASSWORD})")
    mqtt.add_argument(
        "--client-id",
        default="tendril-ingest",
        help="MQTT client id; the broker keeps its session across reconnects (default %(default)s)",
    )
    influx = p.add_argument_group("store")
    influx.add_argument(
        "--influx-url",
        metavar="URL",
        help=f"InfluxDB 2/3 URL (env {ENV_INFLUX_URL}); absent: the embedded store",
    )
    influx.add_argument("--influx-token", help=f"InfluxDB API token (prefer ${ENV_INFLUX_TOKEN})")
    influx.add_argument("--influx-org", default="tendril", help="InfluxDB organization (default %(default)s)")
    influx.add_argument("--influx-bucket", default="tendril", help="InfluxDB bucket (default %(default)s)")
    influx.add_argument(
        "--store-file",
        type=Path,
        default=DEFAULT_STORE_FILE,
        metavar="PATH",
        help="embedded store: line-protocol file to append to (default %(default)s)",
    )
    tuning = p.add_argument_group("tuning")
    tuning.add_argument(
        "--batch-max",
        type=_positive_int,
        default=500,
        help="write as soon as this many points wait (default %(default)s)",
    )
    tuning.add_argument(
        "--flush-interval",
        type=_positive_float,
        default=0.1,
        metavar="SECONDS",
        help="write waiting points at least this often (default %(default)s)",
    )
    tuning.add_argument(
        "--stats-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="log throughput this often (default %(default)s)",
    )
    p.set_defaults(func=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    """Handler for `tendril ingest`; returns the process exit code."""
    try:
        host, port = parse_broker_url(args.broker)
        influx_url = args.influx_url or os.environ.get(ENV_INFLUX_URL)
        if influx_url:
            check_http_url(influx_url)
    except UsageError as exc:
        print(f"tendril ingest: error: {exc}", file=sys.stderr)
        return 2
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # progress lines are this command's output
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    sink: Sink
    if influx_url:
        token = args.influx_token or os.environ.get(ENV_INFLUX_TOKEN)
        sink = InfluxSink(influx_url, token, args.influx_org, args.influx_bucket)
        where = f"{influx_url} org={args.influx_org} bucket={args.influx_bucket}"
    else:
        # Nobody queries this process: keep the file only, so memory stays flat.
        sink = EmbeddedStore(args.store_file, memory=False)
        where = f"embedded store, appending to {args.store_file}"
    ingestor = Ingestor(
        host,
        port,
        sink,
        client_id=args.client_id,
        username=args.username,
        password=args.password or os.environ.get(ENV_MQTT_PASSWORD),
        batch_max=args.batch_max,
        flush_interval_s=args.flush_interval,
    )
    log.info("ingesting from mqtt://%s:%d into %s", host, port, where)
    asyncio.run(_serve(ingestor, sink, args.stats_interval))
    return 0


async def _serve(ingestor: Ingestor, sink: Sink, stats_interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
            loop.add_signal_handler(sig, stop.set)
    reporter = asyncio.create_task(_report(ingestor, stop, stats_interval))
    try:
        await ingestor.run(stop)
    finally:
        stop.set()
        await reporter
        await sink.close()
    stats = ingestor.stats
    log.info(
        "stopped: %d received, %d written, %d rejected %s, %d lost to store errors",
        stats.received,
        stats.written,
        sum(stats.rejected.values()),
        dict(stats.rejected),
        stats.lost,
    )


async def _report(ingestor: Ingestor, stop: asyncio.Event, interval: float) -> None:
    last_received, last_t = 0, time.monotonic()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        now = time.monotonic()
        stats = ingestor.stats
        rate = (stats.received - last_received) / (now - last_t)
        last_received, last_t = stats.received, now
        log.info(
            "%.0f msg/s; %d received, %d written, %d rejected, %d lost; broker %s",
            rate,
            stats.received,
            stats.written,
            sum(stats.rejected.values()),
            stats.lost,
            "connected" if ingestor.ready.is_set() else "DISCONNECTED",
        )

"""`tendril ingest`: run the ingestion service (one process, or N workers) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tendril_transactive.cloud.cli.service_log import progress_logging
from tendril_transactive.cloud.devices.registry import RegistryError
from tendril_transactive.cloud.ingest.known_devices import KnownDevices
from tendril_transactive.cloud.settings import (
    DEFAULT_BROKER,
    DEFAULT_DATA_DIR,
    DEFAULT_REGISTRY,
    DEFAULT_SHARE_GROUP,
    DEFAULT_STORE_FILE,
    ENV_INFLUX_TOKEN,
    ENV_INFLUX_URL,
    ENV_MQTT_PASSWORD,
    ENV_REGISTRY,
    UsageError,
    add_tls_options,
    broker_tls,
    check_http_url,
    clock_from_env,
    parse_broker,
    tls_args,
)

log = logging.getLogger("tendril.ingest")

DEFAULT_STATE_DIR = DEFAULT_DATA_DIR / "ingest"

_EPILOG = f"""\
Subscribes (QoS 1) to every device's telemetry, state, status and ack topics, validates
each message against the wire contract and writes it as line protocol. A message is
acknowledged to the broker only once it is in the store or in the on-disk spool
(--state-dir), so a crash or a store outage loses nothing; duplicates (QoS 1 redelivery,
replayed backlog) are dropped by a per-device sequence window. Invalid messages and messages
from unregistered devices are logged, counted and republished to the dead-letter topic.

Devices: only those in the registry (`tendril device add`, folder --registry or
${ENV_REGISTRY}) are accepted; the registry is re-read when it changes.

Scale-out: --workers N starts N processes in the MQTT shared subscription
$share/{DEFAULT_SHARE_GROUP}/...; several hosts can join the same group with --share-group.
Starting with fewer workers than last time (or as one process) first drains and removes the
old workers' broker sessions and spools, so nothing stays stranded. See docs/ingest.md.

Without --influx-url (or ${ENV_INFLUX_URL}) points go to an embedded store that appends
line protocol to --store-file; import it later with
  influx write --bucket BUCKET --precision ns --file {DEFAULT_STORE_FILE}

Secrets come from the environment so they stay out of the process list:
  {ENV_MQTT_PASSWORD}   MQTT password (or --password)
  {ENV_INFLUX_TOKEN}    InfluxDB API token (or --influx-token)

Examples:
  tendril ingest --registry tendril-registry
  tendril ingest --workers 2 --broker mqtt://10.0.0.5:1883 --username ingest \\
      --influx-url http://127.0.0.1:8086 --influx-org tendril --influx-bucket telemetry
"""


def check_share_group(name: str) -> str:
    if not name or any(ch in name for ch in "/+#") or len(name) > 64:
        raise argparse.ArgumentTypeError(f"a share group is 1..64 characters without / + #, got {name!r}")
    return name


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


# The oldest reading that can legitimately arrive: the firmware's offline backlog (queue_max 2048
# at telemetry_s 10 = 20,480 s) delivered after the broker bridged an ingest outage of the
# mosquitto-config default --outage-minutes (60), with margin. Older is replayed or forged history
# (docs/security.md); `--max-age 0` lets an operator load history on purpose.
DEFAULT_MAX_AGE_S = 28_800.0


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
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
    mqtt.add_argument("--broker", default=DEFAULT_BROKER, metavar="URL",
                      help=f"broker as mqtt://host:port or mqtts://host:port (TLS) (default {DEFAULT_BROKER})")
    add_tls_options(mqtt)
    mqtt.add_argument("--username", help="MQTT user name")
    mqtt.add_argument("--password", help=f"MQTT password (prefer ${ENV_MQTT_PASSWORD})")
    mqtt.add_argument("--client-id", default="tendril-ingest",
                      help="MQTT client id (worker i of N adds -i); the broker keeps its session "
                           "across reconnects (default %(default)s)")
    mqtt.add_argument("--mqtt-version", choices=("auto", "5", "3.1.1"), default="auto",
                      help="MQTT protocol: auto tries 5 and falls back to 3.1.1 (default %(default)s)")
    influx = p.add_argument_group("store")
    influx.add_argument("--influx-url", metavar="URL",
                        help=f"InfluxDB 2/3 URL (env {ENV_INFLUX_URL}); absent: the embedded store")
    influx.add_argument("--influx-token", help=f"InfluxDB API token (prefer ${ENV_INFLUX_TOKEN})")
    influx.add_argument("--influx-org", default="tendril", help="InfluxDB organization (default %(default)s)")
    influx.add_argument("--influx-bucket", default="tendril", help="InfluxDB bucket (default %(default)s)")
    influx.add_argument("--store-file", type=Path, default=DEFAULT_STORE_FILE, metavar="PATH",
                        help="embedded store: line-protocol file to append to (default %(default)s)")
    devices = p.add_argument_group("devices")
    devices.add_argument("--registry", type=Path, metavar="DIR",
                         help=f"device registry folder (env {ENV_REGISTRY}, default {DEFAULT_REGISTRY})")
    devices.add_argument("--accept-any-device", action="store_true",
                         help="accept every well-formed device id, registered or not (development only)")
    durable = p.add_argument_group("durability")
    durable.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                         help="outage spool and dedup window, one folder per worker (default %(default)s)")
    durable.add_argument("--spool-max-mb", type=_positive_int, default=1024,
                         help="spool size at which ingestion stops taking messages (default %(default)s)")
    durable.add_argument("--no-fsync", action="store_true",
                         help="do not fdatasync spool appends (survives a process crash, not a power cut)")
    durable.add_argument("--dedup-window", type=_positive_int, default=256,
                         help="sequence numbers remembered per device stream (default %(default)s)")
    scale = p.add_argument_group("scale-out")
    scale.add_argument("--workers", type=_positive_int, default=1,
                       help="ingestion processes sharing the subscription (default %(default)s)")
    scale.add_argument("--share-group", type=check_share_group,
                       help=f"MQTT shared-subscription group (default {DEFAULT_SHARE_GROUP} with --workers > 1)")
    scale.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    checks = p.add_argument_group("plausibility (docs/security.md)")
    checks.add_argument("--max-age", type=_non_negative_float, default=DEFAULT_MAX_AGE_S, metavar="SECONDS",
                        help="refuse readings older than this (default %(default)s: what a device holds offline, "
                             "2048 readings at 10 s = 5.7 h, plus the broker's 60-minute queue, rounded up; "
                             "0: off, e.g. to load history)")
    checks.add_argument("--max-skew", type=_non_negative_float, default=300.0, metavar="SECONDS",
                        help="refuse readings this far ahead of our clock (at most 172800, what the store "
                             "accepts; default %(default)s)")
    tuning = p.add_argument_group("tuning")
    tuning.add_argument("--batch-max", type=_positive_int, default=1000,
                        help="write as soon as this many points wait (default %(default)s)")
    tuning.add_argument("--flush-interval", type=_positive_float, default=0.1, metavar="SECONDS",
                        help="write waiting points at least this often (default %(default)s)")
    tuning.add_argument("--receive-maximum", type=_positive_int, default=10_000,
                        help="MQTT 5: unacknowledged messages the broker may send us (default %(default)s)")
    tuning.add_argument("--stats-interval", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="log throughput this often (default %(default)s)")
    tuning.add_argument("--health-interval", type=_non_negative_float, default=10.0, metavar="SECONDS",
                        help="write ingestion's own health points this often; 0: never (default %(default)s)")
    tuning.add_argument("--stats-file", metavar="PATH",
                        help="rewrite this JSON file with counters and the lag histogram every stats "
                             "interval and at exit; {worker} in the name becomes the worker index")
    p.set_defaults(func=run_ingest)


def check_options(args: argparse.Namespace) -> tuple[str, int, str | None]:
    """Everything that can be wrong with the options, before anything starts."""
    address = parse_broker(args.broker)
    host, port = address.host, address.port
    if address.tls:
        broker_tls(address, **tls_args(args))  # a bad CA or key is said now, not by each reconnect
    influx_url = args.influx_url or os.environ.get(ENV_INFLUX_URL)
    if influx_url:
        check_http_url(influx_url)
    if args.workers > 1 and not influx_url:
        raise UsageError("--workers > 1 needs --influx-url: the embedded store file is one process's")
    if args.receive_maximum > 65535:
        raise UsageError(f"--receive-maximum is at most 65535, got {args.receive_maximum}")
    if args.worker_index is not None and not 0 <= args.worker_index < args.workers:
        raise UsageError(f"--worker-index must be 0..{args.workers - 1}")
    clock_from_env()  # a malformed $TENDRIL_CLOCK is said once, here, not by each worker
    return host, port, influx_url


def load_devices(args: argparse.Namespace) -> KnownDevices | None:
    if args.accept_any_device:
        return None
    root = args.registry or Path(os.environ.get(ENV_REGISTRY, str(DEFAULT_REGISTRY)))
    try:
        return KnownDevices(registry_root=root)
    except RegistryError as exc:
        raise UsageError(f"{exc} (or pass --accept-any-device for development)") from None


def run_ingest(args: argparse.Namespace) -> int:
    """Handler for `tendril ingest`; returns the process exit code."""
    try:
        host, port, influx_url = check_options(args)
        devices = load_devices(args)
    except UsageError as exc:
        print(f"tendril ingest: error: {exc}", file=sys.stderr)
        return 2
    progress_logging(log)
    from tendril_transactive.cloud.ingest import (
        serve as ingest_serve,  # the event loop, the store client: only when serving
    )

    if args.workers > 1 and args.worker_index is None:
        return ingest_serve.supervise(args, host, port, influx_url, devices)
    return ingest_serve.serve_worker(args, host, port, influx_url, devices)

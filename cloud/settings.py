"""Tendril's one settings module: environment variable names, defaults and URL parsing.

Every service and command reads its endpoints and secrets through the names here, so an
operator sets `TENDRIL_MQTT_PASSWORD` once and every `tendril` command understands it. Secrets
come from the environment (never from a command line, where `ps` would show them).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from edge.clock import Clock, SimClock, WallClock

ENV_MQTT_PASSWORD = "TENDRIL_MQTT_PASSWORD"
ENV_BROKER = "TENDRIL_BROKER"
ENV_INFLUX_URL = "TENDRIL_INFLUX_URL"
ENV_INFLUX_TOKEN = "TENDRIL_INFLUX_TOKEN"
ENV_INFLUX_ORG = "TENDRIL_INFLUX_ORG"
ENV_INFLUX_BUCKET = "TENDRIL_INFLUX_BUCKET"
ENV_REGISTRY = "TENDRIL_REGISTRY"
ENV_LEDGER_URL = "TENDRIL_LEDGER_URL"
# A simulated clock shared by every process of a run: "real_origin,sim_origin,speed" (as the
# firmware reads it, edge.clock.SimClock.env_value); unset = wall time.
ENV_CLOCK = "TENDRIL_CLOCK"

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_REGISTRY = Path("tendril-registry")
DEFAULT_DATA_DIR = Path("tendril-data")
DEFAULT_STORE_FILE = DEFAULT_DATA_DIR / "telemetry.lp"
DEFAULT_LEDGER_URL = "sqlite:///tendril-ledger.db"
DEFAULT_SHARE_GROUP = "tendril-ingest"
DEFAULT_INFLUX_ORG = "tendril"
DEFAULT_INFLUX_BUCKET = "tendril"
MQTT_PORT = 1883


class UsageError(ValueError):
    """A bad option value; the message says which and why."""


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def registry_dir() -> Path:
    return Path(env(ENV_REGISTRY) or DEFAULT_REGISTRY)


def ledger_url() -> str:
    return env(ENV_LEDGER_URL) or DEFAULT_LEDGER_URL


def parse_broker_url(url: str, option: str = "--broker") -> tuple[str, int]:
    """`mqtt://host[:port]` -> (host, port); port defaults to 1883."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mqtt":
        raise UsageError(f"{option} must look like mqtt://host:port (TLS is not supported yet), got {url!r}")
    if parts.username or parts.password:
        raise UsageError(
            f"put MQTT credentials in --username and ${ENV_MQTT_PASSWORD}, not in the URL: {url!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{option} takes only host and port, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{option} has a bad port: {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"{option} has no host: {url!r}")
    return parts.hostname, port if port is not None else MQTT_PORT


def check_http_url(url: str, option: str = "--influx-url") -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option} must look like http://host:8086, got {url!r}")
    try:
        _ = parts.port
    except ValueError:
        raise UsageError(f"{option} has a bad port: {url!r}") from None
    return url


@dataclass(frozen=True)
class BrokerSettings:
    """Where and as whom a service connects to MQTT; the password only from the environment."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_args(cls, url: str, username: str | None, password: str | None = None) -> BrokerSettings:
        host, port = parse_broker_url(url)
        return cls(host, port, username, password if password is not None else env(ENV_MQTT_PASSWORD))


def parse_clock(text: str | None) -> Clock:
    """`real_origin,sim_origin,speed` -> the SimClock every process of a run shares; None -> wall time."""
    if not text:
        return WallClock()
    try:
        real, sim, speed = (float(x) for x in text.split(","))
        return SimClock(sim_origin=sim, speed=speed, real_origin=real)
    except ValueError:
        raise UsageError(f"${ENV_CLOCK} must be real_origin,sim_origin,speed (numbers, speed > 0), "
                         f"got {text!r}") from None


def clock_from_env() -> Clock:
    return parse_clock(env(ENV_CLOCK))

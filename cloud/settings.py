"""Tendril's one settings module: environment variable names, defaults and URL parsing.

Every service and command reads its endpoints and secrets through the names here, so an
operator sets `TENDRIL_MQTT_PASSWORD` once and every `tendril` command understands it. Secrets
come from the environment (never from a command line, where `ps` would show them).
"""

from __future__ import annotations

import argparse
import os
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tendril_transactive.edge.clock import Clock, SimClock, WallClock

ENV_MQTT_PASSWORD = "TENDRIL_MQTT_PASSWORD"
ENV_BROKER = "TENDRIL_BROKER"
# TLS to the broker (mqtts://): the CA that signed the broker's certificate, and for mutual TLS
# this client's certificate and key (PEM files; docs/security.md "TLS").
ENV_MQTT_CA = "TENDRIL_MQTT_CA"
ENV_MQTT_CERT = "TENDRIL_MQTT_CERT"
ENV_MQTT_KEY = "TENDRIL_MQTT_KEY"
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
DEFAULT_RT_SPREAD_S = 20.0  # `tendril market --rt-spread-s`, the demo, the loop benchmark (MarketConfig's: 0)
MQTT_PORT = 1883
MQTTS_PORT = 8883


class UsageError(ValueError):
    """A bad option value; the message says which and why."""


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def registry_dir() -> Path:
    return Path(env(ENV_REGISTRY) or DEFAULT_REGISTRY)


def ledger_url() -> str:
    return env(ENV_LEDGER_URL) or DEFAULT_LEDGER_URL


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: `mqtt://host[:1883]` (cleartext) or `mqtts://host[:8883]` (TLS)."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker(url: str, option: str = "--broker") -> BrokerAddress:
    """The one parser of broker URLs: `mqtt://host[:port]` or `mqtts://host[:port]` (default
    ports 1883 and 8883). Credentials never go in the URL (a process list would show them)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UsageError(f"{option} must look like mqtt://host:port or mqtts://host:port (TLS), got {url!r}")
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
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port if port is not None else MQTTS_PORT if tls else MQTT_PORT, tls)


def parse_broker_url(url: str, option: str = "--broker") -> tuple[str, int]:
    """`mqtt://host[:port]` -> (host, port), for callers that only speak cleartext MQTT (the
    demo's embedded broker); mqtts:// is refused here so it never silently goes out in clear."""
    address = parse_broker(url, option)
    if address.tls:
        raise UsageError(f"{option}: this command does not take TLS (mqtts://) yet, got {url!r}")
    return address.host, address.port


def tls_context(ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                *, option: str = "--ca-file") -> ssl.SSLContext:
    """A client context that verifies the broker: its chain against `ca_file` (the system's CAs
    if None) and its name against the host we dial (check_hostname). `cert_file`/`key_file`: our
    own certificate for mutual TLS (both or neither)."""
    if (cert_file is None) != (key_file is None):
        raise UsageError("mutual TLS needs both --client-cert and --client-key (or neither)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"{option} {ca_file}: not a readable PEM CA certificate ({exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context already sets both; stated so a reader need not know that.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None and key_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--client-cert {cert_file} / --client-key {key_file}: cannot load ({exc})") from None
    return ctx


def broker_tls(address: BrokerAddress, ca_file: str | None = None, cert_file: str | None = None,
               key_file: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for `address` (None for mqtt://); files default to $TENDRIL_MQTT_CA,
    $TENDRIL_MQTT_CERT, $TENDRIL_MQTT_KEY. A CA given for a cleartext URL is a mistake we say."""
    ca_file = ca_file or env(ENV_MQTT_CA)
    cert_file = cert_file or env(ENV_MQTT_CERT)
    key_file = key_file or env(ENV_MQTT_KEY)
    if not address.tls:
        return None
    return tls_context(ca_file, cert_file, key_file)


def add_tls_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--ca-file/--client-cert/--client-key, for every command that takes --broker."""
    parser.add_argument("--ca-file", metavar="PEM",
                        help=f"with mqtts://: CA certificate that signed the broker's (env {ENV_MQTT_CA}; "
                             "default: the system's CAs)")
    parser.add_argument("--client-cert", metavar="PEM",
                        help=f"mutual TLS: this client's certificate (env {ENV_MQTT_CERT})")
    parser.add_argument("--client-key", metavar="PEM", help=f"mutual TLS: its private key (env {ENV_MQTT_KEY})")


def tls_args(args: argparse.Namespace) -> dict[str, Any]:
    """The add_tls_options values as keyword arguments of BrokerSettings.from_args / broker_tls."""
    return {"ca_file": getattr(args, "ca_file", None), "cert_file": getattr(args, "client_cert", None),
            "key_file": getattr(args, "client_key", None)}


def tls_argv(args: argparse.Namespace) -> list[str]:
    """The same options for a worker's command line (file names only, no secrets)."""
    argv: list[str] = []
    for flag, value in (("--ca-file", getattr(args, "ca_file", None)),
                        ("--client-cert", getattr(args, "client_cert", None)),
                        ("--client-key", getattr(args, "client_key", None))):
        if value:
            argv += [flag, str(value)]
    return argv


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
    # mqtts://: verifies the broker's chain and name (tls_context); None = cleartext.
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_args(cls, url: str, username: str | None, password: str | None = None, *,
                  ca_file: str | None = None, cert_file: str | None = None,
                  key_file: str | None = None) -> BrokerSettings:
        address = parse_broker(url)
        return cls(address.host, address.port, username,
                   password if password is not None else env(ENV_MQTT_PASSWORD),
                   broker_tls(address, ca_file, cert_file, key_file))

    @property
    def url(self) -> str:
        return BrokerAddress(self.host, self.port, self.tls is not None).url


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

"""Per-device MQTT credentials and ACLs for Mosquitto, generated from the registry.

Each device may write only its own telemetry/state/status/ack topics and read only its
own command topic and its site's tenders; the cloud services get exactly the rights
their job needs. Topics come from the wire contract, so the ACL can never drift from it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import tendril_wire as wire

from cloud.devices.registry import DeviceRecord

# Mosquitto 2's `$7$` format: PBKDF2-HMAC-SHA512, 12-byte salt, its default 101 iterations.
PBKDF2_ITERATIONS = 101


def password_line(username: str, password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """One `user:$7$...` line of a Mosquitto password file."""
    if ":" in username or "\n" in username:
        raise ValueError(f"MQTT user names may not contain ':' or newlines: {username!r}")
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class ServiceUser:
    """A cloud service's MQTT identity; `role` picks its rights (see acl_text)."""

    username: str
    password: str
    role: str  # "ingest" | "dispatch" | "homeassistant"


def _device_acl(record: DeviceRecord) -> list[str]:
    lines = [f"user {record.username}"]
    for kind in (wire.TELEMETRY, wire.STATE, wire.STATUS, wire.ACK):
        lines.append(f"topic write {wire.device_topic(record.site, record.device, kind)}")
    lines.append(f"topic read {wire.device_topic(record.site, record.device, wire.CMD)}")
    lines.append(f"topic read {wire.tender_topic(record.site)}")
    return lines


def _service_acl(user: ServiceUser) -> list[str]:
    lines = [f"user {user.username}"]
    if user.role == "ingest":
        for kind in (wire.TELEMETRY, wire.STATE, wire.STATUS, wire.ACK):
            lines.append(f"topic read {wire.device_filter(kind)}")
        lines.append(f"topic write {wire.dead_letter_topic('#')}")
    elif user.role == "dispatch":
        lines.append(f"topic write {wire.device_filter(wire.CMD)}")
        lines.append(f"topic write {wire.tender_filter()}")
        lines.append(f"topic read {wire.device_filter(wire.ACK)}")
        lines.append(f"topic read {wire.device_filter(wire.STATUS)}")
    elif user.role == "homeassistant":
        # Home Assistant reads readings and availability, and owns its discovery tree; no commands.
        for kind in (wire.TELEMETRY, wire.STATUS):
            lines.append(f"topic read {wire.device_filter(kind)}")
        lines.append(f"topic readwrite {wire.ha_filter()}")
    else:
        raise ValueError(f"unknown service role {user.role!r} (ingest, dispatch or homeassistant)")
    return lines


def acl_text(devices: Iterable[DeviceRecord], services: Iterable[ServiceUser]) -> str:
    """A Mosquitto acl_file: nothing is allowed that is not listed."""
    blocks = [_device_acl(r) for r in devices] + [_service_acl(s) for s in services]
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def password_text(devices: Iterable[tuple[DeviceRecord, str]], services: Iterable[ServiceUser]) -> str:
    lines = [password_line(r.username, pw) for r, pw in devices]
    lines += [password_line(s.username, s.password) for s in services]
    return "\n".join(lines) + "\n"


def mosquitto_conf(port: int, password_file: str, acl_file: str, bind: str = "127.0.0.1") -> str:
    """The listener settings that make the files above binding: no anonymous clients."""
    return (
        f"listener {port} {bind}\n"
        "allow_anonymous false\n"
        f"password_file {password_file}\n"
        f"acl_file {acl_file}\n"
    )

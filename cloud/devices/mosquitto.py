"""Broker identities, their rights and the Mosquitto files that enforce them, from the registry.

Each device may write only its own telemetry/state/status/ack topics and read only its own
command topic and its site's tenders; the market publishes tenders and confirms and reads
transactions; each site's agent transacts and commands for its own sites only; the other cloud
services get exactly the rights their job needs. Topics come from the wire contract, so the
rights can never drift from it.

Two ways to enforce them (docs/security.md): the dynamic-security plugin (the default, see
cloud/devices/dynsec.py), which also refuses subscriptions a client has no right to (so no
device can join ingestion's `$share` group) and binds client ids to users (so no device can
take over another client's session); and the classic password_file + acl_file, which Mosquitto
2.0 checks only when it delivers a message, never when it grants a subscription.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import DeviceRecord

# Mosquitto 2's `$7$` format: PBKDF2-HMAC-SHA512, 12-byte salt, its default 101 iterations.
PBKDF2_ITERATIONS = 101
SERVICE_ROLES = ("dispatch", "homeassistant", "ingest", "market")
AGENT_ROLE = "agent"
INGEST_USER = "tendril-ingest"
MARKET_USER = "tendril-market"


def password_hash(password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> tuple[bytes, bytes]:
    """(salt, digest) as Mosquitto 2 stores them, in the password file and in dynsec alike."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    return salt, hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


def password_line(username: str, password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """One `user:$7$...` line of a Mosquitto password file."""
    if ":" in username or "\n" in username:
        raise ValueError(f"MQTT user names may not contain ':' or newlines: {username!r}")
    salt, digest = password_hash(password, salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class ServiceUser:
    """A cloud service's MQTT identity; `role` picks its rights (see grants_for). An agent's
    `sites` are the sites it serves (SiteRecord.agent names it)."""

    username: str
    password: str
    role: str  # "ingest" | "dispatch" | "homeassistant" | "market" | "agent"
    sites: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Grant:
    """One right: `access` read | write | readwrite on a topic or filter. `shared`: the holder
    may also subscribe to it through any `$share/<group>/` (ingestion's workers do)."""

    access: str
    topic: str
    shared: bool = False


def device_client_id(record: DeviceRecord) -> str:
    """The MQTT client id the firmware connects with (tendril_fw/uplink.py); the broker binds
    the device's user to it."""
    return f"tendril-{record.site}-{record.device}"


def ingest_users(base: ServiceUser, workers: int) -> list[ServiceUser]:
    """Ingestion's users: `tendril-ingest` for one process and `tendril-ingest-<i>` for worker i
    of `tendril ingest --workers N` (N <= workers), all with the ingest password. One user per
    client id, because the broker binds each user to one client id (see client_id_for)."""
    return [base] + [ServiceUser(f"{base.username}-{i}", base.password, base.role) for i in range(workers)]


def client_id_for(user: ServiceUser) -> str | None:
    """The client id a service user is bound to, or None (unbound, docs/security.md): the
    single-connection services connect with their user name as client id; the agent, dispatch
    and Home Assistant users open several connections (workers, tools), so they are not bound."""
    return user.username if user.role in ("ingest", "market") else None


def _device_grants(record: DeviceRecord) -> list[Grant]:
    grants = [Grant("write", wire.device_topic(record.site, record.device, kind))
              for kind in (wire.TELEMETRY, wire.STATE, wire.STATUS, wire.ACK)]
    grants.append(Grant("read", wire.device_topic(record.site, record.device, wire.CMD)))
    grants.append(Grant("read", wire.tender_topic(record.site)))
    return grants


def _service_grants(user: ServiceUser) -> list[Grant]:
    role = user.role
    if role == "ingest":
        grants = [Grant("read", wire.device_filter(kind), shared=True)
                  for kind in (wire.TELEMETRY, wire.STATE, wire.STATUS, wire.ACK)]
        return [*grants, Grant("write", wire.dead_letter_topic("#"))]
    if role == "dispatch":
        return [Grant("write", wire.device_filter(wire.CMD)), Grant("write", wire.tender_filter()),
                Grant("read", wire.device_filter(wire.ACK)), Grant("read", wire.device_filter(wire.STATUS))]
    if role == "homeassistant":
        # Home Assistant reads readings and availability, and owns its discovery tree; no commands.
        return [Grant("read", wire.device_filter(wire.TELEMETRY)), Grant("read", wire.device_filter(wire.STATUS)),
                Grant("readwrite", wire.ha_filter())]
    if role == "market":
        # Meters come from the store, not MQTT: the market only prices, hears transactions, confirms.
        return [Grant("write", wire.site_filter(wire.TENDER)), Grant("write", wire.site_filter(wire.CONFIRM)),
                Grant("read", wire.site_filter(wire.TRANSACTION)), Grant("write", wire.dead_letter_topic("#"))]
    if role == AGENT_ROLE:
        grants = []
        for site in user.sites:
            grants += [
                Grant("write", wire.site_topic(site, wire.TRANSACTION)),
                Grant("write", wire.device_filter(wire.CMD, site)),
                Grant("read", wire.site_topic(site, wire.TENDER), shared=True),
                Grant("read", wire.site_topic(site, wire.CONFIRM), shared=True),
            ]
            grants += [Grant("read", wire.device_filter(kind, site), shared=True)
                       for kind in (wire.TELEMETRY, wire.ACK, wire.STATUS)]
        # Presence of the agent's workers (retained, cleared by their will), and dead letters.
        presence = wire.agent_filter().rsplit("/", 1)[0] + "/#"
        return [*grants, Grant("readwrite", presence), Grant("write", wire.dead_letter_topic("#"))]
    raise ValueError(f"unknown service role {role!r} ({', '.join((*SERVICE_ROLES, AGENT_ROLE))})")


def grants_for(subject: DeviceRecord | ServiceUser) -> list[Grant]:
    return _device_grants(subject) if isinstance(subject, DeviceRecord) else _service_grants(subject)


def agent_sites(site_agents: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """site -> agent user  ==>  agent user -> its sites (sorted)."""
    out: dict[str, list[str]] = {}
    for site, agent in sorted(site_agents.items()):
        out.setdefault(agent, []).append(site)
    return {agent: tuple(sites) for agent, sites in out.items()}


def check_identities(devices: Iterable[DeviceRecord], services: Iterable[ServiceUser]) -> None:
    """A user name or a bound client id used twice would let one identity pass as another."""
    users: dict[str, str] = {}
    ids: dict[str, str] = {}
    subjects: list[DeviceRecord | ServiceUser] = [*devices, *services]
    for subject in subjects:
        name = subject.username
        what = f"device {name}" if isinstance(subject, DeviceRecord) else f"service user {name}"
        if name in users:
            raise ValueError(f"MQTT user {name!r} is both {users[name]} and {what}")
        users[name] = what
        cid = device_client_id(subject) if isinstance(subject, DeviceRecord) else client_id_for(subject)
        if cid is not None:
            if cid in ids:
                raise ValueError(f"MQTT client id {cid!r} would be bound to {ids[cid]} and to {what}")
            ids[cid] = what


def acl_text(devices: Iterable[DeviceRecord], services: Iterable[ServiceUser]) -> str:
    """A Mosquitto acl_file: nothing is allowed that is not listed. (Mosquitto 2.0 applies it when
    delivering, not when subscribing: see the module docstring.)"""
    blocks = []
    subjects: list[DeviceRecord | ServiceUser] = [*devices, *services]
    for subject in subjects:
        grants = grants_for(subject)
        blocks.append([f"user {subject.username}"] + [f"topic {g.access} {g.topic}" for g in grants])
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def password_text(devices: Iterable[tuple[DeviceRecord, str]], services: Iterable[ServiceUser]) -> str:
    lines = [password_line(r.username, pw) for r, pw in devices]
    lines += [password_line(s.username, s.password) for s in services]
    return "\n".join(lines) + "\n"

"""The device registry: which devices exist, and each one's own secrets.

`devices.json` lists sites (feeder, the agent that serves them, their devices' settings for the
optimizer) and devices (site, device, type, the load a relay switches) and is safe to show; every
device's
secrets (HMAC command key, MQTT password) live in their own file under `secrets/`,
created with mode 0600 and never printed unless asked for. Nothing here is a default
secret: every key is drawn from `secrets` when the device is added.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tendril_wire as wire

REGISTRY_FILE = "devices.json"
SECRETS_DIR = "secrets"
VERSION = 2  # 2 added sites and relay loads; version 1 files (devices only) are still read
DEFAULT_FEEDER = "feeder-a"
DEFAULT_AGENT = "tendril-agent"
# What a relay switches; the agent plans each with its device model (cloud.optimizer.devices).
RELAY_LOADS = ("pump", "hvac", "ev", "battery")
# Sections of a site's settings: one per optimizer device model. Each holds that model's spec
# fields (numbers or booleans); the agent builds and checks the specs from them.
SETTING_SECTIONS = ("hvac", "pump", "ev", "battery", "pv")


class RegistryError(ValueError):
    """A bad registry file or request; the message says which and why."""


@dataclass(frozen=True, order=True)
class DeviceRecord:
    site: str
    device: str
    type: str
    load: str | None = None  # relays only: what it switches (RELAY_LOADS)
    rating_w: float | None = None  # the largest power the device can plausibly report

    def __post_init__(self) -> None:
        try:
            wire.check_id(self.site, "site")
            wire.check_id(self.device, "device")
        except wire.ContractError as exc:
            raise RegistryError(f"invalid id: {exc}") from None
        if self.type not in wire.DEVICE_TYPES:
            raise RegistryError(f"device type must be one of {', '.join(wire.DEVICE_TYPES)}, got {self.type!r}")
        if self.load is not None and (self.type != wire.DEVICE_RELAY or self.load not in RELAY_LOADS):
            raise RegistryError(f"load is for relays and one of {', '.join(RELAY_LOADS)}, got {self.load!r} "
                                f"on a {self.type}")
        if self.rating_w is not None and not (_finite(self.rating_w) and self.rating_w > 0):
            raise RegistryError(f"rating_w must be a number > 0, got {self.rating_w!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def username(self) -> str:
        """The device's MQTT user name: unique, and readable in broker logs."""
        return f"{self.site}.{self.device}"


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SiteRecord:
    """A site: the feeder it hangs off (its tenders' distribution adder), the agent that answers
    its tenders (an MQTT user allowed to transact for it and command its devices), and the
    settings of its flexible loads for the agent's optimizer."""

    site: str
    feeder: str = DEFAULT_FEEDER
    agent: str = DEFAULT_AGENT
    settings: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    # The site's subscription: kWh per local clock hour 0..23, the same every day (a RATES
    # subscription shaped from the site's history); empty = no subscription, every kWh is
    # bought forward or ex post. Market (settlement, bills) and agent (position) both read it.
    subscription_kwh_by_hour: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        sub = self.subscription_kwh_by_hour
        if sub and (len(sub) != 24 or not all(_finite(v) and v >= 0 for v in sub)):
            raise RegistryError(f"site {self.site}: subscription_kwh_by_hour needs 24 numbers >= 0")
        try:
            wire.check_id(self.site, "site")
            wire.check_id(self.feeder, "feeder")
            wire.check_id(self.agent, "agent")
        except wire.ContractError as exc:
            raise RegistryError(f"site {self.site!r}: invalid id: {exc}") from None
        if not isinstance(self.settings, dict):
            raise RegistryError(f"site {self.site}: settings must be an object of sections")
        for section, values in self.settings.items():
            if section not in SETTING_SECTIONS:
                raise RegistryError(f"site {self.site}: unknown settings section {section!r} "
                                    f"(known: {', '.join(SETTING_SECTIONS)})")
            if not isinstance(values, dict):
                raise RegistryError(f"site {self.site}: settings.{section} must be an object")
            for key, value in values.items():
                if not (isinstance(value, bool) or _finite(value)):
                    raise RegistryError(f"site {self.site}: settings.{section}.{key} must be a finite number "
                                        f"or a boolean, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["subscription_kwh_by_hour"] = list(self.subscription_kwh_by_hour)
        return body


@dataclass(frozen=True)
class DeviceSecrets:
    key_hex: str  # HMAC-SHA256 key for commands to this device
    mqtt_password: str

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.key_hex)

    def __repr__(self) -> str:  # never leak a secret into a log line
        return "DeviceSecrets(<hidden>)"


def new_secrets() -> DeviceSecrets:
    return DeviceSecrets(secrets.token_hex(32), secrets.token_urlsafe(24))


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._devices: dict[tuple[str, str], DeviceRecord] = {}
        self._sites: dict[str, SiteRecord] = {}
        path = root / REGISTRY_FILE
        if path.exists():
            sites, devices = _read_registry(path)
            self._sites = {s.site: s for s in sites}
            self._devices = {(r.site, r.device): r for r in devices}

    @property
    def devices(self) -> list[DeviceRecord]:
        return sorted(self._devices.values())

    @property
    def sites(self) -> list[SiteRecord]:
        """Every site with a device, with its record (a default one if it was never set)."""
        names = {d.site for d in self._devices.values()} | set(self._sites)
        return [self.site(name) for name in sorted(names)]

    def site(self, name: str) -> SiteRecord:
        return self._sites.get(name) or SiteRecord(name)

    def site_devices(self, name: str) -> list[DeviceRecord]:
        return [d for d in self.devices if d.site == name]

    def set_site(self, record: SiteRecord) -> None:
        """Add or replace a site's record (feeder, agent, settings)."""
        self._sites[record.site] = record
        self._save()

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._devices

    def add(self, site: str, device: str, type_: str, load: str | None = None,
            rating_w: float | None = None) -> DeviceSecrets:
        record = DeviceRecord(site, device, type_, load, rating_w)
        if (site, device) in self._devices:
            raise RegistryError(f"device {device!r} at site {site!r} is already registered")
        made = new_secrets()
        self._write_secrets(record, made)
        self._devices[(site, device)] = record
        self._save()
        return made

    def remove(self, site: str, device: str) -> None:
        record = self._devices.pop((site, device), None)
        if record is None:
            raise RegistryError(f"device {device!r} at site {site!r} is not registered")
        self._secrets_path(record).unlink(missing_ok=True)
        self._save()

    def secrets_for(self, site: str, device: str) -> DeviceSecrets:
        record = self._devices.get((site, device))
        if record is None:
            raise RegistryError(f"device {device!r} at site {site!r} is not registered")
        path = self._secrets_path(record)
        try:
            data = json.loads(path.read_text())
            return DeviceSecrets(str(data["key_hex"]), str(data["mqtt_password"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path}: unreadable secrets ({exc})") from None

    def _secrets_path(self, record: DeviceRecord) -> Path:
        return self.root / SECRETS_DIR / f"{record.username}.json"

    def _write_secrets(self, record: DeviceRecord, made: DeviceSecrets) -> None:
        path = self._secrets_path(record)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created 0600 from the start: there is no moment when another user could read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"key_hex": made.key_hex, "mqtt_password": made.mqtt_password}, fh)

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (REGISTRY_FILE + ".tmp")
        body = {"version": VERSION, "sites": [s.to_json() for s in sorted(self._sites.values(), key=lambda s: s.site)],
                "devices": [r.to_json() for r in self.devices]}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.root / REGISTRY_FILE)


def _read_registry(path: Path) -> tuple[list[SiteRecord], list[DeviceRecord]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not a readable JSON registry ({exc})") from None
    if not isinstance(data, dict) or data.get("version") not in (1, VERSION) \
            or not isinstance(data.get("devices"), list) or not isinstance(data.get("sites", []), list):
        raise RegistryError(f"{path}: expected {{'version': {VERSION}, 'sites': [...], 'devices': [...]}}")
    records = []
    for i, item in enumerate(data["devices"]):
        if not isinstance(item, dict) or not {"site", "device", "type"} <= set(item) \
                or not set(item) <= {"site", "device", "type", "load", "rating_w"}:
            raise RegistryError(f"{path}: device #{i} must have site, device and type (and may have load, rating_w)")
        try:
            records.append(DeviceRecord(str(item["site"]), str(item["device"]), str(item["type"]),
                                        item.get("load"), item.get("rating_w")))
        except RegistryError as exc:
            raise RegistryError(f"{path}: device #{i}: {exc}") from None
    sites = []
    for i, item in enumerate(data.get("sites", [])):
        if not isinstance(item, dict) or "site" not in item \
                or not set(item) <= {"site", "feeder", "agent", "settings", "subscription_kwh_by_hour"}:
            raise RegistryError(f"{path}: site #{i} must have site (and may have feeder, agent, settings)")
        try:
            sites.append(SiteRecord(str(item["site"]), str(item.get("feeder", DEFAULT_FEEDER)),
                                    str(item.get("agent", DEFAULT_AGENT)), item.get("settings", {}),
                                    tuple(item.get("subscription_kwh_by_hour", ()))))
        except RegistryError as exc:
            raise RegistryError(f"{path}: site #{i}: {exc}") from None
    return sites, records

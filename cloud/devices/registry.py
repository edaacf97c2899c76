"""The device registry: which devices exist, and each one's own secrets.

`devices.json` lists devices (site, device, type) and is safe to show; every device's
secrets (HMAC command key, MQTT password) live in their own file under `secrets/`,
created with mode 0600 and never printed unless asked for. Nothing here is a default
secret: every key is drawn from `secrets` when the device is added.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import tendril_wire as wire

REGISTRY_FILE = "devices.json"
SECRETS_DIR = "secrets"


class RegistryError(ValueError):
    """A bad registry file or request; the message says which and why."""


@dataclass(frozen=True, order=True)
class DeviceRecord:
    site: str
    device: str
    type: str

    def __post_init__(self) -> None:
        try:
            wire.check_id(self.site, "site")
            wire.check_id(self.device, "device")
        except wire.ContractError as exc:
            raise RegistryError(f"invalid id: {exc}") from None
        if self.type not in wire.DEVICE_TYPES:
            raise RegistryError(f"device type must be one of {', '.join(wire.DEVICE_TYPES)}, got {self.type!r}")

    @property
    def username(self) -> str:
        """The device's MQTT user name: unique, and readable in broker logs."""
        return f"{self.site}.{self.device}"


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
        path = root / REGISTRY_FILE
        if path.exists():
            self._devices = {(r.site, r.device): r for r in _read_records(path)}

    @property
    def devices(self) -> list[DeviceRecord]:
        return sorted(self._devices.values())

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._devices

    def add(self, site: str, device: str, type_: str) -> DeviceSecrets:
        record = DeviceRecord(site, device, type_)
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
        tmp.write_text(json.dumps({"version": 1, "devices": [asdict(r) for r in self.devices]}, indent=2) + "\n")
        tmp.replace(self.root / REGISTRY_FILE)


def _read_records(path: Path) -> list[DeviceRecord]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not a readable JSON registry ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("devices"), list):
        raise RegistryError(f"{path}: expected {{'version': 1, 'devices': [...]}}")
    records = []
    for i, item in enumerate(data["devices"]):
        if not isinstance(item, dict) or set(item) != {"site", "device", "type"}:
            raise RegistryError(f"{path}: device #{i} must have exactly site, device and type")
        try:
            records.append(DeviceRecord(str(item["site"]), str(item["device"]), str(item["type"])))
        except RegistryError as exc:
            raise RegistryError(f"{path}: device #{i}: {exc}") from None
    return records

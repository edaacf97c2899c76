"""The devices ingestion accepts: registered ones (cloud/devices/registry.py), kept current.

Messages from any other (site, device) are rejected with reason `unknown_device`. The set
comes from the registry folder `tendril device add` maintains (its devices.json) and is
re-read when that file changes, so enrolling a device needs no restart; a program (the demo,
a test) can also register devices directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import REGISTRY_FILE, Registry, RegistryError

log = logging.getLogger("tendril.ingest")

UNKNOWN_DEVICE = "unknown_device"

Device = tuple[str, str]


class KnownDevices:
    """Registered devices. `version` changes whenever the set does, so callers can cache lookups."""

    def __init__(self, devices: Iterable[Device] = (), *, registry_root: Path | None = None) -> None:
        self._added: set[Device] = set()  # registered in-process
        self._from_file: set[Device] = set()
        # (type, rating_w) as registered, for ingest's plausibility checks (cloud/ingest/validation.py)
        self._profiles: dict[Device, tuple[str | None, float | None]] = {}
        self.registry_root = registry_root
        self.version = 0
        self._stamp: tuple[int, int] | None = None
        for site, device in devices:
            self.register(site, device)
        if registry_root is not None:
            if not (registry_root / REGISTRY_FILE).exists():
                raise RegistryError(
                    f"no device registry at {registry_root / REGISTRY_FILE}: register devices with "
                    "`tendril device add` first"
                )
            self.reload_if_changed(strict=True)

    def __contains__(self, item: object) -> bool:
        return item in self._from_file or item in self._added

    def __len__(self) -> int:
        return len(self._from_file | self._added)

    def profile(self, site: str, device: str) -> tuple[str | None, float | None]:
        """The device's registered (type, rating_w); (None, None) where not known."""
        return self._profiles.get((site, device), (None, None))

    def register(self, site: str, device: str, type_: str | None = None, rating_w: float | None = None) -> None:
        wire.check_id(site, "site")
        wire.check_id(device, "device")
        if (site, device) not in self._added or self._profiles.get((site, device)) != (type_, rating_w):
            self._added.add((site, device))
            if type_ is not None or rating_w is not None:
                self._profiles[(site, device)] = (type_, rating_w)
            self.version += 1

    def reload_if_changed(self, strict: bool = False) -> bool:
        """Re-read devices.json if it changed; True if the set changed. After the first read a
        broken file is logged and the previous set kept: a typo must not reject a fleet."""
        if self.registry_root is None:
            return False
        path = self.registry_root / REGISTRY_FILE
        try:
            st = os.stat(path)
        except OSError as exc:
            log.error("device registry %s: %s; keeping %d devices", path, exc, len(self._from_file))
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            records = Registry(self.registry_root).devices
        except RegistryError as exc:
            if strict:
                raise
            log.error("device registry not reloaded: %s; keeping %d devices", exc, len(self._from_file))
            return False
        devices = {(r.site, r.device) for r in records}
        profiles = {(r.site, r.device): (r.type, r.rating_w) for r in records}
        if devices == self._from_file and all(self._profiles.get(k) == v for k, v in profiles.items()):
            return False
        self._profiles.update(profiles)
        log.info("device registry %s: %d devices (was %d)", path, len(devices), len(self._from_file))
        self._from_file = devices
        self.version += 1
        return True

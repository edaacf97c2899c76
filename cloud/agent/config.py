"""A site as the agent sees it: its optimizer spec, relays, meters and subscription, built from
the registry (or passed in directly by `tendril simulate` / the demo).

Settings sections (`SiteRecord.settings`) hold the spec fields of one device model each, flat:
the nested physics parameters (ThermalParams, EvParams, BatteryParams, PvParams) are named by
their own field names in the same section (`hvac.hvac_kw`, `ev.max_kw`). The EV section also
takes the owner's usual plug-in (`arrive_hour`, `depart_hour`, `need_kwh`): telemetry cannot
say when the car arrives, so the agent plans that session every day. A bad key or value fails
here with a message naming `settings.<section>.<key>`, before any solve.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import tendril_wire as wire

from tendril_transactive.cloud.agent.dispatch import SafetyLimits
from tendril_transactive.cloud.devices.registry import DeviceRecord, SiteRecord
from tendril_transactive.cloud.optimizer.devices.battery import BatterySpec
from tendril_transactive.cloud.optimizer.devices.ev import EvSpec
from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
from tendril_transactive.cloud.optimizer.devices.pv import PvSpec
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.edge.battery import BatteryParams
from tendril_transactive.edge.ev import EvParams, EvSession
from tendril_transactive.edge.pv import PvParams
from tendril_transactive.edge.thermal import ThermalParams

LOCAL = ZoneInfo("America/Los_Angeles")  # the customer's clock: tariff hours, subscription hours
# Per relay load, what the relay itself must respect (the firmware enforces the same minimums).
DEFAULT_LIMITS = {
    "hvac": SafetyLimits(min_on_s=300, min_off_s=300, max_switches_per_day=288),
    "pump": SafetyLimits(min_on_s=900, min_off_s=900, max_switches_per_day=8),
    "ev": SafetyLimits(min_on_s=300, min_off_s=300, max_switches_per_day=288),
    "battery": SafetyLimits(min_on_s=300, min_off_s=300, max_switches_per_day=288),
}
EV_PLAN_KEYS = ("arrive_hour", "depart_hour", "need_kwh")

# section -> (spec class, nested field name, nested class)
_SECTIONS: dict[str, tuple[type[Any], str | None, type[Any] | None]] = {
    "hvac": (HvacSpec, "thermal", ThermalParams),
    "pump": (PumpSpec, None, None),
    "ev": (EvSpec, "params", EvParams),
    "battery": (BatterySpec, "params", BatteryParams),
    "pv": (PvSpec, "params", PvParams),
}


def clock_hours(start: float, steps: int, step_s: float) -> tuple[np.ndarray[Any, np.dtype[np.float64]],
                                                                np.ndarray[Any, np.dtype[np.intp]]]:
    """The clock hours (unix seconds, ascending) that `steps` steps from `start` begin in, and
    each step's index into them: what a per-step series looks up once per hour."""
    t = start + np.arange(steps) * step_s
    hours, inv = np.unique(t - t % 3600, return_inverse=True)
    return hours, inv


class ConfigError(ValueError):
    """A site's settings cannot become an optimizer spec; the message names the key."""


@dataclass(frozen=True)
class EvPlan:
    """The owner's usual plug-in, local hours; depart <= arrive means the next morning."""

    arrive_hour: float = 18.0
    depart_hour: float = 7.0
    need_kwh: float = 20.0

    def sessions(self, start: float, end: float) -> tuple[EvSession, ...]:
        """The plug-in sessions overlapping [start, end)."""
        out = []
        day = datetime.fromtimestamp(start, LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
        day -= timedelta(days=1)
        while day.timestamp() < end:
            arrive = day + timedelta(hours=self.arrive_hour)
            depart = day + timedelta(hours=self.depart_hour)
            if depart <= arrive:
                depart += timedelta(days=1)
            a, d = arrive.timestamp(), depart.timestamp()
            if d > start and a < end:
                out.append(EvSession(a, d, self.need_kwh))
            day += timedelta(days=1)
        return tuple(out)


@dataclass(frozen=True)
class SiteConfig:
    """Everything static the agent needs about one site."""

    site: str
    agent: str  # the party that transacts for the site (SiteRecord.agent): partyId and id seed
    spec: SiteSpec
    relays: Mapping[str, str]  # relay device -> load it switches (pump, hvac, ev, battery)
    meters: tuple[str, ...] = ()
    subscription_kwh_by_hour: tuple[float, ...] = ()  # local hour 0..23; empty = none
    ev_plan: EvPlan | None = None
    limits: Mapping[str, SafetyLimits] = field(default_factory=dict)  # relay device -> limits

    def __post_init__(self) -> None:
        wire.check_id(self.site, "site")
        for device, load in self.relays.items():
            wire.check_id(device, "device")
            if getattr(self.spec, load, None) is None:
                raise ConfigError(f"site {self.site}: relay {device} switches {load!r} but settings.{load} "
                                  f"is missing (add the section, even empty, to plan it)")
        sub = self.subscription_kwh_by_hour
        if sub and (len(sub) != 24 or not all(math.isfinite(v) and v >= 0 for v in sub)):
            raise ConfigError(f"site {self.site}: subscription_kwh_by_hour needs 24 numbers >= 0")

    def relay_for(self, load: str) -> str | None:
        return next((d for d, kind in self.relays.items() if kind == load), None)

    def subscribed_kwh(self, start: float, duration_s: float) -> float:
        """Subscribed energy in [start, start + duration), hour by local clock hour."""
        if not self.subscription_kwh_by_hour:
            return 0.0
        total, t, end = 0.0, start, start + duration_s
        while t < end - 1e-9:
            hour_end = (math.floor(t / 3600) + 1) * 3600  # LA offsets are whole hours
            seg = min(end, hour_end) - t
            total += self.subscription_kwh_by_hour[datetime.fromtimestamp(t, LOCAL).hour] * seg / 3600
            t += seg
        return total

    def subscribed_series(self, start: float, steps: int, step_s: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        """`subscribed_kwh` of `steps` consecutive steps from `start`, the same numbers: when the
        steps divide clock hours, looked up once per hour instead of once per step (a 288-step
        forecast per site per real-time tender; bench/loop.py)."""
        sub = self.subscription_kwh_by_hour
        if type(self).subscribed_kwh is SiteConfig.subscribed_kwh and 3600 % step_s == 0 and start % step_s == 0:
            if not sub:
                return np.zeros(steps)
            hours, inv = clock_hours(start, steps, step_s)
            kwh = np.array([sub[datetime.fromtimestamp(float(h), LOCAL).hour] for h in hours], dtype=float)
            out: np.ndarray[Any, np.dtype[np.float64]] = kwh[inv] * step_s / 3600
            return out
        return np.array([self.subscribed_kwh(start + k * step_s, step_s) for k in range(steps)], dtype=float)


def _number(site: str, section: str, key: str, value: object, want: type[Any]) -> object:
    where = f"site {site}: settings.{section}.{key}"
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if want is int:
        if value != int(value):
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _field_types(cls: type[Any]) -> dict[str, type[Any]]:
    kinds = {"float": float, "int": int, "bool": bool}
    out = {}
    for f in dataclasses.fields(cls):
        name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if name in kinds:
            out[f.name] = kinds[name]
    return out


def build_section(site: str, section: str, values: Mapping[str, object]) -> Any:
    """One device spec from its settings section; ConfigError names the bad key."""
    if section not in _SECTIONS:
        raise ConfigError(f"site {site}: unknown settings section {section!r} (known: {', '.join(_SECTIONS)})")
    cls, nested_name, nested_cls = _SECTIONS[section]
    own = _field_types(cls)
    inner = _field_types(nested_cls) if nested_cls is not None else {}
    top: dict[str, object] = {}
    sub: dict[str, object] = {}
    for key, value in values.items():
        if section == "ev" and key in EV_PLAN_KEYS:
            continue
        if key in own:
            top[key] = _number(site, section, key, value, own[key])
        elif key in inner:
            sub[key] = _number(site, section, key, value, inner[key])
        else:
            known = sorted(set(own) | set(inner) | (set(EV_PLAN_KEYS) if section == "ev" else set()))
            raise ConfigError(f"site {site}: settings.{section}.{key} is not a setting "
                              f"(known: {', '.join(known)})")
    try:
        if nested_cls is not None and nested_name is not None:
            top[nested_name] = nested_cls(**sub)
        return cls(**top)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"site {site}: settings.{section}: {exc}") from None


def _ev_plan(site: str, values: Mapping[str, object]) -> EvPlan:
    kw = {k: float(_number(site, "ev", k, values[k], float)) for k in EV_PLAN_KEYS if k in values}  # type: ignore[arg-type]
    plan = EvPlan(**kw)
    if not (0 <= plan.arrive_hour < 24 and 0 <= plan.depart_hour < 24 and plan.need_kwh >= 0):
        raise ConfigError(f"site {site}: settings.ev arrive_hour/depart_hour must be in [0, 24) and need_kwh >= 0")
    return plan


def site_config(record: SiteRecord, devices: Iterable[DeviceRecord],
                limits: Mapping[str, SafetyLimits] | None = None) -> SiteConfig:
    """The agent's view of one registered site; ConfigError naming the bad key."""
    site = record.site
    specs = {section: build_section(site, section, values) for section, values in record.settings.items()}
    spec = SiteSpec(site, **specs)
    relays: dict[str, str] = {}
    meters: list[str] = []
    for d in devices:
        if d.site != site:
            continue
        if d.type == wire.DEVICE_METER:
            meters.append(d.device)
        elif d.load is not None:
            relays[d.device] = d.load
    by_load = dict(DEFAULT_LIMITS, **(limits or {}))
    ev = _ev_plan(site, record.settings["ev"]) if "ev" in record.settings else None
    return SiteConfig(site, record.agent, spec, relays, tuple(sorted(meters)), record.subscription_kwh_by_hour,
                      ev, {dev: by_load[load] for dev, load in relays.items() if load in by_load})

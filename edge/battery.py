"""A home battery's state of charge: energy in through the charge efficiency, out through the
discharge efficiency, within power and energy limits.

    soc_next = soc + eta_c * charge_kw * dt_h - discharge_kw * dt_h / eta_d

One implementation for the simulator (`apply` clamps a request to what the battery can do) and
the optimizer (its Pyomo constraints use the same parameters and formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatteryParams:
    capacity_kwh: float = 13.5
    max_charge_kw: float = 5.0
    max_discharge_kw: float = 5.0
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    soc_min_frac: float = 0.1  # reserve kept for outages and cell health
    soc_max_frac: float = 1.0

    def __post_init__(self) -> None:
        for name in ("capacity_kwh", "max_charge_kw", "max_discharge_kw"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        for name in ("eta_charge", "eta_discharge"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not 0 <= self.soc_min_frac < self.soc_max_frac <= 1:
            raise ValueError(f"need 0 <= soc_min_frac < soc_max_frac <= 1, got {self.soc_min_frac}, "
                             f"{self.soc_max_frac}")

    @property
    def soc_min_kwh(self) -> float:
        return self.capacity_kwh * self.soc_min_frac

    @property
    def soc_max_kwh(self) -> float:
        return self.capacity_kwh * self.soc_max_frac


def step(soc_kwh: float, charge_kw: float, discharge_kw: float, p: BatteryParams, dt_s: float) -> float:
    """State of charge after `dt_s` at the given (non-negative) charge and discharge power."""
    if charge_kw < 0 or discharge_kw < 0:
        raise ValueError(f"charge and discharge power are >= 0, got {charge_kw}, {discharge_kw}")
    dt_h = dt_s / 3600.0
    return soc_kwh + p.eta_charge * charge_kw * dt_h - discharge_kw * dt_h / p.eta_discharge


def apply(soc_kwh: float, power_kw: float, p: BatteryParams, dt_s: float) -> tuple[float, float]:
    """Clamp a request (+ charge, - discharge, kW at the terminals) to the power and energy limits;
    returns (power actually drawn, soc after the step)."""
    dt_h = dt_s / 3600.0
    if power_kw >= 0:
        room = max(0.0, p.soc_max_kwh - soc_kwh) / (p.eta_charge * dt_h)
        kw = min(power_kw, p.max_charge_kw, room)
        return kw, step(soc_kwh, kw, 0.0, p, dt_s)
    left = max(0.0, soc_kwh - p.soc_min_kwh) * p.eta_discharge / dt_h
    kw = min(-power_kw, p.max_discharge_kw, left)
    return -kw, step(soc_kwh, 0.0, kw, p, dt_s)

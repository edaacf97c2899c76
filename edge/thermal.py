"""A house's indoor temperature: one thermal mass behind one thermal resistance (first order).

    C dT/dt = (T_out - T) / R + Q,   Q = COP_heat * P * heat - COP_cool * P * cool + gains

with heat, cool in [0, 1] the share of the step the heat pump runs in each mode. Over a step of
dt seconds with everything but T constant the exact solution is

    T_next = a T + (1 - a) (T_out + R Q),   a = exp(-dt / (R C))

This module is the one implementation of that physics: the simulator steps houses with `step`,
and the optimizer's Pyomo constraints take their coefficients from `coefficients`, so the plan
and the simulated house cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ThermalParams:
    r_c_per_kw: float = 3.0  # envelope resistance: indoor-outdoor difference per kW of heat flow
    c_kwh_per_c: float = 3.0  # thermal mass: kWh to raise the house by 1 C (tau = R C = 9 h)
    hvac_kw: float = 3.0  # electric power of the heat pump when running
    cop_heat: float = 3.0
    cop_cool: float = 3.0
    gains_kw: float = 0.5  # people, appliances, sun through windows (mean)

    def __post_init__(self) -> None:
        for name in ("r_c_per_kw", "c_kwh_per_c", "hvac_kw", "cop_heat", "cop_cool"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not math.isfinite(self.gains_kw):
            raise ValueError(f"gains_kw must be finite, got {self.gains_kw}")


@dataclass(frozen=True)
class ThermalCoefficients:
    """T_next = a T + b_out T_out + b_heat heat - b_cool cool + b_gain."""

    a: float
    b_out: float
    b_heat: float
    b_cool: float
    b_gain: float


def coefficients(p: ThermalParams, dt_s: float) -> ThermalCoefficients:
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    a = math.exp(-dt_s / 3600.0 / (p.r_c_per_kw * p.c_kwh_per_c))
    k = (1.0 - a) * p.r_c_per_kw
    return ThermalCoefficients(a, 1.0 - a, k * p.cop_heat * p.hvac_kw, k * p.cop_cool * p.hvac_kw,
                               k * p.gains_kw)


def step(t_in: float, t_out: float, heat: float, cool: float, p: ThermalParams, dt_s: float) -> float:
    """Indoor temperature after `dt_s` seconds with the heat pump heating / cooling the given shares."""
    if not (0.0 <= heat <= 1.0 and 0.0 <= cool <= 1.0):
        raise ValueError(f"heat and cool are shares of the step in [0, 1], got {heat}, {cool}")
    c = coefficients(p, dt_s)
    return c.a * t_in + c.b_out * t_out + c.b_heat * heat - c.b_cool * cool + c.b_gain


def electric_kw(heat: float, cool: float, p: ThermalParams) -> float:
    """Mean electric power of the heat pump over a step."""
    return p.hvac_kw * (heat + cool)

"""Heat pump + house: first-order thermal model with a comfort band and paid violations.

Indoor temperature follows edge.thermal exactly (same coefficients). Leaving the comfort band
is allowed but costs `penalty_usd_per_ch` per degree-hour outside it, so the optimizer only
does it when staying inside would cost more (or is impossible: a cold start below the band).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo

from tendril_transactive.cloud.optimizer.devices import (
    DeviceTerms,
    FloatArray,
    Horizon,
    ParamValues,
    SiteForecast,
    SiteState,
)
from tendril_transactive.edge.thermal import ThermalParams, coefficients


@dataclass(frozen=True)
class HvacSpec:
    thermal: ThermalParams = field(default_factory=ThermalParams)
    t_min_c: float = 20.0
    t_max_c: float = 23.0
    can_heat: bool = True
    can_cool: bool = True
    penalty_usd_per_ch: float = 5.0  # $ per degree-hour outside the band
    # Plan this far inside the band: the relay runs whole 5-minute steps, not the planned share,
    # and the rounding moves the house by up to ~0.1 C either way, a lost command by a step more.
    plan_margin_c: float = 0.2

    def __post_init__(self) -> None:
        if not self.t_min_c < self.t_max_c:
            raise ValueError(f"comfort band needs t_min < t_max, got {self.t_min_c}, {self.t_max_c}")
        if not (math.isfinite(self.penalty_usd_per_ch) and self.penalty_usd_per_ch > 0):
            raise ValueError(f"penalty must be > 0, got {self.penalty_usd_per_ch}")
        if not 0 <= 2 * self.plan_margin_c < self.t_max_c - self.t_min_c:
            raise ValueError(f"plan_margin_c {self.plan_margin_c} does not fit in the comfort band")
        if not (self.can_heat or self.can_cool):
            raise ValueError("an HVAC that can neither heat nor cool controls nothing")


def add(m: pyo.ConcreteModel, spec: HvacSpec, h: Horizon) -> DeviceTerms:
    k = coefficients(spec.thermal, h.step_s)
    steps = range(h.steps)
    m.hvac_t0 = pyo.Param(mutable=True, initialize=spec.t_min_c)
    m.hvac_t_out = pyo.Param(steps, mutable=True, initialize=15.0)
    m.hvac_t_min = pyo.Param(steps, mutable=True, initialize=spec.t_min_c)
    m.hvac_t_max = pyo.Param(steps, mutable=True, initialize=spec.t_max_c)
    m.hvac_temp = pyo.Var(range(h.steps + 1))  # temp[t]: at the start of step t
    m.hvac_heat = pyo.Var(steps, bounds=(0, 1 if spec.can_heat else 0))
    m.hvac_cool = pyo.Var(steps, bounds=(0, 1 if spec.can_cool else 0))
    m.hvac_under = pyo.Var(steps, bounds=(0, None))  # below the band at the end of step t
    m.hvac_over = pyo.Var(steps, bounds=(0, None))
    m.hvac_init = pyo.Constraint(expr=m.hvac_temp[0] == m.hvac_t0)
    m.hvac_dyn = pyo.Constraint(steps, rule=lambda m, t: (
        m.hvac_temp[t + 1] - k.a * m.hvac_temp[t] - k.b_heat * m.hvac_heat[t] + k.b_cool * m.hvac_cool[t]
        == k.b_out * m.hvac_t_out[t] + k.b_gain))
    m.hvac_low = pyo.Constraint(steps, rule=lambda m, t: m.hvac_temp[t + 1] + m.hvac_under[t] >= m.hvac_t_min[t])
    m.hvac_high = pyo.Constraint(steps, rule=lambda m, t: m.hvac_temp[t + 1] - m.hvac_over[t] <= m.hvac_t_max[t])
    weight = spec.penalty_usd_per_ch * h.dt_h
    kw = spec.thermal.hvac_kw
    return DeviceTerms(
        power_kw=[kw * (m.hvac_heat[t] + m.hvac_cool[t]) for t in steps],
        cost=weight * sum(m.hvac_under[t] + m.hvac_over[t] for t in steps),
    )


def inputs(spec: HvacSpec, state: SiteState, fc: SiteForecast, h: Horizon) -> ParamValues:
    if not math.isfinite(state.t_in_c):
        raise ValueError(f"indoor temperature must be finite, got {state.t_in_c}")
    return {
        "hvac_t0": state.t_in_c,
        "hvac_t_out": np.asarray(fc.t_out_c, dtype=float),
        "hvac_t_min": np.full(h.steps, spec.t_min_c + spec.plan_margin_c),
        "hvac_t_max": np.full(h.steps, spec.t_max_c - spec.plan_margin_c),
    }


def violation_ch(temps_c: FloatArray, t_min_c: float, t_max_c: float, dt_h: float) -> float:
    """Degree-hours outside [t_min, t_max] for temperatures sampled once per step."""
    below = np.clip(t_min_c - temps_c, 0, None)
    above = np.clip(temps_c - t_max_c, 0, None)
    return float((below + above).sum() * dt_h)

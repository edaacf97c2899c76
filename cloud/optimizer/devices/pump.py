"""Pool pump: N hours a day, on/off, a limited number of starts.

Two forms from one component. Where the pump is decided (`decide=True`: the day-ahead solve on
hourly steps) it is binary, with start indicators and a start cap; its run-time need is soft
(`short_usd_per_h`) so a late plan stays feasible. Where it is not (`decide=False`: the 5-minute
re-solves) it follows `pump_plan` exactly: binaries change the hourly decision, not a
5-minute one, and keeping them out keeps the re-solve an LP (docs/measured.md: the LP relaxation
of a 5-minute pump leaves fractional steps, and the MILP took ~20x the LP's time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo

from tendril_transactive.cloud.optimizer.devices import DeviceTerms, Horizon, ParamValues, SiteForecast, SiteState


@dataclass(frozen=True)
class PumpSpec:
    kw: float = 1.5
    hours_per_day: float = 6.0
    max_starts: int = 2
    short_usd_per_h: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kw) and self.kw > 0):
            raise ValueError(f"pump kw must be > 0, got {self.kw}")
        if not 0 <= self.hours_per_day <= 24:
            raise ValueError(f"hours_per_day must be in [0, 24], got {self.hours_per_day}")
        if self.max_starts < 1:
            raise ValueError(f"max_starts must be >= 1, got {self.max_starts}")


def add(m: pyo.ConcreteModel, spec: PumpSpec, h: Horizon, decide: bool) -> DeviceTerms:
    steps = range(h.steps)
    if not decide:
        m.pump_plan = pyo.Param(steps, mutable=True, initialize=0.0)
        m.pump_on = pyo.Var(steps)
        for t in steps:
            m.pump_on[t].setlb(m.pump_plan[t])
            m.pump_on[t].setub(m.pump_plan[t])
        return DeviceTerms(power_kw=[spec.kw * m.pump_on[t] for t in steps])
    m.pump_prev = pyo.Param(mutable=True, initialize=0.0)  # 1 if running before step 0
    m.pump_need_h = pyo.Param(mutable=True, initialize=spec.hours_per_day)
    m.pump_on = pyo.Var(steps, domain=pyo.Binary)
    # Continuous is enough: the cap pushes start[t] down to on[t] - on[t-1], which is 0 or 1.
    m.pump_start = pyo.Var(steps, bounds=(0, 1))
    m.pump_short = pyo.Var(bounds=(0, None))
    m.pump_start_def = pyo.Constraint(steps, rule=lambda m, t: (
        m.pump_start[t] - m.pump_on[t] + (m.pump_on[t - 1] if t > 0 else 0) >= (0 if t > 0 else -m.pump_prev)))
    m.pump_start_cap = pyo.Constraint(expr=sum(m.pump_start[t] for t in steps) <= spec.max_starts)
    m.pump_runtime = pyo.Constraint(expr=h.dt_h * sum(m.pump_on[t] for t in steps) + m.pump_short >= m.pump_need_h)
    return DeviceTerms(power_kw=[spec.kw * m.pump_on[t] for t in steps],
                       cost=spec.short_usd_per_h * m.pump_short)


def inputs(spec: PumpSpec, state: SiteState, fc: SiteForecast, h: Horizon, decide: bool) -> ParamValues:
    if not decide:
        plan = np.zeros(h.steps) if fc.pump_plan is None else np.clip(np.asarray(fc.pump_plan, float), 0, 1)
        return {"pump_plan": plan}
    if not (math.isfinite(fc.pump_need_h) and fc.pump_need_h >= 0):
        raise ValueError(f"pump_need_h must be finite and >= 0, got {fc.pump_need_h}")
    return {"pump_prev": 1.0 if state.pump_on else 0.0, "pump_need_h": fc.pump_need_h}

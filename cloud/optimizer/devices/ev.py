"""EV charger: plug-in window, energy needed by departure, charger rating (edge.ev).

`ev_avail[t]` is the share of step t the car is plugged in (caps the charge power), and
`ev_need[t]` the energy that must be stored by the end of step t: the cumulative need of every
session that departs by then. A shortfall is possible but costs `short_usd_per_kwh`, far above
any energy price, so it happens only when the car cannot be charged in time at full power
(plugged in too late); the model then stays feasible and charges as much as it can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo

from tendril_transactive.cloud.optimizer.devices import (
    DeviceTerms,
    Horizon,
    ParamValues,
    SiteForecast,
    SiteState,
    step_starts,
)
from tendril_transactive.edge.ev import EvParams


@dataclass(frozen=True)
class EvSpec:
    params: EvParams = field(default_factory=EvParams)
    short_usd_per_kwh: float = 5.0
    plan_margin_steps: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.short_usd_per_kwh) and self.short_usd_per_kwh > 0):
            raise ValueError(f"shortfall penalty must be > 0, got {self.short_usd_per_kwh}")


def add(m: pyo.ConcreteModel, spec: EvSpec, h: Horizon) -> DeviceTerms:
    p = spec.params
    steps = range(h.steps)
    m.ev_avail = pyo.Param(steps, mutable=True, initialize=0.0)
    m.ev_need = pyo.Param(steps, mutable=True, initialize=0.0)
    m.ev_kw = pyo.Var(steps, bounds=(0, None))
    for t in steps:
        m.ev_kw[t].setub(p.max_kw * m.ev_avail[t])
    m.ev_stored = pyo.Var(steps, bounds=(0, None))  # stored by the end of step t in this horizon
    m.ev_short = pyo.Var(bounds=(0, None))
    m.ev_dyn = pyo.Constraint(steps, rule=lambda m, t: (
        m.ev_stored[t] - (m.ev_stored[t - 1] if t > 0 else 0) - p.eta * h.dt_h * m.ev_kw[t] == 0))
    m.ev_due = pyo.Constraint(steps, rule=lambda m, t: m.ev_stored[t] + m.ev_short >= m.ev_need[t])
    return DeviceTerms(power_kw=[m.ev_kw[t] for t in steps], cost=spec.short_usd_per_kwh * m.ev_short)


def inputs(spec: EvSpec, state: SiteState, fc: SiteForecast, h: Horizon) -> ParamValues:
    starts = step_starts(fc.start, h)
    avail = np.zeros(h.steps)
    need = np.zeros(h.steps)
    for s in fc.ev_sessions:
        if s.depart <= fc.start:
            continue
        share = np.array([s.plugged(t, t + h.step_s) for t in starts])
        avail = np.maximum(avail, share)
        # what this session still needs; a session under way has stored part of it already
        remaining = max(0.0, s.need_kwh - (state.ev_stored_kwh if s.arrive <= fc.start else 0.0))
        if remaining > 0:
            # the charger is a relay: whole steps at full power, not the planned share, so plan
            # a step's energy more (the car stops drawing once it has what it needs)
            remaining += spec.plan_margin_steps * spec.params.max_kw * spec.params.eta * h.dt_h
        due = starts + h.step_s >= s.depart  # steps ending at or after departure
        if not due.any():
            continue  # departs after the horizon: nothing is due inside it
        need += np.where(due, remaining, 0.0)
    return {"ev_avail": avail, "ev_need": need}

"""Home battery: state of charge with charge/discharge efficiencies and limits (edge.battery).

No charge/discharge exclusivity binary: at tender prices (buy >= sell > 0 here) doing both at
once only loses energy, so the LP never chooses it; the binary made a 288-step MILP ~4x slower
with the same cost (docs/measured.md). A small wear cost per discharged kWh keeps the battery from
cycling for gains below its degradation. The horizon ends at least at `soc_end_frac` so the
schedule does not sell the battery empty at the horizon's edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyomo.environ as pyo

from tendril_transactive.cloud.optimizer.devices import DeviceTerms, Horizon, ParamValues, SiteForecast, SiteState
from tendril_transactive.edge.battery import BatteryParams


@dataclass(frozen=True)
class BatterySpec:
    params: BatteryParams = field(default_factory=BatteryParams)
    wear_usd_per_kwh: float = 0.02
    soc_end_frac: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.wear_usd_per_kwh) and self.wear_usd_per_kwh >= 0):
            raise ValueError(f"wear cost must be >= 0, got {self.wear_usd_per_kwh}")
        if not self.params.soc_min_frac <= self.soc_end_frac <= self.params.soc_max_frac:
            raise ValueError(f"soc_end_frac {self.soc_end_frac} outside the battery's SOC limits")


def add(m: pyo.ConcreteModel, spec: BatterySpec, h: Horizon) -> DeviceTerms:
    p = spec.params
    steps = range(h.steps)
    m.bat_soc0 = pyo.Param(mutable=True, initialize=p.soc_min_kwh)
    m.bat_soc_end = pyo.Param(mutable=True, initialize=p.soc_min_kwh)
    m.bat_charge = pyo.Var(steps, bounds=(0, p.max_charge_kw))
    m.bat_discharge = pyo.Var(steps, bounds=(0, p.max_discharge_kw))
    m.bat_soc = pyo.Var(range(h.steps + 1))
    for t in range(1, h.steps + 1):
        m.bat_soc[t].setlb(p.soc_min_kwh)
        m.bat_soc[t].setub(p.soc_max_kwh)
    m.bat_init = pyo.Constraint(expr=m.bat_soc[0] == m.bat_soc0)
    m.bat_dyn = pyo.Constraint(steps, rule=lambda m, t: (
        m.bat_soc[t + 1] - m.bat_soc[t] - p.eta_charge * h.dt_h * m.bat_charge[t]
        + h.dt_h / p.eta_discharge * m.bat_discharge[t] == 0))
    m.bat_end = pyo.Constraint(expr=m.bat_soc[h.steps] >= m.bat_soc_end)
    return DeviceTerms(
        power_kw=[m.bat_charge[t] - m.bat_discharge[t] for t in steps],
        cost=spec.wear_usd_per_kwh * h.dt_h * sum(m.bat_discharge[t] for t in steps),
    )


def inputs(spec: BatterySpec, state: SiteState, fc: SiteForecast, h: Horizon) -> ParamValues:
    p = spec.params
    if not (math.isfinite(state.soc_kwh) and 0 <= state.soc_kwh <= p.capacity_kwh * 1.001):
        raise ValueError(f"battery soc {state.soc_kwh} kWh outside [0, {p.capacity_kwh}]")
    # The end target can always be reached: at worst by charging the whole horizon.
    # The simulated battery never leaves its limits; a reading a hair outside is meter noise,
    # and taking it literally would make the first step infeasible.
    soc0 = min(max(state.soc_kwh, p.soc_min_kwh), p.soc_max_kwh)
    reachable = soc0 + p.eta_charge * p.max_charge_kw * h.dt_h * h.steps
    return {"bat_soc0": soc0,
            "bat_soc_end": min(p.capacity_kwh * spec.soc_end_frac, reachable, p.soc_max_kwh)}

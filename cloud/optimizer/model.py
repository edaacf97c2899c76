"""A site's optimization model, assembled from the devices it has.

Objective: the cost of trading against the site's tenders given its position, plus device
penalties (comfort, EV/pump shortfall, battery wear). Per step t (energies in kWh):

    sum(device kW) dt + base dt  =  position[t] + buy_kwh[t] - sell_kwh[t]

`position` (subscription + forward buys - forward sells, already paid) is a block the site owns
whatever it uses; `buy_kwh` / `sell_kwh` are the forward transactions to request on the BUY /
SELL tenders, at `buy[t]` / `sell[t]` $/kWh. With buy >= sell the two are never both used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyomo.environ as pyo

from tendril_transactive.cloud.optimizer.devices import Horizon, ParamValues, SiteForecast, SiteState
from tendril_transactive.cloud.optimizer.devices import battery as battery_dev
from tendril_transactive.cloud.optimizer.devices import ev as ev_dev
from tendril_transactive.cloud.optimizer.devices import hvac as hvac_dev
from tendril_transactive.cloud.optimizer.devices import pump as pump_dev
from tendril_transactive.cloud.optimizer.devices import pv as pv_dev
from tendril_transactive.cloud.optimizer.devices.battery import BatterySpec
from tendril_transactive.cloud.optimizer.devices.ev import EvSpec
from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
from tendril_transactive.cloud.optimizer.devices.pv import PvSpec


@dataclass(frozen=True)
class SiteSpec:
    """A site's static description: which devices it has, with their parameters."""

    site: str
    hvac: HvacSpec | None = None
    pump: PumpSpec | None = None
    ev: EvSpec | None = None
    battery: BatterySpec | None = None
    pv: PvSpec | None = None

    def devices(self) -> list[str]:
        return [n for n in ("hvac", "pump", "ev", "battery", "pv") if getattr(self, n) is not None]


def build_model(spec: SiteSpec, h: Horizon, decide_pump: bool = False) -> pyo.ConcreteModel:
    """The site's Pyomo model with every input a mutable Param (see cloud.optimizer.devices)."""
    m = pyo.ConcreteModel(name=f"site_{spec.site}")
    steps = range(h.steps)
    m.buy = pyo.Param(steps, mutable=True, initialize=0.2)
    m.sell = pyo.Param(steps, mutable=True, initialize=0.18)
    m.position = pyo.Param(steps, mutable=True, initialize=0.0)
    m.base_kw = pyo.Param(steps, mutable=True, initialize=0.0)
    m.buy_kwh = pyo.Var(steps, bounds=(0, None))
    m.sell_kwh = pyo.Var(steps, bounds=(0, None))
    power: list[Any] = [0.0] * h.steps
    cost: Any = 0.0
    terms = []
    if spec.hvac is not None:
        terms.append(hvac_dev.add(m, spec.hvac, h))
    if spec.pump is not None:
        terms.append(pump_dev.add(m, spec.pump, h, decide_pump))
    if spec.ev is not None:
        terms.append(ev_dev.add(m, spec.ev, h))
    if spec.battery is not None:
        terms.append(battery_dev.add(m, spec.battery, h))
    if spec.pv is not None:
        terms.append(pv_dev.add(m, spec.pv, h))
    for term in terms:
        power = [p + q for p, q in zip(power, term.power_kw, strict=True)]
        cost = cost + term.cost
    m.balance = pyo.Constraint(steps, rule=lambda m, t: (
        h.dt_h * power[t] - m.buy_kwh[t] + m.sell_kwh[t] == m.position[t] - h.dt_h * m.base_kw[t]))
    m.cost = pyo.Objective(
        expr=sum(m.buy[t] * m.buy_kwh[t] - m.sell[t] * m.sell_kwh[t] for t in steps) + cost,
        sense=pyo.minimize)
    return m


def model_inputs(spec: SiteSpec, state: SiteState, fc: SiteForecast, h: Horizon,
                 decide_pump: bool = False) -> ParamValues:
    """Values for every mutable Param of build_model(spec, h, decide_pump); ValueError on bad input."""
    fc.check(h.steps)
    if not np.all(fc.base_kw >= 0):
        raise ValueError("base load forecast must be >= 0 kW")
    values: ParamValues = {
        "buy": np.asarray(fc.buy, float), "sell": np.asarray(fc.sell, float),
        "position": np.asarray(fc.position_kwh, float), "base_kw": np.asarray(fc.base_kw, float),
    }
    if spec.hvac is not None:
        values.update(hvac_dev.inputs(spec.hvac, state, fc, h))
    if spec.pump is not None:
        values.update(pump_dev.inputs(spec.pump, state, fc, h, decide_pump))
    if spec.ev is not None:
        values.update(ev_dev.inputs(spec.ev, state, fc, h))
    if spec.battery is not None:
        values.update(battery_dev.inputs(spec.battery, state, fc, h))
    if spec.pv is not None:
        values.update(pv_dev.inputs(spec.pv, state, fc, h))
    return values


def set_inputs(m: pyo.ConcreteModel, values: ParamValues) -> None:
    """Store input values into the model's mutable Params (the persistent-solver path)."""
    for name, value in values.items():
        param = getattr(m, name)
        if param.is_indexed():
            param.store_values(dict(enumerate(np.asarray(value, float).tolist())))
        else:
            param.set_value(float(value))

"""Rooftop PV: output from the irradiance forecast through edge.pv; not curtailed, no decision.

It enters the site's energy balance as negative load, so PV first serves the house and the
battery and only the rest is sold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo

from tendril_transactive.cloud.optimizer.devices import DeviceTerms, Horizon, ParamValues, SiteForecast, SiteState
from tendril_transactive.edge.pv import PvParams, power_kw


@dataclass(frozen=True)
class PvSpec:
    params: PvParams = field(default_factory=PvParams)


def add(m: pyo.ConcreteModel, spec: PvSpec, h: Horizon) -> DeviceTerms:
    m.pv_kw = pyo.Param(range(h.steps), mutable=True, initialize=0.0)
    return DeviceTerms(power_kw=[-m.pv_kw[t] for t in range(h.steps)])


def inputs(spec: PvSpec, state: SiteState, fc: SiteForecast, h: Horizon) -> ParamValues:
    return {"pv_kw": np.array([power_kw(float(g), spec.params) for g in fc.ghi_w_m2])}

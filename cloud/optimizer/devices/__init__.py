"""Device models for the site optimizer: each device is a small Pyomo component.

A device module has
  * a frozen spec dataclass (its static parameters, the same ones its edge/ physics uses),
  * `add(m, spec, h) -> DeviceTerms`: declares its mutable Params, Vars and Constraints on the
    site model and returns its electric power per step (kW drawn, + from the grid) and its cost,
  * `inputs(spec, state, forecast, h) -> dict`: the values of its mutable Params for one solve,
  * `schedule(...)`: its part of the solution, per step.

Everything that changes between solves (prices, forecasts, device state) is a mutable Param
and enters only right-hand sides, bounds and objective coefficients; the constraint matrix
depends on static parameters alone. That is what lets cloud.optimizer.compile turn a model into a
matrix once and re-solve by updating vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tendril_transactive.edge.ev import EvSession

FloatArray = npt.NDArray[np.float64]
ParamValues = dict[str, "FloatArray | float"]


@dataclass(frozen=True)
class Horizon:
    steps: int
    step_s: float

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"a horizon needs at least one step, got {self.steps}")
        if not (math.isfinite(self.step_s) and self.step_s > 0):
            raise ValueError(f"step_s must be > 0, got {self.step_s}")

    @property
    def dt_h(self) -> float:
        return self.step_s / 3600.0


@dataclass
class DeviceTerms:
    power_kw: list[Any]  # Pyomo expression per step: electric power drawn (+) or fed in (-)
    cost: Any = 0.0  # Pyomo expression added to the objective ($)


@dataclass(frozen=True)
class SiteState:
    """What telemetry says now; fields of devices a site lacks are ignored."""

    t_in_c: float = 20.5
    soc_kwh: float = 6.75
    ev_stored_kwh: float = 0.0  # energy already stored in the current plug-in session
    pump_on: bool = False
    pump_done_h: float = 0.0  # pump run time so far in the current day


@dataclass(frozen=True)
class SiteForecast:
    """Everything known about the horizon's steps (arrays of `steps` values)."""

    start: float  # unix seconds at the start of step 0
    buy: FloatArray  # $/kWh, BUY tender (or its forecast) per step
    sell: FloatArray  # $/kWh, SELL tender per step
    position_kwh: FloatArray  # subscription + forward buys - forward sells, per step
    base_kw: FloatArray  # uncontrolled household load
    t_out_c: FloatArray
    ghi_w_m2: FloatArray
    ev_sessions: tuple[EvSession, ...] = ()
    pump_plan: FloatArray | None = None  # share of each step the pump runs, when it is not decided
    pump_need_h: float = 0.0  # pump hours still needed in the horizon, when it is decided
    extra: Mapping[str, Any] = field(default_factory=dict)

    def check(self, steps: int) -> None:
        for name in ("buy", "sell", "position_kwh", "base_kw", "t_out_c", "ghi_w_m2"):
            arr = getattr(self, name)
            if len(arr) != steps:
                raise ValueError(f"forecast {name} has {len(arr)} values for {steps} steps")
            if not np.all(np.isfinite(arr)):
                bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
                raise ValueError(f"forecast {name} has non-finite values at steps {bad}")
        if np.any(self.sell > self.buy + 1e-12):
            t = int(np.flatnonzero(self.sell > self.buy + 1e-12)[0])
            raise ValueError(f"sell price above buy price at step {t} ({self.sell[t]} > {self.buy[t]}): "
                             "buying and selling the same energy would pay without limit")
        if self.pump_plan is not None and len(self.pump_plan) != steps:
            raise ValueError(f"pump_plan has {len(self.pump_plan)} values for {steps} steps")


def step_starts(start: float, h: Horizon) -> FloatArray:
    return start + np.arange(h.steps, dtype=np.float64) * h.step_s

"""A simulated home as `tendril agent` sees a registered site: a SiteConfig and a SiteAgent
(cloud.agent.core), with the simulation's plant in place of firmware telemetry.

What the wire cannot carry the simulation knows exactly, and says so through the core's own
hooks rather than a copy of its logic: the house's state (`SiteAgent.observe_state`), the base
load over the horizon (`SiteAgent.base_load`), the car's real plug-in sessions (an EvPlan that
returns them) and the home's subscription hour by hour (a SiteConfig whose `subscribed_kwh`
reads the run's series; the registry's 24 numbers cannot say weekday from weekend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tendril_transactive.cloud.agent.config import EvPlan, SiteConfig
from tendril_transactive.cloud.agent.core import AgentOptions, SiteAgent
from tendril_transactive.cloud.optimizer.devices import FloatArray
from tendril_transactive.cloud.sim.fleet import LIMITS, HouseState, SimHome
from tendril_transactive.cloud.sim.inputs import STEP_S
from tendril_transactive.cloud.timefmt import utc_time
from tendril_transactive.edge.ev import EvSession

AGENT_PARTY = "sim-agent"  # the party that transacts for every simulated home


@dataclass(frozen=True)
class RunSubscription(SiteConfig):
    """Subscribed kWh per UTC hour from `sub_start` (the run's own series)."""

    sub_start: float = 0.0
    sub_hourly: tuple[float, ...] = ()

    def subscribed_kwh(self, start: float, duration_s: float) -> float:
        total, t, end = 0.0, start, start + duration_s
        while t < end - 1e-9:
            h = math.floor((t - self.sub_start) / 3600)
            seg = min(end, self.sub_start + (h + 1) * 3600) - t
            if 0 <= h < len(self.sub_hourly):
                total += self.sub_hourly[h] * seg / 3600
            t += seg
        return total


@dataclass(frozen=True)
class KnownSessions(EvPlan):
    """The car's actual plug-in sessions (the sim draws them per day)."""

    known: tuple[EvSession, ...] = ()

    def sessions(self, start: float, end: float) -> tuple[EvSession, ...]:
        return tuple(s for s in self.known if s.depart > start and s.arrive < end)


@dataclass(frozen=True)
class StepSeries:
    """A per-step series on the run's 5-minute grid, served at any multiple of the step (mean)."""

    start: float
    values: tuple[FloatArray, ...]  # one or two arrays

    def _slice(self, a: FloatArray, start: float, steps: int, step_s: float) -> FloatArray:
        k = round((start - self.start) / STEP_S)
        per = round(step_s / STEP_S)
        if k < 0 or per < 1 or k + steps * per > len(a):
            raise ValueError(f"series asked for {steps} x {step_s} s from {utc_time(start)}: outside the run's data")
        out: FloatArray = a[k:k + steps * per].reshape(steps, per).mean(axis=1)
        return out


@dataclass(frozen=True)
class Weather(StepSeries):
    def series(self, start: float, steps: int, step_s: float) -> tuple[FloatArray, FloatArray]:
        return self._slice(self.values[0], start, steps, step_s), self._slice(self.values[1], start, steps, step_s)


@dataclass(frozen=True)
class BaseLoadForecast(StepSeries):
    def series(self, start: float, steps: int, step_s: float) -> FloatArray:
        return self._slice(self.values[0], start, steps, step_s)


def home_agent(home: SimHome, start: float, sub_hourly: FloatArray, weather: Weather, base_kw: FloatArray,
               time_limit_s: float | None) -> SiteAgent:
    """The SiteAgent `tendril agent` would run for this home; relay device ids are the loads."""
    relays = {r: r for r in home.relays()}
    ev_plan = KnownSessions(known=tuple(home.sessions)) if home.spec.ev is not None else None
    cfg = RunSubscription(home.site, AGENT_PARTY, home.spec, relays, ev_plan=ev_plan,
                          limits={r: LIMITS[r] for r in relays},
                          sub_start=start, sub_hourly=tuple(float(v) for v in sub_hourly))
    agent = SiteAgent(cfg, AgentOptions(time_limit_s=time_limit_s), weather)
    agent.base_load = BaseLoadForecast(start, (np.asarray(base_kw, float),))
    return agent


def measured(home: SimHome, st: HouseState, pump_on: int, pump_done_h: float) -> dict[str, float | bool]:
    """What the plant knows of the house that the optimizer's state has (the wire would not)."""
    out: dict[str, float | bool] = {}
    spec = home.spec
    if spec.hvac is not None:
        out["t_in_c"] = st.t_in_c
    if spec.battery is not None:
        out["soc_kwh"] = st.soc_kwh
    if spec.ev is not None:
        out["ev_stored_kwh"] = st.ev_stored_kwh
    if spec.pump is not None:
        out["pump_on"] = bool(pump_on)
        out["pump_done_h"] = pump_done_h
    return out

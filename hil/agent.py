"""The bench site's agent: the same per-site core `tendril agent` runs (cloud.agent.core.SiteAgent),
planning through the Planner seam (an InProcessPlanner, as one agent worker does), for a site
that has the device under test as its one relay, switching the scenario's plant load.

The bench plays the market with real wire TENDER messages (cloud.market.tenders.build_tenders)
published through the bench broker; the agent reads them as they come back from the broker and
its decision goes to the device as a command signed by the bench's Dispatcher. Indoor
temperature is not on the wire; the bench knows it from its plant and says so through the
core's `observe_state` hook, as `tendril simulate` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tendril_transactive.cloud.agent.config import EvPlan, SiteConfig
from tendril_transactive.cloud.agent.core import AgentOptions, Decision, SiteAgent
from tendril_transactive.cloud.agent.planner import InProcessPlanner
from tendril_transactive.cloud.market.tenders import TenderConfig, build_tenders
from tendril_transactive.cloud.optimizer.devices import FloatArray
from tendril_transactive.cloud.optimizer.devices.ev import EvSpec
from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.hil.plant import PlantConfig

AGENT_PARTY = "hil-agent"
FEEDER = "hil-feeder"
RT_S = 300


@dataclass(frozen=True)
class FixedOutdoor:
    """The plant's weather: constant outdoor temperature, night."""

    t_out_c: float

    def series(self, start: float, steps: int, step_s: float) -> tuple[FloatArray, FloatArray]:
        return np.full(steps, self.t_out_c), np.zeros(steps)


def site_spec(site: str, plant: PlantConfig) -> SiteSpec:
    """What the agent plans for the plant's load (the plant heats only; it has no cooling)."""
    if plant.load == "hvac":
        return SiteSpec(site, hvac=HvacSpec(thermal=plant.thermal, can_cool=False))
    if plant.load == "ev":
        return SiteSpec(site, ev=EvSpec(params=plant.ev))
    return SiteSpec(site, pump=PumpSpec(kw=plant.pump_kw))


def site_config(site: str, device: str, plant: PlantConfig) -> SiteConfig:
    ev_plan = EvPlan(arrive_hour=0.0, depart_hour=23.99, need_kwh=plant.ev_need_kwh) if plant.load == "ev" else None
    return SiteConfig(site, AGENT_PARTY, site_spec(site, plant), {device: plant.load}, ev_plan=ev_plan)


class BenchAgent:
    def __init__(self, site: str, device: str, plant: PlantConfig, time_limit_s: float = 2.0) -> None:
        self.cfg = site_config(site, device, plant)
        self.device = device
        self.plant = plant
        self.options = AgentOptions(time_limit_s=time_limit_s)
        self.agent = SiteAgent(self.cfg, self.options, FixedOutdoor(plant.t_out_c))
        self.planner = InProcessPlanner({site: self.cfg.spec}, time_limit_s)
        self.tender_config = TenderConfig()

    # -------------------------------------------------------------- the market's side

    def tenders(self, market: str, start: float, duration_s: int, lmp: float, now: float) -> list[dict[str, Any]]:
        """The BUY and SELL tenders of one interval, as the market builds them."""
        interval = PriceInterval(int(start), duration_s, lmp, market)
        return build_tenders(self.cfg.site, FEEDER, [interval], market, now, self.tender_config, duration_s)

    def day_ahead(self, now: float, hours: int, lmp: float) -> list[dict[str, Any]]:
        """Hourly tenders from the current hour on: the prices the agent expects after the
        interval it is deciding."""
        first = int(now - now % 3600)
        return [t for h in range(hours) for t in self.tenders("DAM", first + h * 3600, 3600, lmp, now)]

    # -------------------------------------------------------------- the agent

    def warm_up(self, now: float, lmp: float) -> None:
        """Build the site's real-time model once (a running agent has it warm), on a copy of the
        agent so the bench's agent decides nothing here."""
        scratch = SiteAgent(self.cfg, self.options, self.agent.outdoor)
        for t in self.day_ahead(now, 26, lmp) + self.tenders("RTM", int(now), RT_S, lmp, now):
            scratch.on_tender(t, now)
        job, _ = scratch.rt_job(now, int(now))
        self.planner.plan([job])

    def observe_plant(self, now: float, t_in_c: float, ev_stored_kwh: float) -> None:
        values: dict[str, float | bool] = {}
        if self.plant.load == "hvac":
            values["t_in_c"] = t_in_c
        elif self.plant.load == "ev":
            values["ev_stored_kwh"] = ev_stored_kwh
        self.agent.observe_state(now, **values)

    def on_tenders(self, msgs: Sequence[dict[str, Any]], now: float) -> float | None:
        ready = None
        for msg in msgs:
            ready = self.agent.on_tender(msg, now) or ready
        return ready

    def decide(self, now: float, start: float) -> tuple[Decision, float]:
        """Plan the interval and decide it; (decision, solve seconds)."""
        job, notes = self.agent.rt_job(now, start)
        result = self.planner.plan([job])[0]
        solve_s = result.schedule.solve_s if result.schedule is not None else float("nan")
        return self.agent.decide(now, start, result, notes), solve_s

    def close(self) -> None:
        self.planner.close()

"""The simulated house the device controls, stepped in lock-step with it.

The physics is the optimizer's own (edge.thermal for the heat pump and house, edge.ev for the
charger, edge.site for the measured household base load): one implementation, so what the
bench proves is what the plan assumed. The relay output drives the load; the plant gives back
the site power for the meter, the indoor temperature and whether the EV is plugged in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tendril_transactive.edge import ev, thermal
from tendril_transactive.edge.site import SiteModel

LOADS = ("hvac", "ev", "pump")


@dataclass(frozen=True)
class PlantConfig:
    load: str = "hvac"  # what the relay switches: hvac (heating), ev (charger) or pump
    t_in_c: float = 20.0
    t_out_c: float = 5.0
    pump_kw: float = 1.5
    ev_need_kwh: float = 20.0
    ev_plugged: bool = True
    seed: int = 0
    thermal: thermal.ThermalParams = field(default_factory=thermal.ThermalParams)
    ev: ev.EvParams = field(default_factory=ev.EvParams)

    def __post_init__(self) -> None:
        if self.load not in LOADS:
            raise ValueError(f"plant load must be one of {', '.join(LOADS)}, got {self.load!r}")
        for name in ("t_in_c", "t_out_c", "pump_kw", "ev_need_kwh"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"plant {name} must be finite")

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PlantConfig:
        known = {"load", "t_in_c", "t_out_c", "pump_kw", "ev_need_kwh", "ev_plugged", "seed"}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown plant keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**doc)

    def relay_kw(self) -> float:
        if self.load == "hvac":
            return self.thermal.hvac_kw
        if self.load == "ev":
            return self.ev.max_kw
        return self.pump_kw


@dataclass(frozen=True)
class PlantSample:
    t: float  # device clock
    t_in_c: float
    relay: int
    power_w: float
    ev_stored_kwh: float
    price: float | None


class HousePlant:
    def __init__(self, config: PlantConfig, start: float) -> None:
        self.config = config
        self.site = SiteModel("hil", seed=config.seed, relay_load_w=config.relay_kw() * 1000.0)
        self.t = start
        self.t_in_c = config.t_in_c
        self.ev_stored_kwh = 0.0
        self.relay = 0
        self.price: float | None = None
        self.samples: list[PlantSample] = []

    def step(self, now: float, relay: int) -> PlantSample:
        """Advance to `now` with the relay as it was over the step (zero-order hold), then switch it."""
        dt = now - self.t
        if dt > 0:
            on = float(self.relay)
            heat = on if self.config.load == "hvac" else 0.0
            self.t_in_c = thermal.step(self.t_in_c, self.config.t_out_c, heat, 0.0, self.config.thermal, dt)
            if self.config.load == "ev" and self.config.ev_plugged and self.relay:
                self.ev_stored_kwh += ev.stored_kwh(self.config.ev.max_kw, self.config.ev, dt)
            self.t = now
        self.relay = 1 if relay else 0
        sample = PlantSample(now, self.t_in_c, self.relay, self.site.power_w(now, self.relay), self.ev_stored_kwh,
                             self.price)
        self.samples.append(sample)
        return sample

    def inputs(self, sample: PlantSample) -> dict[str, Any]:
        """What the device's sensors read now (bench_link OP_SET fields)."""
        return {"power_w": round(sample.power_w, 3), "temp_c": round(sample.t_in_c, 4),
                "ev_plugged": 1 if self.config.ev_plugged else 0}

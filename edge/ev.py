"""An EV on a home charger: plugged in from arrival to departure, needing energy by departure.

The charger is a relay-switched EVSE: it draws `max_kw` when on. Energy reaches the battery
through `eta` (charger and battery losses). One implementation for simulator and optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EvParams:
    max_kw: float = 7.2  # a 30 A / 240 V level-2 charger
    eta: float = 0.9

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_kw) and self.max_kw > 0):
            raise ValueError(f"max_kw must be finite and > 0, got {self.max_kw}")
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {self.eta}")


@dataclass(frozen=True)
class EvSession:
    """One plug-in: [arrive, depart) unix seconds, `need_kwh` into the battery by departure."""

    arrive: float
    depart: float
    need_kwh: float

    def __post_init__(self) -> None:
        if not self.depart > self.arrive:
            raise ValueError(f"departure {self.depart} is not after arrival {self.arrive}")
        if not (math.isfinite(self.need_kwh) and self.need_kwh >= 0):
            raise ValueError(f"need_kwh must be finite and >= 0, got {self.need_kwh}")

    def plugged(self, t0: float, t1: float) -> float:
        """Share of [t0, t1) the car is plugged in."""
        overlap = min(t1, self.depart) - max(t0, self.arrive)
        return max(0.0, overlap) / (t1 - t0)


def stored_kwh(charge_kw: float, p: EvParams, dt_s: float) -> float:
    """Energy into the car's battery from `charge_kw` at the wall for `dt_s`."""
    return charge_kw * p.eta * dt_s / 3600.0


def wall_kw_for(kwh_to_store: float, p: EvParams, dt_s: float) -> float:
    """Wall power that stores `kwh_to_store` in `dt_s`, capped at the charger's rating."""
    return min(p.max_kw, max(0.0, kwh_to_store) * 3600.0 / (p.eta * dt_s))

"""Rooftop PV output from global horizontal irradiance: a linear model with a derate.

Power = kW_dc * GHI / 1000 W/m2 * derate. Horizontal irradiance ignores tilt and orientation,
the derate covers inverter, wiring, soiling and temperature losses; good to ~15 % for a daily
energy, which is what a house's schedule needs. One implementation for simulator and optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STC_W_M2 = 1000.0


@dataclass(frozen=True)
class PvParams:
    kw_dc: float = 5.0
    derate: float = 0.8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kw_dc) and self.kw_dc >= 0):
            raise ValueError(f"kw_dc must be finite and >= 0, got {self.kw_dc}")
        if not 0 < self.derate <= 1:
            raise ValueError(f"derate must be in (0, 1], got {self.derate}")


def power_kw(ghi_w_m2: float, p: PvParams) -> float:
    if not (math.isfinite(ghi_w_m2) and ghi_w_m2 >= 0):
        raise ValueError(f"irradiance must be finite and >= 0, got {ghi_w_m2}")
    return p.kw_dc * ghi_w_m2 / STC_W_M2 * p.derate

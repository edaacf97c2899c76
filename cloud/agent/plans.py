"""A schedule as a small JSON object (the agent's state file keeps its last plans), and back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tendril_transactive.cloud.optimizer.schedule import SiteSchedule

_ARRAYS = ("buy_kwh", "sell_kwh", "hvac_heat", "hvac_cool", "temp_c", "pump_on", "ev_kw", "battery_kw", "soc_kwh")


def schedule_to_json(s: SiteSchedule | None) -> dict[str, Any] | None:
    if s is None:
        return None
    out: dict[str, Any] = {"start": s.start, "step_s": s.step_s, "objective_usd": s.objective_usd}
    for name in _ARRAYS:  # vectorised: a per-element round() was most of an agent's state writes
        out[name] = np.round(np.asarray(getattr(s, name), dtype=float), 5).tolist()
    return out


def schedule_json_text(s: SiteSchedule | None) -> str:
    """`schedule_to_json` encoded (compact), for splicing into a state file."""
    return json.dumps(schedule_to_json(s), separators=(",", ":"))


def schedule_from_json(site: str, data: dict[str, Any] | None) -> SiteSchedule | None:
    """None for a missing or unusable record: the agent then plans afresh."""
    if not isinstance(data, dict):
        return None
    try:
        arrays = {name: np.asarray(data[name], dtype=float) for name in _ARRAYS}
        n = len(arrays["buy_kwh"])
        if n == 0 or any(len(a) != n for a in arrays.values()):
            return None
        return SiteSchedule(site=site, start=float(data["start"]), step_s=float(data["step_s"]),
                            objective_usd=float(data["objective_usd"]), comfort_violation_ch=0.0,
                            ev_short_kwh=0.0, pump_short_h=0.0, solve_s=0.0, warm=False,
                            notes=("restored",), **arrays)
    except (KeyError, TypeError, ValueError):
        return None

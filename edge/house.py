"""A simulated house with several relay-switched loads, as the unix-port firmware sees it.

The same file "pins" as edge.plant.FilePlant: each relay node writes its own relay file ("0"/"1"),
the meter node reads one power file (watts). `step(now)` closes the loop once: read every relay,
advance the physics over the time since the last step with the relays as they were (zero-order
hold), write the site's power for the meter.

Loads and their physics (the optimizer's own, edge.thermal / edge.ev, so the plan and the plant
agree): a pool pump (constant kW), a heat pump heating the house (thermal RC model, outdoor
temperature from a daily curve), an EV charger (draws while the car is plugged in and not full).
Base load is the measured household series of edge.site.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tendril_transactive.edge import ev, thermal
from tendril_transactive.edge.site import LOCAL_TZ, SiteModel

LOADS = ("pump", "hvac", "ev")


def outdoor_c(t_unix: float, mean_c: float = 13.0, swing_c: float = 5.0) -> float:
    """A March day in coastal California: coldest at 5 am, warmest at 3 pm (a smooth curve, not data)."""
    local = datetime.fromtimestamp(t_unix, LOCAL_TZ)
    hour = local.hour + local.minute / 60
    return mean_c + swing_c * math.cos((hour - 15.0) / 24.0 * 2 * math.pi)


@dataclass(frozen=True)
class EvPlan:
    """When the car is home each day (local hours; departure next morning) and what it needs."""

    arrive_h: float = 18.0
    depart_h: float = 7.0
    need_kwh: float = 12.0

    def plugged(self, t_unix: float) -> bool:
        local = datetime.fromtimestamp(t_unix, LOCAL_TZ)
        hour = local.hour + local.minute / 60
        return hour >= self.arrive_h or hour < self.depart_h

    def session_key(self, t_unix: float) -> str:
        """The plug-in session a time belongs to: the date of its arrival evening."""
        local = datetime.fromtimestamp(t_unix - self.depart_h * 3600, LOCAL_TZ)
        return local.strftime("%Y-%m-%d")


@dataclass
class HouseState:
    t_in_c: float = 20.5
    ev_session: str = ""
    ev_stored_kwh: float = 0.0
    relays: dict[str, int] = field(default_factory=dict)
    power_w: float = 0.0


class FileHouse:
    def __init__(self, model: SiteModel, power_file: Path, relay_files: dict[str, Path], pump_kw: float = 1.5,
                 thermal_params: thermal.ThermalParams | None = None, ev_params: ev.EvParams | None = None,
                 ev_plan: EvPlan | None = None, t_in_c: float = 20.5) -> None:
        unknown = set(relay_files) - set(LOADS)
        if unknown:
            raise ValueError(f"unknown loads {sorted(unknown)}; a house has {', '.join(LOADS)}")
        self.model = model
        self.power_file = Path(power_file)
        self.relay_files = {k: Path(v) for k, v in relay_files.items()}
        self.pump_kw = pump_kw
        self.thermal = thermal_params or thermal.ThermalParams()
        self.ev = ev_params or ev.EvParams()
        self.ev_plan = ev_plan or EvPlan()
        self.state = HouseState(t_in_c=t_in_c, relays=dict.fromkeys(self.relay_files, 0))
        self._t: float | None = None
        self.garbage_reads = 0

    def _read(self, load: str) -> int:
        try:
            text = self.relay_files[load].read_bytes().strip()
        except FileNotFoundError:
            return 0  # firmware not started yet: the relay is open
        if text in (b"0", b"1"):
            return int(text)
        self.garbage_reads += 1
        return self.state.relays.get(load, 0)

    def load_kw(self, load: str, t: float) -> float:
        """What `load` draws at `t` with its relay closed."""
        if load == "pump":
            return self.pump_kw
        if load == "hvac":
            return self.thermal.hvac_kw
        full = self.state.ev_stored_kwh >= self.ev_plan.need_kwh
        return self.ev.max_kw if self.ev_plan.plugged(t) and not full else 0.0

    def step(self, now: float) -> float:
        """Advance the physics to `now`, read the relays, write the meter's power; returns watts."""
        st = self.state
        if self._t is not None and now > self._t:
            dt = now - self._t
            heat = float(st.relays.get("hvac", 0))
            st.t_in_c = thermal.step(st.t_in_c, outdoor_c(self._t), heat, 0.0, self.thermal, dt)
            if st.relays.get("ev") and self.load_kw("ev", self._t) > 0:
                st.ev_stored_kwh = min(self.ev_plan.need_kwh,
                                       st.ev_stored_kwh + ev.stored_kwh(self.ev.max_kw, self.ev, dt))
        session = self.ev_plan.session_key(now)
        if session != st.ev_session:  # a new evening: the car comes home empty of today's need
            st.ev_session, st.ev_stored_kwh = session, 0.0
        self._t = now
        st.relays = {load: self._read(load) for load in self.relay_files}
        power = self.model.base_w(now) + 1000.0 * sum(self.load_kw(k, now) for k, on in st.relays.items() if on)
        self._write_power(power)
        st.power_w = power
        return power

    def _write_power(self, power_w: float) -> None:
        tmp = self.power_file.with_name(f".{self.power_file.name}.tmp")
        tmp.write_text(f"{power_w:.3f}")  # fixed point: the firmware's parser takes no exponent
        os.replace(tmp, self.power_file)

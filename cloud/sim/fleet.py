"""Simulated homes for `tendril simulate`: what each has, and the physics that moves it.

A house is stepped with the edge/ physics the optimizer's constraints are built from
(edge.thermal, edge.battery, edge.ev, edge.pv); its base load is the real UCI household
series (edge.site), its weather the TMY3 slice (cloud.sources.weather). Homes differ by seed: which
devices they have, envelope, EV habits. The same homes run with and without the optimizer.

The baseline (no optimizer) is what the devices do on their own: a thermostat at a fixed
setpoint with hysteresis, the pool pump on a timer, the EV charging at full power from
plug-in, the battery (where there is one) in self-consumption mode.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tendril_transactive.cloud.agent.dispatch import SafetyLimits
from tendril_transactive.cloud.optimizer.devices.battery import BatterySpec
from tendril_transactive.cloud.optimizer.devices.ev import EvSpec
from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
from tendril_transactive.cloud.optimizer.devices.pv import PvSpec
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.edge import battery, ev, pv, thermal
from tendril_transactive.edge.ev import EvSession
from tendril_transactive.edge.site import SiteModel
from tendril_transactive.edge.thermal import ThermalParams

LOCAL = ZoneInfo("America/Los_Angeles")
RELAYS = ("hvac", "pump", "ev")
# Relay safety limits (enforced by dispatch and by the firmware): compressor and motor
# anti-short-cycle; a pump motor is allowed few starts a day.
LIMITS = {
    "hvac": SafetyLimits(min_on_s=300, min_off_s=300, max_switches_per_day=288),
    "pump": SafetyLimits(min_on_s=900, min_off_s=900, max_switches_per_day=8),
    "ev": SafetyLimits(min_on_s=300, min_off_s=300, max_switches_per_day=288),
}
SETPOINT_C = 21.0  # baseline thermostat
HYSTERESIS_C = 0.5
PUMP_TIMER_START_H = 10  # baseline pump timer: 10:00 for hours_per_day


@dataclass
class HouseState:
    t_in_c: float
    soc_kwh: float = 0.0
    ev_stored_kwh: float = 0.0  # in the current session
    ev_session: int = -1  # index of the session the stored energy belongs to
    heating: bool = False  # baseline thermostat state
    cooling: bool = False
    ev_short_kwh: float = 0.0  # energy the car left without, all sessions so far


@dataclass
class SimHome:
    spec: SiteSpec
    load: SiteModel
    sessions: list[EvSession] = field(default_factory=list)
    initial: HouseState = field(default_factory=lambda: HouseState(SETPOINT_C))

    @property
    def site(self) -> str:
        return self.spec.site

    def relays(self) -> list[str]:
        return [r for r in RELAYS if getattr(self.spec, r) is not None]

    def session_at(self, t: float) -> int:
        for i, s in enumerate(self.sessions):
            if s.arrive <= t < s.depart:
                return i
        return -1


def _sessions(rng: random.Random, start: float, days: int) -> list[EvSession]:
    """Evening plug-ins, morning departures. The last evening has none: a car that leaves after
    the run would let the optimizer push its charging out of the accounted window."""
    day0 = datetime.fromtimestamp(start, LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    for d in range(-1, days - 1):
        day = day0 + timedelta(days=d)
        arrive = day.replace(hour=17) + timedelta(minutes=rng.randint(0, 180))
        depart = (day + timedelta(days=1)).replace(hour=6) + timedelta(minutes=rng.randint(30, 150))
        out.append(EvSession(arrive.timestamp(), depart.timestamp(), round(rng.uniform(8.0, 24.0), 1)))
    return out


def make_homes(count: int, start: float, days: int) -> list[SimHome]:
    """`count` homes, the same for the same arguments. Every home has a heat pump; about half
    a pool pump, two thirds an EV, half rooftop PV and a quarter a battery (with PV)."""
    if count < 1:
        raise ValueError(f"need at least one site, got {count}")
    homes = []
    for i in range(count):
        rng = random.Random(1000 + i)
        envelope = ThermalParams(r_c_per_kw=rng.uniform(2.5, 4.0), c_kwh_per_c=rng.uniform(2.5, 4.0),
                                 hvac_kw=rng.choice((2.5, 3.0, 3.5)), gains_kw=rng.uniform(0.3, 0.7))
        has_pv = i % 2 == 0
        spec = SiteSpec(
            site=f"home-{i + 1:04d}",
            hvac=HvacSpec(thermal=envelope),
            pump=PumpSpec(kw=rng.choice((1.1, 1.5)), hours_per_day=rng.choice((4.0, 6.0))) if i % 2 == 1 else None,
            ev=EvSpec() if i % 3 != 2 else None,
            battery=BatterySpec() if i % 4 == 0 else None,
            pv=PvSpec() if has_pv else None,
        )
        home = SimHome(spec, SiteModel(spec.site, seed=i, relay_load_w=0.0))
        if spec.ev is not None:
            home.sessions = _sessions(rng, start, days)
        soc = spec.battery.params.capacity_kwh * 0.5 if spec.battery else 0.0
        home.initial = HouseState(t_in_c=rng.uniform(20.6, 21.4), soc_kwh=soc)
        homes.append(home)
    return homes


# ----------------------------------------------------------------------------- physics


@dataclass(frozen=True)
class StepResult:
    grid_kwh: float  # + imported, - exported over the step
    hvac_on: int
    pump_on: int
    ev_kw: float
    battery_kw: float


def step_house(home: SimHome, st: HouseState, t: float, dt_s: float, t_out: float, ghi: float,
               hvac_on: int, heat_mode: bool, pump_on: int, ev_on: int, battery_kw: float) -> StepResult:
    """Advance one house by `dt_s` with the given relay states and battery setpoint (mutates st)."""
    spec = home.spec
    dt_h = dt_s / 3600.0
    kw = home.load.base_w(t) / 1000.0
    hvac_kw = 0.0
    if spec.hvac is not None:
        heat = float(hvac_on) if heat_mode else 0.0
        cool = 0.0 if heat_mode else float(hvac_on)
        st.t_in_c = thermal.step(st.t_in_c, t_out, heat, cool, spec.hvac.thermal, dt_s)
        hvac_kw = thermal.electric_kw(heat, cool, spec.hvac.thermal)
    pump_kw = spec.pump.kw * pump_on if spec.pump is not None else 0.0
    ev_kw = 0.0
    if spec.ev is not None:
        k = home.session_at(t)
        if k != st.ev_session:  # a new plug-in (or the car left): start counting afresh
            if st.ev_session >= 0:
                st.ev_short_kwh += max(0.0, home.sessions[st.ev_session].need_kwh - st.ev_stored_kwh)
            st.ev_session, st.ev_stored_kwh = k, 0.0
        if k >= 0 and ev_on:
            # the car takes what it still wants, at most the charger's rating
            want = home.sessions[k].need_kwh - st.ev_stored_kwh
            ev_kw = ev.wall_kw_for(want, spec.ev.params, dt_s)
            st.ev_stored_kwh += ev.stored_kwh(ev_kw, spec.ev.params, dt_s)
    bat_kw = 0.0
    if spec.battery is not None:
        bat_kw, st.soc_kwh = battery.apply(st.soc_kwh, battery_kw, spec.battery.params, dt_s)
    pv_kw = pv.power_kw(ghi, spec.pv.params) if spec.pv is not None else 0.0
    grid = (kw + hvac_kw + pump_kw + ev_kw + bat_kw - pv_kw) * dt_h
    return StepResult(grid, hvac_on, pump_on, ev_kw, bat_kw)


# ----------------------------------------------------------------------------- baseline


Decisions = tuple[int, bool, int, int, float]  # hvac_on, heat_mode, pump_on, ev_on, battery_kw


def baseline_decisions(home: SimHome, st: HouseState, t: float, dt_s: float, ghi: float) -> Decisions:
    """(hvac_on, heat_mode, pump_on, ev_on, battery_kw) of the devices on their own."""
    spec = home.spec
    hvac_on, heat_mode = 0, True
    if spec.hvac is not None:
        lo, hi = SETPOINT_C - HYSTERESIS_C, SETPOINT_C + HYSTERESIS_C
        cool_at = spec.hvac.t_max_c
        st.heating = spec.hvac.can_heat and (st.t_in_c < lo or (st.heating and st.t_in_c < hi))
        st.cooling = spec.hvac.can_cool and (st.t_in_c > cool_at or (st.cooling and st.t_in_c > cool_at - 1.0))
        hvac_on = int(st.heating or st.cooling)
        heat_mode = not st.cooling
    pump_on = 0
    if spec.pump is not None:
        local = datetime.fromtimestamp(t, LOCAL)
        hour = local.hour + local.minute / 60
        pump_on = int(PUMP_TIMER_START_H <= hour < PUMP_TIMER_START_H + spec.pump.hours_per_day)
    ev_on = 1 if spec.ev is not None and home.session_at(t) >= 0 else 0
    bat_kw = 0.0
    if spec.battery is not None:
        # self-consumption: soak up PV surplus, cover the rest of the house
        load = home.load.base_w(t) / 1000.0 + (spec.hvac.thermal.hvac_kw * hvac_on if spec.hvac else 0.0)
        if spec.pump is not None:
            load += spec.pump.kw * pump_on
        surplus = (pv.power_kw(ghi, spec.pv.params) if spec.pv else 0.0) - load
        bat_kw = surplus
    return hvac_on, heat_mode, pump_on, ev_on, bat_kw


def fresh_state(home: SimHome) -> HouseState:
    return replace(home.initial)

"""Each device constraint binds: checked on the solved schedule against the edge/ physics."""

from __future__ import annotations

import numpy as np
import pytest

from tendril_transactive.cloud.optimizer.devices import Horizon, SiteState
from tendril_transactive.cloud.optimizer.devices.battery import BatterySpec
from tendril_transactive.cloud.optimizer.devices.ev import EvSpec
from tendril_transactive.cloud.optimizer.devices.hvac import HvacSpec
from tendril_transactive.cloud.optimizer.devices.pump import PumpSpec
from tendril_transactive.cloud.optimizer.devices.pv import PvSpec
from tendril_transactive.cloud.optimizer.horizon import DAY_AHEAD, REAL_TIME, SitePlanner
from tendril_transactive.cloud.optimizer.model import SiteSpec
from tendril_transactive.edge import battery, thermal
from tendril_transactive.edge.battery import BatteryParams
from tendril_transactive.edge.ev import EvParams, EvSession
from tests.unit.opt_fixtures import START, forecast

pytestmark = pytest.mark.unit
RT = REAL_TIME


def test_indoor_temperature_follows_the_shared_thermal_physics_and_stays_in_band() -> None:
    spec = SiteSpec("h", hvac=HvacSpec())
    sched = SitePlanner(spec).solve("rt", SiteState(t_in_c=21.0), forecast(RT))
    fc = forecast(RT)
    t = 21.0
    for k in range(RT.steps):  # the plan's temperatures are edge.thermal.step of its own decisions
        t = thermal.step(t, fc.t_out_c[k], sched.hvac_heat[k], sched.hvac_cool[k], spec.hvac.thermal, 300)
        assert sched.temp_c[k] == pytest.approx(t, abs=1e-6)
    assert sched.comfort_violation_ch == pytest.approx(0.0, abs=1e-6)
    # the plan keeps its rounding margin (but for the horizon's last hour, when holding it costs
    # more than the penalty for what lies beyond)
    assert sched.temp_c[:-12].min() >= 20.0 + 0.2 - 1e-6
    assert sched.hvac_heat.sum() > 0  # a March night at LAX needs heat: the band binds


def test_preheats_before_the_evening_peak() -> None:
    spec = SiteSpec("h", hvac=HvacSpec())
    sched = SitePlanner(spec).solve("rt", SiteState(t_in_c=20.5), forecast(RT))
    fc = forecast(RT)
    hours = np.arange(RT.steps) // 12
    peak = (hours >= 16) & (hours < 21)
    # heat is bought when it is cheap: mean price paid below the mean price of the day
    paid = float((sched.hvac_heat * fc.buy).sum() / sched.hvac_heat.sum())
    assert paid < float(fc.buy.mean())
    assert sched.hvac_heat[peak].sum() < sched.hvac_heat[~peak].sum() * peak.sum() / (~peak).sum()


def test_comfort_penalty_is_paid_when_the_band_cannot_be_held() -> None:
    weak = thermal.ThermalParams(hvac_kw=0.3)  # far too small for the night
    spec = SiteSpec("h", hvac=HvacSpec(thermal=weak, can_cool=False))
    sched = SitePlanner(spec).solve("rt", SiteState(t_in_c=20.5), forecast(RT))
    assert sched.comfort_violation_ch > 0.1
    # every hour below the band the heater runs flat out: the penalty outweighs any price
    below = sched.temp_c < 20.2 - 1e-3
    assert np.all(sched.hvac_heat[1:][below[:-1]] > 0.999)


def test_ev_reaches_its_energy_by_departure_at_the_cheapest_steps() -> None:
    spec = SiteSpec("h", ev=EvSpec(params=EvParams(max_kw=7.2, eta=0.9), plan_margin_steps=0.0))
    session = EvSession(START - 3 * 3600, START + 7 * 3600, need_kwh=20.0)
    sched = SitePlanner(spec).solve("rt", SiteState(ev_stored_kwh=2.0), forecast(RT, sessions=(session,)))
    dep = 7 * 12
    stored = (sched.ev_kw[:dep] * 0.9 * 300 / 3600).sum()
    assert stored == pytest.approx(18.0, abs=1e-6)  # 20 needed, 2 already in
    assert sched.ev_kw[dep:].max() == pytest.approx(0.0, abs=1e-9)  # unplugged after departure
    assert sched.ev_kw.max() <= 7.2 + 1e-9
    assert sched.ev_short_kwh == pytest.approx(0.0, abs=1e-9)


def test_ev_shortfall_is_paid_only_when_it_cannot_be_avoided() -> None:
    spec = SiteSpec("h", ev=EvSpec(plan_margin_steps=0.0))
    session = EvSession(START, START + 3600, need_kwh=20.0)  # one hour at 7.2 kW stores 6.48 kWh
    sched = SitePlanner(spec).solve("rt", SiteState(), forecast(RT, sessions=(session,)))
    assert np.all(sched.ev_kw[:12] == pytest.approx(7.2))
    assert sched.ev_short_kwh == pytest.approx(20.0 - 7.2 * 0.9, abs=1e-6)


def test_battery_soc_stays_in_limits_and_follows_the_efficiencies() -> None:
    params = BatteryParams(capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=5.0, soc_min_frac=0.2)
    spec = SiteSpec("h", battery=BatterySpec(params=params, wear_usd_per_kwh=0.0, soc_end_frac=0.5))
    sched = SitePlanner(spec).solve("rt", SiteState(soc_kwh=5.0), forecast(RT, base_kw=1.0))
    assert sched.soc_kwh.min() >= 2.0 - 1e-6 and sched.soc_kwh.max() <= 10.0 + 1e-6
    assert sched.soc_kwh.min() == pytest.approx(2.0, abs=1e-6)  # arbitrage drives it to the limits
    assert sched.soc_kwh.max() == pytest.approx(10.0, abs=1e-6)
    assert sched.soc_kwh[-1] >= 5.0 - 1e-6
    soc = 5.0
    for k in range(RT.steps):
        kw = sched.battery_kw[k]
        soc = battery.step(soc, max(kw, 0.0), max(-kw, 0.0), params, 300)
        assert sched.soc_kwh[k] == pytest.approx(soc, abs=1e-6)


def test_pool_pump_day_ahead_meets_its_hours_within_its_starts() -> None:
    spec = SiteSpec("h", pump=PumpSpec(kw=1.5, hours_per_day=6, max_starts=2))
    sched = SitePlanner(spec).solve("da", SiteState(), forecast(DAY_AHEAD, pump_need_h=6.0))
    on = np.round(sched.pump_on).astype(int)
    assert on.sum() == 6 and np.allclose(sched.pump_on, on)
    starts = sum(1 for k in range(24) if on[k] and (k == 0 or not on[k - 1]))
    assert 1 <= starts <= 2
    fc = forecast(DAY_AHEAD)
    free = np.sort(fc.buy)[:6].sum()  # cheapest six hours, ignoring the start cap
    assert (fc.buy * on).sum() >= free - 1e-9
    assert sched.pump_short_h == pytest.approx(0.0, abs=1e-9)


def test_real_time_pump_follows_its_plan_and_pv_reduces_what_is_bought() -> None:
    plan = np.zeros(RT.steps)
    plan[120:192] = 1.0
    spec = SiteSpec("h", pump=PumpSpec(kw=1.5), pv=PvSpec())
    sched = SitePlanner(spec).solve("rt", SiteState(), forecast(RT, pump_plan=plan))
    assert np.array_equal(sched.pump_on, plan)
    fc = forecast(RT, pump_plan=plan)
    from tendril_transactive.edge.pv import power_kw
    pv = np.array([power_kw(g, spec.pv.params) for g in fc.ghi_w_m2])  # type: ignore[union-attr]
    net = (0.4 + 1.5 * plan - pv) * 300 / 3600
    assert np.allclose(sched.buy_kwh - sched.sell_kwh, net, atol=1e-9)


def test_bad_inputs_are_refused_with_a_reason() -> None:
    planner = SitePlanner(SiteSpec("h", hvac=HvacSpec()))
    fc = forecast(RT)
    fc.buy[5] = float("nan")
    with pytest.raises(ValueError, match="buy has non-finite values at steps \\[5\\]"):
        planner.solve("rt", SiteState(), fc)
    fc = forecast(RT)
    with pytest.raises(ValueError, match="sell price above buy"):
        planner.solve("rt", SiteState(), type(fc)(**{**fc.__dict__, "sell": fc.buy + 0.01}))
    with pytest.raises(ValueError, match="mode must be"):
        planner.solve("xx", SiteState(), fc)
    assert Horizon(288, 300).dt_h == pytest.approx(1 / 12)

"""Inputs the optimizer and simulator read: the TMY3 slice, relay rounding, edge physics limits."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tendril_transactive.cloud.optimizer.schedule import DutyRounder
from tendril_transactive.cloud.sources.weather import WeatherDataError, load_weather
from tendril_transactive.edge import battery, thermal
from tendril_transactive.edge.battery import BatteryParams
from tests.unit.opt_fixtures import LOCAL

pytestmark = pytest.mark.unit


def test_weather_maps_march_2024_onto_the_typical_march() -> None:
    w = load_weather()
    noon = datetime(2024, 3, 15, 12, 0, tzinfo=LOCAL).timestamp()  # PDT: 11:00 LST, hour ending 12
    assert w.ghi(noon) == w.ghi_w_m2[(3, 15, 12)]
    assert w.temperature(noon) == pytest.approx(w.temp_c[(3, 15, 11)])
    half = noon + 1800
    assert w.temperature(half) == pytest.approx((w.temp_c[(3, 15, 11)] + w.temp_c[(3, 15, 12)]) / 2)
    with pytest.raises(WeatherDataError, match="no weather for month 4"):
        w.temperature(datetime(2024, 4, 3, tzinfo=LOCAL).timestamp())
    # a lookahead past the slice's last day repeats that day
    late = datetime(2024, 3, 31, 23, 0, tzinfo=LOCAL).timestamp()
    assert w.ghi(late) == w.ghi_w_m2[(3, 31, 23)]


def test_a_bad_weather_file_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "w.csv"
    bad.write_text("month,day,hour_ending_lst,ghi_w_m2,dry_bulb_c\n3,1,1,0,12.0\n3,1,2,0,hot\n")
    with pytest.raises(WeatherDataError, match=r"w.csv:3: dry_bulb_c 'hot' is not a number"):
        load_weather(bad)
    bad.write_text("month,day,hour_ending_lst,ghi_w_m2,dry_bulb_c\n3,1,1,0,12.0\n3,1,1,0,12.0\n")
    with pytest.raises(WeatherDataError, match="duplicate hour"):
        load_weather(bad)


def test_duty_rounding_keeps_the_planned_energy_over_many_steps() -> None:
    r = DutyRounder()
    on = []
    for _ in range(100):
        on.append(r.propose(0.3))
        r.settle(0.3, on[-1])
    assert sum(on) == 30
    r = DutyRounder()
    assert r.propose(0.8) == 1
    r.settle(0.8, 0)  # clamped off: the debt is carried
    assert r.propose(0.0) == 1


def test_physics_refuses_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="shares of the step"):
        thermal.step(20, 10, 1.5, 0, thermal.ThermalParams(), 300)
    p = BatteryParams(capacity_kwh=10, max_charge_kw=5, soc_min_frac=0.1)
    kw, soc = battery.apply(9.9, 5.0, p, 3600)  # room for only 0.1 kWh
    assert soc == pytest.approx(10.0) and kw == pytest.approx(0.1 / 0.95)
    kw, soc = battery.apply(1.2, -5.0, p, 3600)  # 0.2 kWh above the reserve
    assert soc == pytest.approx(1.0) and kw == pytest.approx(-0.2 * 0.95)

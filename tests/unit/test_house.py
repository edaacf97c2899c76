"""edge.house.FileHouse: the demo's multi-load house behind the firmware's file pins."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tendril_transactive.edge.house import EvPlan, FileHouse, outdoor_c
from tendril_transactive.edge.site import LOCAL_TZ, SiteModel

pytestmark = pytest.mark.unit

EVENING = datetime(2024, 3, 15, 19, 0, tzinfo=LOCAL_TZ).timestamp()


def _house(tmp_path: Path, **kw: object) -> FileHouse:
    files = {k: tmp_path / k for k in ("pump", "hvac", "ev")}
    return FileHouse(SiteModel("s", seed=1), tmp_path / "power_w", files, **kw)  # type: ignore[arg-type]


def _set(tmp_path: Path, **relays: int) -> None:
    for name, on in relays.items():
        (tmp_path / name).write_text(str(on))


def test_each_closed_relay_adds_its_load_to_the_meter(tmp_path: Path) -> None:
    house = _house(tmp_path)
    base = house.model.base_w(EVENING)
    assert house.step(EVENING) == pytest.approx(base)  # no relay file yet: every relay open
    _set(tmp_path, pump=1, hvac=1, ev=1)
    power = house.step(EVENING)
    assert power == pytest.approx(base + 1500 + 3000 + 7200)
    assert float((tmp_path / "power_w").read_text()) == pytest.approx(power, abs=1e-3)


def test_heating_warms_the_house_and_its_absence_cools_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    warm = _house(tmp_path / "a")
    _set(tmp_path / "a", hvac=1)
    warm.step(EVENING)
    warm.step(EVENING + 3600)
    assert warm.state.t_in_c > 20.5
    (tmp_path / "b").mkdir()
    idle = _house(tmp_path / "b")
    idle.step(EVENING)
    idle.step(EVENING + 3600)
    assert idle.state.t_in_c < 20.5  # outdoor is colder than indoors on a March evening
    assert outdoor_c(EVENING) < 20.5


def test_the_charger_stops_drawing_when_the_car_has_what_it_needs(tmp_path: Path) -> None:
    house = _house(tmp_path, ev_plan=EvPlan(need_kwh=3.0))
    _set(tmp_path, ev=1)
    house.step(EVENING)
    house.step(EVENING + 3600)  # 7.2 kW x 0.9 for an hour is far above 3 kWh
    assert house.state.ev_stored_kwh == pytest.approx(3.0)
    assert house.step(EVENING + 3660) == pytest.approx(house.model.base_w(EVENING + 3660))


def test_the_car_is_away_by_day(tmp_path: Path) -> None:
    noon = datetime(2024, 3, 15, 12, 0, tzinfo=LOCAL_TZ).timestamp()
    house = _house(tmp_path)
    _set(tmp_path, ev=1)
    assert house.step(noon) == pytest.approx(house.model.base_w(noon))


def test_unknown_loads_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown loads"):
        FileHouse(SiteModel("s"), tmp_path / "p", {"sauna": tmp_path / "x"})

"""Simulated site physics (edge.site) and its file "pins" for the unix-port firmware (edge.plant)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tendril_transactive.edge.plant import FilePlant
from tendril_transactive.edge.site import DEFAULT_LOAD, LoadDataError, SiteModel, load_uci_minutes

pytestmark = pytest.mark.unit

LA = ZoneInfo("America/Los_Angeles")
HEADER = "Datetime,Global_active_power,Global_reactive_power\n"


def _local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=LA).timestamp()


def _source_watts() -> list[list[float | None]]:
    """The bundled CSV read independently: per day, 1440 readings in W (None = missing)."""
    with DEFAULT_LOAD.open(newline="") as fh:
        values = [float(r["Global_active_power"]) * 1000 if r["Global_active_power"] else None
                  for r in csv.DictReader(fh)]
    return [values[i : i + 1440] for i in range(0, len(values), 1440)]


def _day_file(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "load.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def _minutes(day: str, count: int, kw: str = "1.000") -> list[str]:
    return [f"{day} {m // 60:02d}:{m % 60:02d}:00,{kw},0.1\n" for m in range(count)]


def test_relay_on_adds_exactly_the_rated_load() -> None:
    site = SiteModel("site-1", seed=3, relay_load_w=1500.0)
    for minute in range(0, 3 * 1440, 7):
        t = _local(2024, 3, 15) + 60 * minute + 13
        assert site.power_w(t, True) == site.power_w(t, False) + 1500.0
        assert site.power_w(t, 1) == site.power_w(t, True)
        assert site.power_w(t, 0) == site.base_w(t) > 0


def test_deterministic_and_different_per_site() -> None:
    times = [_local(2024, 3, 15) + 60 * m for m in range(1440)]
    a = [SiteModel("site-1", seed=0).base_w(t) for t in times]
    assert a == [SiteModel("site-1", seed=0).base_w(t) for t in times]
    others = [[SiteModel("s", seed=k).base_w(t) for t in times] for k in range(1, 6)]
    assert all(o != a for o in others)
    assert len({tuple(o) for o in others}) == 5


def test_replays_the_real_data_on_the_local_clock() -> None:
    source = _source_watts()
    site = SiteModel("site-1", seed=0)
    # seed 0 keeps time of day: every local day replays one whole source day, minute by minute
    for day in (14, 15, 16, 17, 18):
        got = [site.base_w(_local(2024, 3, day) + 60 * m + 30) for m in range(1440)]
        matches = [d for d in source if all(w is None or w == g for w, g in zip(d, got, strict=True))]
        assert len(matches) == 1, f"2024-03-{day} is not one source day"
    # ... so the household's evening peak lands in the local evening, not in UTC's
    evening = [site.base_w(_local(2024, 3, 15, 18) + 60 * m) for m in range(180)]
    night = [site.base_w(_local(2024, 3, 15, 2) + 60 * m) for m in range(180)]
    assert sum(evening) > 2 * sum(night)


def test_missing_readings_hold_the_last_one() -> None:
    source = _source_watts()
    day = next(i for i, d in enumerate(source) if None in d)
    minute = source[day].index(None)
    watts = load_uci_minutes(DEFAULT_LOAD)
    assert watts[day * 1440 + minute] == source[day][minute - 1]
    assert watts[day * 1440 + minute + 1] == source[day][minute - 1]


def test_spring_forward_day_is_continuous_in_unix_time() -> None:
    site = SiteModel("site-1", seed=2)
    start, end = _local(2024, 3, 10), _local(2024, 3, 11)
    assert end - start == 23 * 3600
    assert all(site.power_w(t, False) > 0 for t in range(int(start), int(end), 60))


def test_energy_integrates_power_exactly() -> None:
    site = SiteModel("site-1", seed=1, relay_load_w=2000.0)
    t0 = _local(2024, 3, 15, 12)
    base_wh = sum(site.base_w(t0 + 60 * m) for m in range(60)) / 60
    assert site.energy_wh(t0, t0 + 3600, lambda t: False) == pytest.approx(base_wh)
    assert site.energy_wh(t0, t0 + 3600, lambda t: True) == pytest.approx(base_wh + 2000.0)
    # on for the first 15 minutes only
    assert site.energy_wh(t0, t0 + 3600, lambda t: t < t0 + 900) == pytest.approx(base_wh + 500.0)
    # a window that does not start or end on a minute: the partial minutes count pro rata
    part = site.energy_wh(t0 + 30, t0 + 90, lambda t: False)
    assert part == pytest.approx((site.base_w(t0) * 30 + site.base_w(t0 + 60) * 30) / 3600)
    assert site.energy_wh(t0, t0, lambda t: True) == 0.0
    with pytest.raises(ValueError, match=r"ends .* before it starts"):
        site.energy_wh(t0, t0 - 1, lambda t: False)


def test_bad_model_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="relay_load_w"):
        SiteModel("site-1", relay_load_w=-1.0)


def test_a_small_load_file_and_its_gaps(tmp_path: Path) -> None:
    rows = _minutes("01/01/2020", 1440)
    rows[0] = "01/01/2020 00:00:00,,\n"  # leading gap takes the first reading
    rows[5] = "01/01/2020 00:05:00,2.500,0.1\n"
    rows[6] = "01/01/2020 00:06:00,,\n"
    watts = load_uci_minutes(_day_file(tmp_path, rows))
    assert watts[:8] == (1000.0, 1000.0, 1000.0, 1000.0, 1000.0, 2500.0, 2500.0, 1000.0)
    assert len(watts) == 1440


@pytest.mark.parametrize(
    ("index", "row", "match"),
    [
        (3, "01/01/2020 00:03:00,abc,0.1\n", ":5: Global_active_power 'abc' is not a number"),
        (3, "01/01/2020 00:03:00,-1,0.1\n", ":5: .* is not a household load"),
        (3, "01/01/2020 00:04:00,1,0.1\n", ":5: expected 01/01/2020 00:03:00"),
        (3, "2020-01-01 00:03,1,0.1\n", ":5: time data"),
        (0, "01/01/2020 00:01:00,1,0.1\n", ":2: series must start at midnight"),
    ],
)
def test_bad_load_rows_name_file_and_line(tmp_path: Path, index: int, row: str, match: str) -> None:
    rows = _minutes("01/01/2020", 1440)
    rows[index] = row
    path = _day_file(tmp_path, rows)
    with pytest.raises(LoadDataError, match=match) as err:
        load_uci_minutes(path)
    assert str(err.value).startswith(str(path))


def test_partial_day_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadDataError, match="1439 minutes is not a whole number of days"):
        load_uci_minutes(_day_file(tmp_path, _minutes("01/01/2020", 1439)))


def test_load_file_without_the_power_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "load.csv"
    path.write_text("Datetime,Voltage\n01/01/2020 00:00:00,230\n")
    with pytest.raises(LoadDataError, match=":1: need columns"):
        load_uci_minutes(path)


# ------------------------------------------------------------------------------ FilePlant


def _plant(tmp_path: Path) -> FilePlant:
    model = SiteModel("site-1", seed=0, relay_load_w=1500.0)
    return FilePlant(model, tmp_path / "power_w", tmp_path / "relay")


def test_plant_follows_the_relay_file(tmp_path: Path) -> None:
    plant = _plant(tmp_path)
    t = _local(2024, 3, 15, 12)
    off = plant.step(t)  # no relay file yet: the relay is off
    assert off == plant.model.power_w(t, False)
    assert float(plant.power_file.read_text()) == pytest.approx(off, abs=5e-4)
    plant.relay_file.write_text("1")
    on = plant.step(t)
    assert on == off + 1500.0 and plant.relay_on
    assert float(plant.power_file.read_text()) == pytest.approx(on, abs=5e-4)
    plant.relay_file.write_text("0\n")
    assert plant.step(t) == off
    assert plant.last_power_w == off
    plant.relay_file.write_text("1")
    plant.step(t)
    plant.relay_file.unlink()
    assert plant.step(t) == off and not plant.relay_on


@pytest.mark.parametrize("garbage", [b"", b"2", b"on", b"\xff\xfe", b"1 1"])
def test_garbage_relay_file_keeps_the_last_state_and_is_counted(tmp_path: Path, garbage: bytes) -> None:
    plant = _plant(tmp_path)
    t = _local(2024, 3, 15, 12)
    plant.relay_file.write_text("1")
    on = plant.step(t)
    plant.relay_file.write_bytes(garbage)
    assert plant.step(t) == on and plant.relay_on
    assert plant.garbage_reads == 1


def test_power_file_is_replaced_whole_and_plain_decimal(tmp_path: Path) -> None:
    plant = _plant(tmp_path)
    plant.step(_local(2024, 3, 15, 12))
    before = plant.power_file.stat().st_ino
    plant.step(_local(2024, 3, 15, 19))
    # a new inode: readers holding the old file never see a partial write
    assert plant.power_file.stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["power_w"]
    text = plant.power_file.read_text()
    assert text.replace(".", "", 1).isdigit() and "." in text

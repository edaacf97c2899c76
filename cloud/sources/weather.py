"""Outdoor temperature and irradiance for simulated houses, from the bundled TMY3 slice.

The slice (data/weather, see its README) is a typical March and June at Los Angeles airport, on
local *standard* time (UTC-8 all year) with hour-ending stamps. A simulated instant is mapped
onto the typical year by month, day and time of day, so March 2024 prices meet a typical March.

Dry-bulb is a reading at the stamp: interpolated linearly between stamps. GHI is the mean over
the hour ending at the stamp: constant within that hour. A day the slice lacks (a lookahead
past the end of the month) repeats the latest day before it (a persistence forecast); a month
the slice lacks is an error (but the first hour of a month may start from its own value).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tendril_transactive.edge.resources import DATA_DIR

DEFAULT_WEATHER = DATA_DIR / "weather" / "lax_722950_tmy3_mar_jun.csv"
LST_OFFSET_S = -8 * 3600  # TMY3 stamps are local standard time, UTC-8 for this station
HOUR = 3600
DAY = 86400
FloatArray = npt.NDArray[np.float64]


class WeatherDataError(ValueError):
    """A weather file that cannot be used, or an instant it does not cover."""


@dataclass(frozen=True)
class Weather:
    """Hourly values by (month, day, hour-ending 1..24), local standard time."""

    temp_c: dict[tuple[int, int, int], float]
    ghi_w_m2: dict[tuple[int, int, int], float]
    months: frozenset[int]

    def _key(self, lst_s: float) -> tuple[int, int, int]:
        """(month, day, hour-ending) of the hour that contains local-standard instant `lst_s`."""
        stamp = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=math.floor(lst_s / HOUR) * HOUR)
        if stamp.month not in self.months:
            raise WeatherDataError(f"no weather for month {stamp.month} (have {sorted(self.months)})")
        return stamp.month, stamp.day, stamp.hour + 1

    def _lookup(self, table: dict[tuple[int, int, int], float], lst_s: float) -> float:
        # A missing day repeats the latest day before it; the first hour of the slice also
        # stands in for the hour before it (the stamp a 00:00 interpolation starts from).
        self._key(lst_s)  # a month the slice lacks is an error, not a guess
        for shift in (0, -DAY, -2 * DAY, HOUR):
            try:
                key = self._key(lst_s + shift)
            except WeatherDataError:
                continue
            if key in table:
                return table[key]
        raise WeatherDataError(f"no weather near local standard time {lst_s}")

    def ghi(self, t_unix: float) -> float:
        """Irradiance (W/m2) at `t_unix`: the mean of the hour containing it."""
        return self._lookup(self.ghi_w_m2, t_unix + LST_OFFSET_S)

    def temperature(self, t_unix: float) -> float:
        """Dry-bulb (C) at `t_unix`, linear between hourly stamps."""
        lst = t_unix + LST_OFFSET_S
        before = math.floor(lst / HOUR) * HOUR
        frac = (lst - before) / HOUR
        # the stamp at `before` is the end of the previous hour
        try:
            t0 = self._lookup(self.temp_c, before - 1)
        except WeatherDataError:  # first hour of the slice: nothing before it to start from
            t0 = self._lookup(self.temp_c, before + HOUR - 1)
        t1 = self._lookup(self.temp_c, before + HOUR - 1)
        return t0 + (t1 - t0) * frac

    def series(self, start: float, steps: int, step_s: float) -> tuple[FloatArray, FloatArray]:
        """(temperature C, GHI W/m2) for `steps` intervals of `step_s` from `start`.

        Temperature is taken at the middle of each interval, GHI as the mean over it.
        """
        if steps < 0 or not step_s > 0:
            raise ValueError(f"need steps >= 0 and step_s > 0, got {steps}, {step_s}")
        temp = np.empty(steps)
        ghi = np.empty(steps)
        for k in range(steps):
            t = start + k * step_s
            temp[k] = self.temperature(t + step_s / 2)
            if step_s <= HOUR:
                ghi[k] = self.ghi(t + step_s / 2)
            else:
                pieces = max(1, round(step_s / HOUR))
                ghi[k] = sum(self.ghi(t + (i + 0.5) * step_s / pieces) for i in range(pieces)) / pieces
        return temp, ghi


def _number(text: str, path: Path, line: int, name: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WeatherDataError(f"{path}:{line}: {name} {text!r} is not a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise WeatherDataError(f"{path}:{line}: {name} {text!r} outside [{lo}, {hi}]")
    return value


@lru_cache(maxsize=4)
def load_weather(path: Path = DEFAULT_WEATHER) -> Weather:
    """Read the weather slice; raises WeatherDataError naming the file and line."""
    temp: dict[tuple[int, int, int], float] = {}
    ghi: dict[tuple[int, int, int], float] = {}
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"month", "day", "hour_ending_lst", "ghi_w_m2", "dry_bulb_c"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise WeatherDataError(f"{path}:1: need columns {', '.join(sorted(need))}")
        for row in reader:
            line = reader.line_num
            try:
                key = (int(row["month"]), int(row["day"]), int(row["hour_ending_lst"]))
            except ValueError:
                raise WeatherDataError(f"{path}:{line}: month/day/hour must be integers") from None
            if not (1 <= key[0] <= 12 and 1 <= key[1] <= 31 and 1 <= key[2] <= 24):
                raise WeatherDataError(f"{path}:{line}: date/hour {key} out of range")
            if key in temp:
                raise WeatherDataError(f"{path}:{line}: duplicate hour {key}")
            temp[key] = _number(row["dry_bulb_c"], path, line, "dry_bulb_c", -60, 60)
            ghi[key] = _number(row["ghi_w_m2"], path, line, "ghi_w_m2", 0, 1500)
    if not temp:
        raise WeatherDataError(f"{path}: no rows")
    return Weather(temp, ghi, frozenset(m for m, _, _ in temp))

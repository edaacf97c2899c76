"""A simulated site's electrical load: real measured household power plus one relay-switched load.

Base load is the UCI household 1-minute series (data/load, see its README), replayed on the
site's local clock (America/Los_Angeles) so its evening peak lands in the local evening. Each
site replays it from a different day and minute, so a fleet does not move in lockstep. Power is
constant within each minute, as the source data are minute averages, so energy sums exactly.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from tendril_transactive.edge.resources import DATA_DIR

LOCAL_TZ = ZoneInfo("America/Los_Angeles")
DEFAULT_LOAD = DATA_DIR / "load" / "uci_household_power_1min_2006-12-17_2006-12-21.csv"
MINUTES_PER_DAY = 1440
# Per-site shift: one day plus 17 minutes per seed. 1457 is coprime to any whole number of days of
# minutes below 31 days, so every seed up to the series length gets its own offset.
SHIFT_PER_SEED_MIN = MINUTES_PER_DAY + 17
_TIME_FORMAT = "%d/%m/%Y %H:%M:%S"


class LoadDataError(ValueError):
    """A load file that cannot be replayed; the message names the file and line."""


@lru_cache(maxsize=4)
def load_uci_minutes(path: Path) -> tuple[float, ...]:
    """Whole-house watts per minute from a UCI-format CSV of whole days of consecutive minutes.

    Missing readings (empty fields, as in the source) hold the previous reading; a leading gap
    takes the first reading. Anything else malformed raises LoadDataError with the line.
    """
    watts: list[float | None] = []
    expected: datetime | None = None
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"Datetime", "Global_active_power"} <= set(reader.fieldnames):
            raise LoadDataError(f"{path}:1: need columns Datetime and Global_active_power")
        for row in reader:
            line = reader.line_num
            try:
                stamp = datetime.strptime(row["Datetime"] or "", _TIME_FORMAT)
            except ValueError as exc:
                raise LoadDataError(f"{path}:{line}: {exc}") from None
            if expected is None and (stamp.hour, stamp.minute, stamp.second) != (0, 0, 0):
                raise LoadDataError(f"{path}:{line}: series must start at midnight, starts {row['Datetime']}")
            if expected is not None and stamp != expected:
                want = expected.strftime(_TIME_FORMAT)
                raise LoadDataError(f"{path}:{line}: expected {want}, got {row['Datetime']}")
            expected = stamp + timedelta(minutes=1)
            text = (row["Global_active_power"] or "").strip()
            if not text:
                watts.append(None)
                continue
            try:
                kw = float(text)
            except ValueError:
                raise LoadDataError(f"{path}:{line}: Global_active_power {text!r} is not a number") from None
            if not (math.isfinite(kw) and 0 <= kw < 100):
                raise LoadDataError(f"{path}:{line}: Global_active_power {text!r} kW is not a household load")
            watts.append(kw * 1000.0)
    if not watts or len(watts) % MINUTES_PER_DAY:
        raise LoadDataError(f"{path}: {len(watts)} minutes is not a whole number of days")
    first = next((w for w in watts if w is not None), None)
    if first is None:
        raise LoadDataError(f"{path}: no readings")
    filled: list[float] = []
    last = first
    for w in watts:
        last = last if w is None else w
        filled.append(last)
    return tuple(filled)


@dataclass(frozen=True)
class SiteModel:
    site: str
    seed: int = 0
    relay_load_w: float = 1500.0  # rated power of the relay-switched load (1.5 kW: a 2 hp pool pump)
    load_path: Path = DEFAULT_LOAD
    _base: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.relay_load_w) and self.relay_load_w >= 0):
            raise ValueError(f"relay_load_w must be finite and >= 0, got {self.relay_load_w}")
        object.__setattr__(self, "_base", load_uci_minutes(Path(self.load_path)))

    def _index(self, t_unix: float) -> int:
        offset = datetime.fromtimestamp(t_unix, LOCAL_TZ).utcoffset()
        assert offset is not None  # a ZoneInfo-aware datetime always has one
        local_minute = math.floor((t_unix + offset.total_seconds()) / 60)
        return (local_minute + self.seed * SHIFT_PER_SEED_MIN) % len(self._base)

    def base_w(self, t_unix: float) -> float:
        """Household load excluding the relay load, in watts."""
        return self._base[self._index(t_unix)]

    def power_w(self, t_unix: float, relay_on: bool | int) -> float:
        """Whole-site power in watts: base load plus the relay load when the relay is on."""
        return self.base_w(t_unix) + (self.relay_load_w if relay_on else 0.0)

    def energy_wh(self, t0: float, t1: float, relay_on_fn: Callable[[float], bool | int]) -> float:
        """Energy over [t0, t1) in Wh, the relay state sampled at the start of each minute piece.

        Exact when the relay switches on minute boundaries (base load is constant within a minute,
        and UTC offsets are whole minutes). For tests and settlement checks; the meter firmware
        integrates its own samples.
        """
        if t1 < t0:
            raise ValueError(f"energy window ends ({t1}) before it starts ({t0})")
        total_ws = 0.0
        t = t0
        while t < t1:
            nxt = min(t1, (math.floor(t / 60) + 1) * 60.0)
            total_ws += self.power_w(t, relay_on_fn(t)) * (nxt - t)
            t = nxt
        return total_ws / 3600.0

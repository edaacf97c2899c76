"""Otherwise applicable tariffs (OAT): a declarative time-of-use rate read from a TOML file.

A tariff has seasons (by month), day types (weekday / weekend, holidays count as weekend),
and for every season and day type a set of periods that covers each local clock hour
exactly once, each with a $/kWh energy price; plus a fixed monthly charge. Clock hours
are local to the tariff's timezone: a 4-9 pm peak is 16:00-21:00 Pacific whatever the UTC
offset, so DST days (23 or 25 hours) are billed by what the customer's clock showed.

Money is Decimal so bills add up to the cent; see data/tariffs/ for the file format.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tendril_transactive.edge.resources import DATA_DIR

WEEKDAY = "weekday"
WEEKEND = "weekend"
DAY_TYPES = (WEEKDAY, WEEKEND)
_WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TariffError(ValueError):
    """A tariff file that cannot be used; the message names the file and the field at fault."""


@dataclass(frozen=True)
class Period:
    name: str
    day_types: frozenset[str]
    hours: frozenset[int]  # local clock hours 0..23 (hour h = [h:00, h+1:00))
    usd_per_kwh: Decimal


@dataclass(frozen=True)
class Season:
    name: str
    months: frozenset[int]
    periods: tuple[Period, ...]

    def period(self, day_type: str, hour: int) -> Period:
        for p in self.periods:
            if day_type in p.day_types and hour in p.hours:
                return p
        raise AssertionError(f"validated tariff has no period for {self.name}/{day_type}/{hour}")


@dataclass(frozen=True)
class Holiday:
    """A fixed date (month, day) or the nth weekday of a month (nth = -1: the last)."""

    name: str
    month: int
    day: int | None = None
    weekday: int | None = None
    nth: int | None = None
    sunday_to_monday: bool = False

    def dates(self, year: int) -> list[dt.date]:
        if self.day is not None:
            date = dt.date(year, self.month, self.day)
            if self.sunday_to_monday and date.weekday() == 6:
                return [date, date + dt.timedelta(days=1)]
            return [date]
        assert self.weekday is not None and self.nth is not None
        days = [d for d in calendar.Calendar().itermonthdates(year, self.month)
                if d.month == self.month and d.weekday() == self.weekday]
        return [days[self.nth if self.nth < 0 else self.nth - 1]]


@dataclass(frozen=True)
class Tariff:
    id: str
    name: str
    timezone: str
    fixed_monthly_usd: Decimal
    seasons: tuple[Season, ...]
    holidays: tuple[Holiday, ...]
    weekend_days: frozenset[int]
    sources: tuple[str, ...]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, t_unix: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t_unix, self.tz)

    def holiday_dates(self, year: int) -> frozenset[dt.date]:
        return _holiday_dates(self.holidays, year)

    def day_type(self, date: dt.date) -> str:
        if date.weekday() in self.weekend_days or date in self.holiday_dates(date.year):
            return WEEKEND
        return WEEKDAY

    def season(self, month: int) -> Season:
        for s in self.seasons:
            if month in s.months:
                return s
        raise AssertionError(f"validated tariff has no season for month {month}")

    def period_at(self, t_unix: float) -> tuple[Season, Period]:
        """Season and TOU period in force at a UTC instant."""
        local = self.local(t_unix)
        season = self.season(local.month)
        return season, season.period(self.day_type(local.date()), local.hour)

    def month_window(self, year: int, month: int) -> tuple[int, int]:
        """[start, end) unix seconds of a calendar month in the tariff's local time."""
        start = dt.datetime(year, month, 1, tzinfo=self.tz)
        nxt = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=self.tz)
        return int(start.timestamp()), int(nxt.timestamp())


@functools.lru_cache(maxsize=64)
def _holiday_dates(holidays: tuple[Holiday, ...], year: int) -> frozenset[dt.date]:
    return frozenset(d for h in holidays for d in h.dates(year))


# ------------------------------------------------------------------------------- loading


def _require(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise TariffError(f"{where}: missing '{key}'")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TariffError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _money(value: Any, where: str) -> Decimal:
    # TOML floats are binary; str() gives the shortest text that reads back, i.e. what was typed.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TariffError(f"{where}: not a number: {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise TariffError(f"{where}: not a number: {value!r}") from None
    if not amount.is_finite():
        raise TariffError(f"{where}: not finite: {value!r}")
    return amount


def _hours(spans: Any, where: str) -> frozenset[int]:
    if not isinstance(spans, list) or not spans:
        raise TariffError(f"{where}: 'hours' must be a list of [start, end) pairs, e.g. [[16, 21]]")
    out: set[int] = set()
    for span in spans:
        ok = isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)
        if not ok or not 0 <= span[0] < span[1] <= 24:
            raise TariffError(f"{where}: bad hour span {span!r}: "
                              "need [start, end) with 0 <= start < end <= 24")
        out.update(range(span[0], span[1]))
    return frozenset(out)


def _period(raw: dict[str, Any], where: str) -> Period:
    name = _require(raw, "name", str, where)
    where = f"{where} '{name}'"
    day_types = _require(raw, "day_types", list, where)
    bad = [d for d in day_types if d not in DAY_TYPES]
    if bad or not day_types:
        raise TariffError(f"{where}: day_types must be a non-empty subset of {list(DAY_TYPES)}, "
                          f"got {day_types}")
    price = _money(_require(raw, "usd_per_kwh", (int, float), where), f"{where} usd_per_kwh")
    return Period(name, frozenset(day_types), _hours(raw.get("hours"), where), price)


def _season(raw: dict[str, Any], where: str) -> Season:
    name = _require(raw, "name", str, where)
    where = f"{where} '{name}'"
    months = _require(raw, "months", list, where)
    if not months or any(type(m) is not int or not 1 <= m <= 12 for m in months):
        raise TariffError(f"{where}: months must be a list of 1..12, got {months}")
    periods = tuple(_period(p, f"{where} period") for p in _require(raw, "periods", list, where))
    for day_type in DAY_TYPES:
        for hour in range(24):
            owners = [p.name for p in periods if day_type in p.day_types and hour in p.hours]
            if len(owners) != 1:
                problem = "no period" if not owners else f"several periods {owners}"
                raise TariffError(f"{where}: {day_type} hour {hour}:00 has {problem}; "
                                  "each hour of each day type needs exactly one")
    return Season(name, frozenset(months), periods)


def _holiday(raw: dict[str, Any], where: str) -> Holiday:
    name = _require(raw, "name", str, where)
    where = f"{where} '{name}'"
    month = _require(raw, "month", int, where)
    if not 1 <= month <= 12:
        raise TariffError(f"{where}: month must be 1..12")
    if "day" in raw:
        day = _require(raw, "day", int, where)
        if not 1 <= day <= calendar.monthrange(2024, month)[1]:
            raise TariffError(f"{where}: day {day} does not exist in month {month}")
        return Holiday(name, month, day=day, sunday_to_monday=bool(raw.get("sunday_to_monday", False)))
    weekday = _require(raw, "weekday", str, where)
    nth = _require(raw, "nth", int, where)
    if weekday not in _WEEKDAY_NAMES or nth not in (1, 2, 3, 4, -1):
        raise TariffError(f"{where}: need weekday in {_WEEKDAY_NAMES} and nth in 1..4 or -1 (last)")
    return Holiday(name, month, weekday=_WEEKDAY_NAMES.index(weekday), nth=nth)


def parse_tariff(raw: dict[str, Any], source: str = "<tariff>") -> Tariff:
    head = _require(raw, "tariff", dict, source)
    where = f"{source} [tariff]"
    tz = _require(head, "timezone", str, where)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise TariffError(f"{where}: unknown timezone {tz!r}") from None
    weekend = _require(head, "weekend_days", list, where)
    if any(d not in _WEEKDAY_NAMES for d in weekend):
        raise TariffError(f"{where}: weekend_days must be names from {_WEEKDAY_NAMES}, got {weekend}")
    seasons = tuple(_season(s, f"{source} season") for s in _require(raw, "seasons", list, source))
    for month in range(1, 13):
        owners = [s.name for s in seasons if month in s.months]
        if len(owners) != 1:
            raise TariffError(f"{source}: month {month} belongs to {owners or 'no season'}; "
                              "needs exactly one")
    sources = _require(head, "sources", list, where)
    if not sources or not all(isinstance(s, str) and s.strip() for s in sources):
        raise TariffError(f"{where}: 'sources' must list where the numbers come from")
    return Tariff(
        id=_require(head, "id", str, where),
        name=_require(head, "name", str, where),
        timezone=tz,
        fixed_monthly_usd=_money(_require(head, "fixed_monthly_usd", (int, float), where),
                                 f"{where} fixed_monthly_usd"),
        seasons=seasons,
        holidays=tuple(_holiday(h, f"{source} holiday") for h in raw.get("holidays", [])),
        weekend_days=frozenset(_WEEKDAY_NAMES.index(d) for d in weekend),
        sources=tuple(sources),
    )


def load_tariff(path: Path) -> Tariff:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise TariffError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TariffError(f"{path}: not valid TOML: {exc}") from None
    return parse_tariff(raw, str(path))


DEFAULT_TARIFF = DATA_DIR / "tariffs" / "sce_tou_d_4_9pm.toml"


def default_tariff() -> Tariff:
    return load_tariff(DEFAULT_TARIFF)

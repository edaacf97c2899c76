"""Subscriptions: the customer's own history, shaped into a kWh quantity for every hour.

RATES gives each customer a subscription: for each hour, the energy they would have used
had nothing changed, bought at the OAT. Here it is the mean of the history's readings for
the same (month, day type, local clock hour); day types come from the tariff (weekends and
holidays together), because that is the calendar the customer's habits and bill both follow.

History years need not match the billed year: 2011 Green Button data is laid onto 2024 by
month, day type and local hour, never by date (2011-03-10 was a Thursday, 2024-03-10 a Sunday
with 23 hours). `replay_history` does the same day by day, to stand in for a meter in demos.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from tendril_transactive.cloud.billing import energy_grid
from tendril_transactive.cloud.billing.tariff import DAY_TYPES, Tariff
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.timefmt import local_span

HOUR = 3600
ProfileKey = tuple[int, str, int]  # (month 1..12, day type, local hour 0..23)


class SubscriptionError(ValueError):
    """History too thin to shape a subscription for the asked period; says which bucket is empty."""


def _hourly(history: Sequence[UsageInterval]) -> dict[int, float]:
    return energy_grid.by_step(history, HOUR)


def _check_whole_hour_offsets(tariff: Tariff, start: int, end: int) -> None:
    # Local clock hours must be UTC hours for the hourly grid to carry TOU periods.
    for t in (start, end - 1):
        offset = tariff.local(t).utcoffset()
        if offset is None or offset.total_seconds() % HOUR:
            raise SubscriptionError(f"timezone {tariff.timezone} is not a whole-hour offset from UTC")


@dataclass(frozen=True)
class Profile:
    """Mean kWh in an hour, by (month, day type, local hour), with how many readings made each mean."""

    kwh: dict[ProfileKey, float]
    samples: dict[ProfileKey, int]

    def at(self, key: ProfileKey) -> float:
        if key not in self.kwh:
            month, day_type, hour = key
            raise SubscriptionError(f"no history for month {month}, {day_type}, hour {hour}:00 "
                                    "(the Green Button file does not cover it)")
        return self.kwh[key]

    def months(self) -> list[int]:
        return sorted({m for m, _, _ in self.kwh})


def shape_profile(history: Sequence[UsageInterval], tariff: Tariff) -> Profile:
    """Mean hourly kWh by (month, day type, local hour) over the whole history."""
    sums: dict[ProfileKey, float] = {}
    counts: dict[ProfileKey, int] = {}
    for start, kwh in _hourly(history).items():
        local = tariff.local(start)
        key = (local.month, tariff.day_type(local.date()), local.hour)
        sums[key] = sums.get(key, 0.0) + kwh
        counts[key] = counts.get(key, 0) + 1
    if not sums:
        raise SubscriptionError("history is empty: nothing to shape a subscription from")
    return Profile({k: sums[k] / counts[k] for k in sums}, counts)


@dataclass(frozen=True)
class Subscription:
    site: str
    tariff: Tariff
    profile: Profile
    _cache: dict[tuple[int, int], list[UsageInterval]] = field(
        default_factory=dict, compare=False, repr=False)

    def quantities(self, start: int, end: int) -> list[UsageInterval]:
        """Subscribed kWh for every UTC hour in [start, end) (hour-aligned), by local month/day type/hour."""
        if start % HOUR or end % HOUR or end <= start:
            raise SubscriptionError(f"window {local_span(start, end, self.tariff.tz)} must be whole UTC hours, "
                                    "end after start")
        cached = self._cache.get((start, end))
        if cached is not None:
            return list(cached)
        _check_whole_hour_offsets(self.tariff, start, end)
        out = []
        for t in range(start, end, HOUR):
            local = self.tariff.local(t)
            key = (local.month, self.tariff.day_type(local.date()), local.hour)
            out.append(UsageInterval(t, HOUR, self.profile.at(key)))
        self._cache[(start, end)] = out
        return list(out)

    def month(self, year: int, month: int) -> list[UsageInterval]:
        start, end = self.tariff.month_window(year, month)
        return self.quantities(start, end)


def subscribe(site: str, history: Sequence[UsageInterval], tariff: Tariff) -> Subscription:
    return Subscription(site, tariff, shape_profile(history, tariff))


# ------------------------------------------------------------------ history as a stand-in meter


def _history_days(history: Sequence[UsageInterval], tariff: Tariff) -> dict[dt.date, dict[int, float]]:
    days: dict[dt.date, dict[int, float]] = {}
    for start, kwh in sorted(_hourly(history).items()):
        local = tariff.local(start)
        # setdefault keeps the first of a repeated (fall-back) clock hour
        days.setdefault(local.date(), {}).setdefault(local.hour, kwh)
    return days


def replay_months(history: Sequence[UsageInterval], tariff: Tariff, month: int) -> list[str]:
    """The history's months ('2011-07') whose days `replay_history` lays onto a `month` of another year."""
    return sorted({f"{d:%Y-%m}" for d in _history_days(history, tariff) if d.month == month})


def replay_history(history: Sequence[UsageInterval], tariff: Tariff, year: int, month: int,
                   profile: Profile | None = None) -> list[UsageInterval]:
    """Real days from the history laid onto a month of another year, as hourly 'metered' kWh.

    The k-th weekday (weekend day) of the target month gets the k-th weekday (weekend day) of
    the same month in the history, wrapping round when the target month has more. A clock hour
    the history day lacks (its own spring-forward hour) takes the profile's mean; a repeated
    fall-back hour in the target repeats the history's value for that clock hour.
    """
    profile = profile or shape_profile(history, tariff)
    days = _history_days(history, tariff)
    pool = {t: sorted(d for d in days if d.month == month and tariff.day_type(d) == t) for t in DAY_TYPES}
    start, end = tariff.month_window(year, month)
    _check_whole_hour_offsets(tariff, start, end)
    seen: dict[str, list[dt.date]] = {t: [] for t in DAY_TYPES}
    out = []
    for t in range(start, end, HOUR):
        local = tariff.local(t)
        day_type = tariff.day_type(local.date())
        if local.date() not in seen[day_type]:
            seen[day_type].append(local.date())
        candidates = pool[day_type]
        if not candidates:
            raise SubscriptionError(f"history has no {day_type} in month {month} to replay")
        source_day = candidates[(len(seen[day_type]) - 1) % len(candidates)]
        kwh = days[source_day].get(local.hour)
        if kwh is None:
            kwh = profile.at((month, day_type, local.hour))
        out.append(UsageInterval(t, HOUR, kwh))
    return out

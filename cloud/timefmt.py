"""Instants as people read them: a local date-time with its zone, for messages a user sees.

Logic works in unix seconds; a message that says "1298966400" makes the reader do the arithmetic,
and one that says "01:30" without a zone is ambiguous twice a year. So every error, warning and
bill note that names a time goes through `local_time` (service logs may use ISO UTC instead).
"""

from __future__ import annotations

import datetime as dt


def local_time(t: float, tz: dt.tzinfo) -> str:
    """'2024-05-01 00:00 PDT'; seconds (and milliseconds) only when the instant has them."""
    stamp = dt.datetime.fromtimestamp(t, tz)
    if stamp.microsecond:
        clock = f"{stamp:%H:%M:%S}.{stamp.microsecond // 1000:03d}"
    elif stamp.second:
        clock = f"{stamp:%H:%M:%S}"
    else:
        clock = f"{stamp:%H:%M}"
    return f"{stamp:%Y-%m-%d} {clock} {stamp:%Z}"


def utc_time(t: float) -> str:
    """'2024-03-15T19:05:00Z': for service logs and dead letters, read across sites and zones."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_span(start: float, end: float, tz: dt.tzinfo) -> str:
    """[start, end) as '2011-03-01 00:00 to 01:00 PST', repeating only what changes at the end."""
    first, last = local_time(start, tz), local_time(end, tz)
    first_day, _, first_rest = first.partition(" ")
    last_day, _, last_rest = last.partition(" ")
    if first_day != last_day:
        return f"{first} to {last}"
    first_clock, _, first_zone = first_rest.partition(" ")
    last_clock, _, last_zone = last_rest.partition(" ")
    if first_zone != last_zone:  # a DST change inside the span: both ends need their zone
        return f"{first} to {last_rest}"
    return f"{first_day} {first_clock} to {last_clock} {last_zone}"

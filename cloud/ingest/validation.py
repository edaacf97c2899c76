"""Checks beyond the wire contract, from what ingestion knows: the device's registration and now.

The contract says what a well-formed message is; these say what a *plausible* one is. A message
that fails one is rejected with the reason below (counted, dead-lettered) instead of stored:
- `duplicate_key`: a JSON key given twice (json and msgspec keep the last: a second value could
  hide behind the first in any log or proxy that reads the first);
- `type_mismatch`: telemetry whose `type` is not the device's registered type;
- `implausible`: a power beyond the device's rating (or DEFAULT_MAX_POWER_W without one), an
  energy register beyond MAX_ENERGY_WH (1e308 is a valid JSON number);
- `ts_too_old` / `ts_in_future`: a timestamp outside [now - max_age_s, now + max_skew_s]; the
  future bound never exceeds what the store accepts (VictoriaMetrics drops points more than
  STORE_MAX_FUTURE_S ahead of its clock with only a line in its own log).
Pure functions: `now` comes in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.timefmt import utc_time

DUPLICATE_KEY = "duplicate_key"
TYPE_MISMATCH = "type_mismatch"
IMPLAUSIBLE = "implausible"
TS_TOO_OLD = "ts_too_old"
TS_IN_FUTURE = "ts_in_future"

# A residential service is at most 400 A x 240 V = 96 kW; a device with no rating may not claim more.
DEFAULT_MAX_POWER_W = 100_000.0
MAX_ENERGY_WH = 1e12  # 1 TWh: a 100 kW meter needs a millennium to count that far
# VictoriaMetrics refuses samples more than 2 days ahead of its clock ("too big timestamp").
STORE_MAX_FUTURE_S = 2 * 86400.0
# What the firmware can hold offline: queue_max 2048 telemetry records every telemetry_s 10 s
# (firmware/lib/tendril_fw/config.py, firmware/README.md "Telemetry") = 20,480 s, ~5.7 h.
FIRMWARE_BACKLOG_S = 2048 * 10.0
DEFAULT_MAX_SKEW_S = 300.0

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_TIMED = frozenset({wire.TELEMETRY, wire.STATE, wire.ACK})


def key_count(payload: bytes) -> int:
    """Keys of a flat JSON object (every accepted message is one: its schema has scalars only):
    with strings blanked, each ':' separates a key from its value."""
    return _STRINGS.sub(b'""', payload).count(b":")


@dataclass(frozen=True)
class Limits:
    max_age_s: float | None = None  # None: no lower bound but the contract's (e.g. replayed history)
    # None: unchecked (library default: a simulated or test clock need not be the store's clock);
    # `tendril ingest` checks 300 s by default, and never allows more than the store takes.
    max_skew_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s}")
        if self.max_skew_s is not None and not 0 <= self.max_skew_s <= STORE_MAX_FUTURE_S:
            raise ValueError(f"max_skew_s must be 0..{STORE_MAX_FUTURE_S:.0f} (what the store accepts)")


Profile = tuple[str | None, float | None]  # registered (type, rating_w); None: not known


def check(kind: str, get: Callable[[str], Any], present: int, payload: bytes, profile: Profile,
          limits: Limits, now: float) -> tuple[str, str] | None:
    """(reason, detail) if the accepted message must still be refused, else None. `get(name)`
    reads a field (None if absent); `present` is how many fields the decoder kept."""
    if key_count(payload) != present:
        return DUPLICATE_KEY, f"{key_count(payload)} keys, {present} distinct"
    if kind in _TIMED:
        ts = get("ts")
        if limits.max_skew_s is not None and ts > now + limits.max_skew_s:
            return TS_IN_FUTURE, f"ts {ts} ({utc_time(ts)}) is {ts - now:.0f} s ahead"
        if limits.max_age_s is not None and ts < now - limits.max_age_s:
            return TS_TOO_OLD, f"ts {ts} ({utc_time(ts)}) is {now - ts:.0f} s old"
    if kind != wire.TELEMETRY:
        return None
    registered, rating = profile
    if registered is not None and get("type") != registered:
        return TYPE_MISMATCH, f"registered {registered}, says {str(get('type'))[:20]}"
    limit = rating if rating is not None else DEFAULT_MAX_POWER_W
    for name in ("power_w", "load_w"):
        value = get(name)
        if value is not None and abs(value) > limit:
            return IMPLAUSIBLE, f"|{name}| {value:.6g} > {limit:.6g}"
    energy = get("energy_wh")
    if energy is not None and energy > MAX_ENERGY_WH:
        return IMPLAUSIBLE, f"energy_wh {energy:.6g} > {MAX_ENERGY_WH:.0g}"
    return None

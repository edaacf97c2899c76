"""Validated wire messages -> InfluxDB line protocol, and back.

The measurement, tag and field names below are the schema of the time-series store:
dashboards and reports query exactly these names, so they are spelled here once.

Field types are fixed per field name, never taken from the JSON value: InfluxDB rejects a
write whose field type differs from what the shard already holds, so a meter that sends
`"power_w": 1500` must still produce a float, and `seq` is always an integer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import tendril_wire as wire

# ------------------------------------------------------------------ schema names

MEASUREMENT_METER = wire.DEVICE_METER
MEASUREMENT_RELAY = wire.DEVICE_RELAY
MEASUREMENT_STATE = "device_state"
MEASUREMENT_ACK = "command_ack"
MEASUREMENT_STATUS = "device_status"
MEASUREMENTS = (MEASUREMENT_METER, MEASUREMENT_RELAY, MEASUREMENT_STATE, MEASUREMENT_ACK, MEASUREMENT_STATUS)

TAG_SITE = "site"
TAG_DEVICE = "device"

# Ingestion's own health (cloud/ingest/health.py), for the operators' dashboards.
MEASUREMENT_INGEST_HEALTH = "ingest_health"
MEASUREMENT_DEAD_LETTERS = "ingest_dead_letters"
HEALTH_MEASUREMENTS = (MEASUREMENT_INGEST_HEALTH, MEASUREMENT_DEAD_LETTERS)
TAG_WORKER = "worker"
TAG_REASON = "reason"
FIELD_RECEIVED = "received"  # messages, cumulative since the worker started
FIELD_WRITTEN = "written"  # lines acknowledged by the store, cumulative
FIELD_RATE = "rate_msg_s"  # messages received per second over the last interval
FIELD_DUPLICATES = "duplicates"
FIELD_REJECTED = "rejected"
FIELD_SPOOL_LINES = "spool_lines"  # waiting in the outage spool now
FIELD_SPOOL_BYTES = "spool_bytes"
FIELD_WRITE_FAILURES = "write_failures"
FIELD_LAG_P50 = "lag_p50_ms"  # device timestamp -> store acknowledged, over the last interval
FIELD_LAG_P99 = "lag_p99_ms"
FIELD_LAG_MAX = "lag_max_ms"
FIELD_COUNT = "count"  # dead letters with this reason, cumulative

FIELD_SEQ = "seq"
FIELD_POWER_W = "power_w"
FIELD_ENERGY_WH = "energy_wh"
FIELD_RELAY = "relay"
FIELD_LOAD_W = "load_w"
FIELD_UNSYNCED = "unsynced"
FIELD_FW = "fw"
FIELD_UPTIME_S = "uptime_s"
FIELD_FREE_HEAP = "free_heap"
FIELD_QUEUE = "queue"
FIELD_DROPPED = "dropped"
FIELD_RECONNECTS = "reconnects"
FIELD_BOOT = "boot"
FIELD_ID = "id"
FIELD_OK = "ok"
FIELD_REASON = "reason"
FIELD_ONLINE = "online"

FieldValue = bool | int | float | str

# Wire field -> stored type, per message kind. `v` and `ts` never become fields (ts is the
# point's time); telemetry's `type` becomes the measurement. A unit test keeps these tables
# in step with the contract's schemas.
TELEMETRY_FIELD_TYPES: dict[str, type] = {
    FIELD_SEQ: int,
    FIELD_POWER_W: float,
    FIELD_ENERGY_WH: float,
    FIELD_RELAY: int,
    FIELD_LOAD_W: float,
    FIELD_UNSYNCED: bool,
}
STATE_FIELD_TYPES: dict[str, type] = {
    FIELD_SEQ: int,
    FIELD_FW: str,
    FIELD_UPTIME_S: float,
    FIELD_FREE_HEAP: int,
    FIELD_QUEUE: int,
    FIELD_DROPPED: int,
    FIELD_RECONNECTS: int,
    FIELD_RELAY: int,
    FIELD_BOOT: str,
}
ACK_FIELD_TYPES: dict[str, type] = {
    FIELD_ID: str,
    FIELD_SEQ: int,
    FIELD_OK: bool,
    FIELD_REASON: str,
    FIELD_RELAY: int,
}
STORED_KINDS = (wire.TELEMETRY, wire.STATE, wire.STATUS, wire.ACK)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_NS_PER_S = 1_000_000_000


class LineProtocolError(ValueError):
    """A point that cannot be written as line protocol, or a line this module cannot read."""


@dataclass(frozen=True, slots=True)
class LinePoint:
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    ts_ns: int


# ------------------------------------------------------------------ time


def seconds_to_ns(seconds: float) -> int:
    """Unix seconds -> integer nanoseconds, exact for the decimal digits the sender wrote.

    `seconds * 1e9` rounds in binary: 1717000000.123 becomes ...122999808 ns and lands in the
    wrong millisecond. `repr` gives the shortest decimal that reads back as the same float --
    the digits that were on the wire -- and Decimal scales that without rounding error.
    """
    if isinstance(seconds, bool):
        raise TypeError("a timestamp is a number, not a bool")
    if isinstance(seconds, int):
        return seconds * _NS_PER_S
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp is not finite: {seconds!r}")
    scaled = Decimal(repr(float(seconds))) * _NS_PER_S
    return int(scaled.to_integral_value(rounding=ROUND_HALF_EVEN))


# ------------------------------------------------------------------ message -> point


def contract_error(reason: str, detail: str = "") -> wire.ContractError:
    """Typed constructor: the contract module is MicroPython code without annotations."""
    return wire.ContractError(reason, detail)


def _has_control_chars(text: str) -> bool:
    """Control characters, and lone surrogates (JSON can carry "\\ud800"; UTF-8 cannot)."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _coerce(name: str, value: Any, want: type) -> FieldValue:
    """Validated wire value -> stored value of the field's fixed type; ContractError if unstorable."""
    if want is float:
        try:
            number = float(value)
        except OverflowError:
            raise contract_error("out_of_range", name) from None
        if not math.isfinite(number):
            raise contract_error("not_finite", name)
        return number
    if want is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise contract_error("out_of_range", name)
        return int(value)
    if want is bool:
        return bool(value)
    text = str(value)
    # Line protocol has no portable escape for line breaks; refuse rather than mangle.
    if _has_control_chars(text):
        raise contract_error("bad_string", name)
    return text


def _fields(msg: Mapping[str, Any], types: Mapping[str, type]) -> dict[str, FieldValue]:
    return {name: _coerce(name, msg[name], want) for name, want in types.items() if name in msg}


def message_to_point(
    site: str, device: str, kind: str, msg: Mapping[str, Any], received_at: float
) -> LinePoint:
    """A message already validated by `tendril_wire.decode` -> the point to store.

    `received_at` (unix seconds, from the injected clock) stamps status messages, which carry
    no time of their own. Raises `tendril_wire.ContractError` for a valid message the store
    cannot hold (integer beyond int64, control characters in a string) and for kinds that
    are not stored (cmd, tender).
    """
    tags = {TAG_DEVICE: device, TAG_SITE: site}
    if kind == wire.TELEMETRY:
        return LinePoint(msg["type"], tags, _fields(msg, TELEMETRY_FIELD_TYPES), seconds_to_ns(msg["ts"]))
    if kind == wire.STATE:
        return LinePoint(MEASUREMENT_STATE, tags, _fields(msg, STATE_FIELD_TYPES), seconds_to_ns(msg["ts"]))
    if kind == wire.ACK:
        return LinePoint(MEASUREMENT_ACK, tags, _fields(msg, ACK_FIELD_TYPES), seconds_to_ns(msg["ts"]))
    if kind == wire.STATUS:
        online = 1 if msg["state"] == wire.ONLINE else 0
        return LinePoint(MEASUREMENT_STATUS, tags, {FIELD_ONLINE: online}, seconds_to_ns(received_at))
    raise contract_error("unexpected_kind", kind)


def message_to_line(site: str, device: str, kind: str, msg: Mapping[str, Any], received_at: float) -> str:
    return format_line(message_to_point(site, device, kind, msg, received_at))


# ------------------------------------------------------------------ formatting


def _check_name(text: str, what: str) -> None:
    # A backslash is an escape before some characters and a literal before others, and
    # readers disagree on the edge cases; names and tag values never need one, so refuse it.
    if not text or "\\" in text or _has_control_chars(text):
        raise LineProtocolError(f"unusable {what}: {text!r}")


def escape_measurement(name: str) -> str:
    _check_name(name, "measurement")
    return name.replace(",", "\\,").replace(" ", "\\ ")


def escape_key(text: str, what: str = "key") -> str:
    """Tag keys, tag values and field keys."""
    _check_name(text, what)
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_string(text: str) -> str:
    if _has_control_chars(text):
        raise LineProtocolError(f"string field has control characters: {text[:40]!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_value(value: FieldValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise LineProtocolError(f"integer outside int64: {value}")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"float is not finite: {value!r}")
        return repr(value)
    return escape_string(value)


def format_line(point: LinePoint) -> str:
    """One line, tags sorted by key (InfluxDB's preferred order), fields in the point's order."""
    if not point.fields:
        raise LineProtocolError(f"{point.measurement}: a point needs at least one field")
    parts = [escape_measurement(point.measurement)]
    for key in sorted(point.tags):
        parts.append("," + escape_key(key, "tag key") + "=" + escape_key(point.tags[key], "tag value"))
    fields = ",".join(escape_key(k, "field key") + "=" + format_value(v) for k, v in point.fields.items())
    return "".join(parts) + " " + fields + " " + str(point.ts_ns)


# ------------------------------------------------------------------ parsing

_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})


def _scan(line: str, pos: int, stops: str, escapable: str) -> tuple[str, int]:
    """Read up to the first unescaped character in `stops`; returns (text, its index)."""
    out: list[str] = []
    end = len(line)
    while pos < end:
        ch = line[pos]
        if ch == "\\" and pos + 1 < end and line[pos + 1] in escapable:
            out.append(line[pos + 1])
            pos += 2
            continue
        if ch in stops:
            break
        out.append(ch)
        pos += 1
    return "".join(out), pos


def _scan_string(line: str, pos: int) -> tuple[str, int]:
    """`pos` is just after the opening quote; returns (text, index after the closing quote)."""
    out: list[str] = []
    end = len(line)
    while pos < end:
        ch = line[pos]
        if ch == "\\" and pos + 1 < end and line[pos + 1] in '"\\':
            out.append(line[pos + 1])
            pos += 2
            continue
        if ch == '"':
            return "".join(out), pos + 1
        out.append(ch)
        pos += 1
    raise LineProtocolError("unterminated string field")


def _parse_value(token: str) -> FieldValue:
    if token in _TRUE:
        return True
    if token in _FALSE:
        return False
    if token.endswith("i") and _INT_RE.fullmatch(token[:-1]):
        return int(token[:-1])
    if _FLOAT_RE.fullmatch(token):
        number = float(token)
        if math.isfinite(number):
            return number
    raise LineProtocolError(f"unreadable field value {token[:40]!r}")


def _expect(line: str, pos: int, char: str, what: str) -> int:
    if pos >= len(line) or line[pos] != char:
        raise LineProtocolError(f"expected {what} at column {pos}: {line[:80]!r}")
    return pos + 1


def parse_line(line: str) -> LinePoint:
    """Read one line of the dialect `format_line` writes (timestamp required, in ns)."""
    measurement, pos = _scan(line, 0, ", ", ", ")
    if not measurement:
        raise LineProtocolError(f"missing measurement: {line[:80]!r}")
    tags: dict[str, str] = {}
    while pos < len(line) and line[pos] == ",":
        key, pos = _scan(line, pos + 1, "=, ", ",= ")
        pos = _expect(line, pos, "=", "'=' after tag key")
        value, pos = _scan(line, pos, ", =", ",= ")
        if not key or not value:
            raise LineProtocolError(f"empty tag key or value: {line[:80]!r}")
        tags[key] = value
    pos = _expect(line, pos, " ", "space before fields")
    fields: dict[str, FieldValue] = {}
    while True:
        key, pos = _scan(line, pos, "=, ", ",= ")
        pos = _expect(line, pos, "=", "'=' after field key")
        if not key:
            raise LineProtocolError(f"empty field key: {line[:80]!r}")
        if pos < len(line) and line[pos] == '"':
            fields[key], pos = _scan_string(line, pos + 1)
        else:
            token, pos = _scan(line, pos, ", ", "")
            fields[key] = _parse_value(token)
        if pos < len(line) and line[pos] == ",":
            pos += 1
            continue
        break
    pos = _expect(line, pos, " ", "space before timestamp")
    stamp = line[pos:]
    if not _INT_RE.fullmatch(stamp):
        raise LineProtocolError(f"bad or missing timestamp {stamp[:30]!r}")
    return LinePoint(measurement, tags, fields, int(stamp))

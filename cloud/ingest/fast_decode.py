"""The ingest hot path: payload bytes -> validated message -> line protocol, in a few microseconds.

Typed msgspec Structs are generated from the contract's own schemas (tendril_wire.SCHEMAS), so a
field added there appears here without an edit. The Structs check JSON types in C; the value
rules of `tendril_wire.validate` (version, timestamp window, ranges, enumerations) are restated
below for speed and proven equal to the contract by property tests.

This path only ever *accepts*. Whenever it is unsure -- any msgspec error, any rule broken, a
value the store cannot hold -- it returns None and the caller asks the contract, which decides
and names the reason. So what is rejected, and why, is exactly what `tendril_wire` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import msgspec
import tendril_wire as wire

from tendril_transactive.cloud.store import line_protocol as lp

Schema = dict[str, tuple[tuple[type, ...], bool]]
SCHEMAS = cast(dict[str, Schema], wire.SCHEMAS)  # the contract module carries no annotations
_TYPES: dict[type, Any] = {int: int, float: float, str: str, bool: bool}


def _annotation(types: tuple[type, ...]) -> Any:
    if types == (int, float):
        return int | float
    (only,) = types
    return _TYPES[only]


def _struct_for(kind: str) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, (types, required) in SCHEMAS[kind].items():
        annotation = _annotation(types)
        if required:
            fields.append((name, annotation))
        else:
            fields.append((name, annotation | msgspec.UnsetType, msgspec.UNSET))
    return msgspec.defstruct(
        f"Wire{kind.capitalize()}", fields, kw_only=True, forbid_unknown_fields=True
    )


STRUCTS: dict[str, type[msgspec.Struct]] = {kind: _struct_for(kind) for kind in lp.STORED_KINDS}
_DECODERS = {kind: msgspec.json.Decoder(struct) for kind, struct in STRUCTS.items()}
_FIELD_NAMES = {kind: tuple(SCHEMAS[kind]) for kind in STRUCTS}
_UNSET = msgspec.UNSET
_NS = 1_000_000_000
_INT64_MIN, _INT64_MAX = lp.INT64_MIN, lp.INT64_MAX


def decode(kind: str, payload: bytes) -> Any:
    """The decoded Struct if the contract certainly accepts `payload` as `kind`, else None."""
    if len(payload) > wire.MAX_PAYLOAD:
        return None
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return None
    try:
        msg = decoder.decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError):  # ValueError: invalid UTF-8 in a string
        return None
    return msg if _RULES[kind](msg) else None


def as_dict(kind: str, msg: Any) -> dict[str, Any]:
    """The same dict `tendril_wire.decode` returns (fields that were present)."""
    out = {}
    for name in _FIELD_NAMES[kind]:
        value = getattr(msg, name)
        if value is not _UNSET:
            out[name] = value
    return out


# ------------------------------------------------------------------ the contract's value rules


def _ts_ok(ts: int | float) -> bool:
    return wire.MIN_TS <= ts < wire.MAX_TS


def _telemetry_ok(m: Any) -> bool:
    if m.v != wire.VERSION or not _ts_ok(m.ts) or m.seq < 0:
        return False
    if m.type == wire.DEVICE_METER:
        return m.power_w is not _UNSET and m.energy_wh is not _UNSET and m.energy_wh >= 0
    if m.type == wire.DEVICE_RELAY:
        return m.load_w is not _UNSET and m.relay in (0, 1)
    return False


def _state_ok(m: Any) -> bool:
    return bool(m.v == wire.VERSION and _ts_ok(m.ts))


def _status_ok(m: Any) -> bool:
    return m.v == wire.VERSION and m.state in (wire.ONLINE, wire.OFFLINE)


def _ack_ok(m: Any) -> bool:
    return bool(m.v == wire.VERSION and _ts_ok(m.ts))


_RULES: dict[str, Callable[[Any], bool]] = {
    wire.TELEMETRY: _telemetry_ok,
    wire.STATE: _state_ok,
    wire.STATUS: _status_ok,
    wire.ACK: _ack_ok,
}


# ------------------------------------------------------------------ line protocol


def ts_ns(seconds: int | float) -> int:
    """`line_protocol.seconds_to_ns` for timestamps inside the contract's window.

    There, `repr` of a float never uses an exponent and has at most 7 decimals (17 significant
    digits, 10 before the point), so the decimal digits scale to nanoseconds exactly.
    """
    if type(seconds) is int:
        return seconds * _NS
    whole, _, frac = repr(seconds).partition(".")
    return int(whole + (frac + "000000000")[:9])


class Unstorable(ValueError):
    """A valid value the store cannot hold; the slow path names the reason."""


def _str(value: str) -> str:
    for ch in value:
        if ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff":
            raise Unstorable
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_range(value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise Unstorable
    return value


# How each stored type is written; `float(v)` raises OverflowError for ints beyond a double,
# and msgspec never yields a non-finite float, so a float needs no other check.
_CODE = {
    float: "parts.append({prefix!r} + repr(float(v)))",
    int: "parts.append(f'{prefix}{{_int_range(v)}}i')",
    bool: "parts.append({prefix!r} + ('true' if v else 'false'))",
    str: "parts.append({prefix!r} + _str(v))",
}


def _compile(kind: str, types: dict[str, type]) -> Callable[[str, str, Any], str]:
    """A formatter for one kind, generated from line_protocol's field table (as dataclasses
    generates __init__): a field added to the contract is formatted without an edit here, and
    no per-field dispatch runs per message."""
    head = "m.type" if kind == wire.TELEMETRY else repr(_MEASUREMENT[kind])
    src = ["def fmt(site, device, m):", "    parts = []"]
    for name, want in types.items():
        src += [f"    v = m.{name}", "    if v is not UNSET:", "        " + _CODE[want].format(prefix=name + "=")]
    src.append(f"    return {head} + ',device=' + device + ',site=' + site + ' ' + ','.join(parts)")
    scope: dict[str, Any] = {"UNSET": _UNSET, "_int_range": _int_range, "_str": _str}
    exec("\n".join(src), scope)  # the source comes from the constant tables above, never from input
    fmt: Callable[[str, str, Any], str] = scope["fmt"]
    return fmt


_MEASUREMENT = {wire.STATE: lp.MEASUREMENT_STATE, wire.ACK: lp.MEASUREMENT_ACK}
_FORMATTERS = {
    wire.TELEMETRY: _compile(wire.TELEMETRY, lp.TELEMETRY_FIELD_TYPES),
    wire.STATE: _compile(wire.STATE, lp.STATE_FIELD_TYPES),
    wire.ACK: _compile(wire.ACK, lp.ACK_FIELD_TYPES),
}


def line(site: str, device: str, kind: str, msg: Any, received_at: float) -> tuple[str, int] | None:
    """`line_protocol.message_to_line` for a message `decode` accepted, and the point's time in
    ns; None if the store can't hold a value (the slow path then names the reason). Site and
    device are contract ids, which never need escaping."""
    try:
        if kind == wire.STATUS:
            stamp = lp.seconds_to_ns(received_at)
            online = 1 if msg.state == wire.ONLINE else 0
            text = f"{lp.MEASUREMENT_STATUS},device={device},site={site} {lp.FIELD_ONLINE}={online}i {stamp}"
            return text, stamp
        stamp = ts_ns(msg.ts)
        return _FORMATTERS[kind](site, device, msg) + " " + str(stamp), stamp
    except (Unstorable, OverflowError):
        return None

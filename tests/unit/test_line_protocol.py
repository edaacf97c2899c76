"""Line protocol: escaping, exact timestamps, the mapping of every stored kind, round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tendril_wire as wire
from hypothesis import given, settings
from hypothesis import strategies as st

from tendril_transactive.cloud.store import line_protocol as lp
from tendril_transactive.cloud.store.line_protocol import LinePoint, LineProtocolError

pytestmark = pytest.mark.unit

RECEIVED = 1_717_000_100.25


def validated(kind: str, msg: dict[str, Any]) -> dict[str, Any]:
    """Through the same decode the ingestor uses, so the tests see what it sees."""
    return wire.decode(kind, json.dumps(msg).encode())


# ------------------------------------------------------------------ escaping


def test_escaping_of_measurement_tags_fields_and_strings() -> None:
    point = LinePoint(
        "my meas,x",
        {"tag key": "a,b=c d", "site": "s1"},
        {"field=k": 1.5, "text": 'say "hi" \\ bye, ok=1', "n": -3, "flag": False},
        1,
    )
    line = lp.format_line(point)
    assert line == (
        "my\\ meas\\,x,site=s1,tag\\ key=a\\,b\\=c\\ d "
        'field\\=k=1.5,text="say \\"hi\\" \\\\ bye, ok=1",n=-3i,flag=false 1'
    )
    assert lp.parse_line(line) == point


@pytest.mark.parametrize("bad", ["back\\slash", "new\nline", "tab\there", ""])
def test_names_and_tag_values_that_cannot_be_written_are_refused(bad: str) -> None:
    with pytest.raises(LineProtocolError):
        lp.format_line(LinePoint("m", {"site": bad}, {"x": 1.0}, 0))
    with pytest.raises(LineProtocolError):
        lp.format_line(LinePoint("m", {}, {bad: 1.0}, 0))
    with pytest.raises(LineProtocolError):
        lp.format_line(LinePoint(bad, {}, {"x": 1.0}, 0))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**63, -(2**63) - 1, "line\nbreak", "nul\x00"])
def test_unwritable_field_values_are_refused(value: lp.FieldValue) -> None:
    with pytest.raises(LineProtocolError):
        lp.format_line(LinePoint("m", {}, {"x": value}, 0))


def test_a_point_needs_a_field() -> None:
    with pytest.raises(LineProtocolError, match="at least one field"):
        lp.format_line(LinePoint("m", {"site": "s"}, {}, 0))


@pytest.mark.parametrize(
    "line",
    [
        "",
        "m",
        "m x=1",
        "m x=1 ",
        "m x=1 12.5",
        "m,site x=1 1",
        "m,=v x=1 1",
        "m x= 1",
        "m x=nan 1",
        "m x=1_000 1",
        "m x=1u 1",
        'm x="open 1',
        "m =1 1",
        "m x=1,y 1",
    ],
)
def test_lines_outside_our_dialect_are_rejected(line: str) -> None:
    with pytest.raises(LineProtocolError):
        lp.parse_line(line)


def test_parser_reads_every_boolean_spelling_and_scientific_floats() -> None:
    point = lp.parse_line("m a=t,b=FALSE,c=True,d=f,e=1e+20,f=-2.5E-3,g=.5,h=7 9")
    assert point.fields == {
        "a": True,
        "b": False,
        "c": True,
        "d": False,
        "e": 1e20,
        "f": -0.0025,
        "g": 0.5,
        "h": 7.0,
    }
    assert all(isinstance(point.fields[k], float) for k in "efgh")


# ------------------------------------------------------------------ timestamps


def test_float_multiplication_would_land_in_the_wrong_millisecond() -> None:
    # The reason seconds_to_ns exists: the naive conversion is off by 192 ns here.
    assert round(1717000000.123 * 1e9) != 1717000000123000000
    assert lp.seconds_to_ns(1717000000.123) == 1717000000123000000


@settings(max_examples=500)
@given(st.integers(min_value=wire.MIN_TS * 1000, max_value=wire.MAX_TS * 1000 - 1))
def test_millisecond_timestamps_are_exact(ms: int) -> None:
    assert lp.seconds_to_ns(ms / 1000) == ms * 1_000_000


@settings(max_examples=500)
@given(st.integers(min_value=wire.MIN_TS * 1_000_000, max_value=wire.MAX_TS * 1_000_000 - 1))
def test_microsecond_timestamps_are_exact(us: int) -> None:
    # Doubles near 2e9 are 2.4e-7 s apart, so every microsecond is still its own float.
    assert lp.seconds_to_ns(us / 1_000_000) == us * 1000


def test_integer_and_bad_timestamps() -> None:
    assert lp.seconds_to_ns(1_717_000_000) == 1_717_000_000_000_000_000
    with pytest.raises(ValueError):
        lp.seconds_to_ns(float("nan"))
    with pytest.raises(TypeError):
        lp.seconds_to_ns(True)


# ------------------------------------------------------------------ mapping per kind


def test_meter_telemetry() -> None:
    raw = {**wire.telemetry_meter(41, 1717000000.123, 1500, 10.25), "unsynced": True}
    msg = validated(wire.TELEMETRY, raw)
    line = lp.message_to_line("site-1", "meter_a", wire.TELEMETRY, msg, RECEIVED)
    # power_w arrived as a JSON integer and is still stored as a float (fixed field types).
    assert line == (
        "meter,device=meter_a,site=site-1 "
        "seq=41i,power_w=1500.0,energy_wh=10.25,unsynced=true 1717000000123000000"
    )


def test_relay_telemetry() -> None:
    msg = validated(wire.TELEMETRY, wire.telemetry_relay(7, 1717000001, 1, 850))
    point = lp.message_to_point("s", "pool", wire.TELEMETRY, msg, RECEIVED)
    assert point == LinePoint(
        lp.MEASUREMENT_RELAY,
        {"site": "s", "device": "pool"},
        {"seq": 7, "relay": 1, "load_w": 850.0},
        1717000001_000_000_000,
    )
    assert isinstance(point.fields["relay"], int)
    assert isinstance(point.fields["load_w"], float)


def test_state() -> None:
    msg = validated(
        wire.STATE,
        {
            "v": 1,
            "seq": 3,
            "ts": 1717000002.5,
            "fw": "1.2.0",
            "uptime_s": 120,
            "free_heap": 51234,
            "queue": 2,
            "dropped": 0,
            "reconnects": 1,
            "relay": 0,
            "boot": "power_on",
        },
    )
    line = lp.message_to_line("s", "d", wire.STATE, msg, RECEIVED)
    assert line == (
        'device_state,device=d,site=s seq=3i,fw="1.2.0",uptime_s=120.0,free_heap=51234i,'
        'queue=2i,dropped=0i,reconnects=1i,relay=0i,boot="power_on" 1717000002500000000'
    )


def test_ack() -> None:
    msg = validated(wire.ACK, wire.ack("cmd-9", 12, 1717000003.001, False, wire.REFUSE_EXPIRED, 1))
    line = lp.message_to_line("s", "d", wire.ACK, msg, RECEIVED)
    assert line == (
        'command_ack,device=d,site=s id="cmd-9",seq=12i,ok=false,reason="expired",relay=1i '
        "1717000003001000000"
    )


@pytest.mark.parametrize(("online", "value"), [(True, 1), (False, 0)])
def test_status_is_stamped_with_the_receive_time(online: bool, value: int) -> None:
    msg = wire.decode(wire.STATUS, wire.status_payload(online))
    point = lp.message_to_point("s", "d", wire.STATUS, msg, RECEIVED)
    assert point == LinePoint(
        lp.MEASUREMENT_STATUS, {"site": "s", "device": "d"}, {"online": value}, 1717000100_250_000_000
    )


@pytest.mark.parametrize("kind", [wire.CMD, wire.TENDER])
def test_kinds_that_are_not_stored_are_refused_with_a_reason(kind: str) -> None:
    with pytest.raises(wire.ContractError) as err:
        lp.message_to_point("s", "d", kind, {"v": 1}, RECEIVED)
    assert err.value.reason == "unexpected_kind"


@pytest.mark.parametrize(
    ("kind", "msg", "reason"),
    [
        (wire.TELEMETRY, wire.telemetry_meter(2**63, 1717000000, 1.0, 1.0), "out_of_range"),
        (wire.TELEMETRY, wire.telemetry_meter(1, 1717000000, 10**400, 1.0), "out_of_range"),
        (wire.ACK, wire.ack("c1", 1, 1717000000, True, "line\nbreak", 1), "bad_string"),
        (wire.ACK, wire.ack("c\x001", 1, 1717000000, True, "accepted", 1), "bad_string"),
    ],
)
def test_valid_messages_the_store_cannot_hold_get_a_reason(
    kind: str, msg: dict[str, Any], reason: str
) -> None:
    checked = validated(kind, msg)  # the contract accepts them ...
    with pytest.raises(wire.ContractError) as err:  # ... the store cannot
        lp.message_to_point("s", "d", kind, checked, RECEIVED)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("kind", "table"),
    [
        (wire.TELEMETRY, lp.TELEMETRY_FIELD_TYPES),
        (wire.STATE, lp.STATE_FIELD_TYPES),
        (wire.ACK, lp.ACK_FIELD_TYPES),
    ],
)
def test_field_tables_follow_the_contract(kind: str, table: dict[str, type]) -> None:
    schema = wire.SCHEMAS[kind]
    expected = {name for name in schema if name not in ("v", "ts", "type")}
    assert set(table) == expected, "contract fields and stored fields drifted apart"
    for name, want in table.items():
        accepted = schema[name][0]
        if want is float:
            assert accepted == (int, float), name
        else:
            assert accepted == (want,), name


# ------------------------------------------------------------------ round trip

_name = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"), min_size=1, max_size=12
)
_value = st.one_of(
    st.booleans(),
    st.integers(min_value=lp.INT64_MIN, max_value=lp.INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),
)


@settings(max_examples=300)
@given(
    measurement=_name,
    tags=st.dictionaries(_name, _name, max_size=3),
    fields=st.dictionaries(_name, _value, min_size=1, max_size=5),
    ts_ns=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_round_trip(
    measurement: str, tags: dict[str, str], fields: dict[str, lp.FieldValue], ts_ns: int
) -> None:
    point = LinePoint(measurement, tags, fields, ts_ns)
    line = lp.format_line(point)
    assert "\n" not in line
    back = lp.parse_line(line)
    assert back == point
    for key, value in fields.items():
        assert type(back.fields[key]) is type(value)
    assert lp.format_line(back) == line

"""The fast decode path against the contract: it accepts only what tendril_wire accepts, with the
same values, writes the same line, and with the fallback every input ends up exactly where the
contract puts it. Includes the >= 100,000-input property run of issue 8 (iv)."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
import tendril_wire as wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tendril_transactive.cloud.ingest import fast_decode, validation
from tendril_transactive.cloud.ingest.classify import Accepted, Classifier, Rejected, classify
from tendril_transactive.cloud.store.line_protocol import STORED_KINDS, parse_line, seconds_to_ns

pytestmark = pytest.mark.unit

NOW = 1_717_000_000.5
REASON = re.compile(r"[a-z][a-z_]*")
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = wire.SCHEMAS  # type: ignore[assignment]


# ------------------------------------------------------------------ generated from the contract


def test_structs_are_the_contract_schemas() -> None:
    for kind in STORED_KINDS:
        struct = fast_decode.STRUCTS[kind]
        assert set(struct.__struct_fields__) == set(SCHEMAS[kind]), kind
        required = {name for name, (_types, req) in SCHEMAS[kind].items() if req}
        defaults = dict(zip(struct.__struct_fields__[-len(struct.__struct_defaults__) :], struct.__struct_defaults__,
                            strict=True)) if struct.__struct_defaults__ else {}  # fmt: skip
        assert required == set(struct.__struct_fields__) - set(defaults), kind


# ------------------------------------------------------------------ timestamps

_in_window = st.one_of(
    st.integers(min_value=wire.MIN_TS, max_value=wire.MAX_TS - 1),
    st.floats(min_value=wire.MIN_TS, max_value=wire.MAX_TS, exclude_max=True),
    st.integers(min_value=wire.MIN_TS * 10**6, max_value=wire.MAX_TS * 10**6 - 1).map(lambda us: us / 10**6),
)


@settings(max_examples=2000)
@given(_in_window)
def test_fast_timestamps_equal_the_exact_conversion(ts: float) -> None:
    assert fast_decode.ts_ns(ts) == seconds_to_ns(ts)


# ------------------------------------------------------------------ JSON objects near the schemas

_odd_strings = st.text(st.characters(codec=None), max_size=12) | st.sampled_from(
    ["\ud800", "a\x00b", "new\nline", 'q"uote', "back\\slash", "\x7f", "é✓"]
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, -1, 2**63 - 1, 2**63, -(2**63), 10**400, 1717000000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=wire.MIN_TS - 10, max_value=wire.MAX_TS + 10),
    st.sampled_from([0.0, -0.0, 1e308, 1.5, 1717000000.123]),
    _odd_strings,
    st.sampled_from([wire.DEVICE_METER, wire.DEVICE_RELAY, wire.ONLINE, wire.OFFLINE, "1.2.0"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _valid_value(types: tuple[type, ...], name: str) -> st.SearchStrategy[Any]:
    if name == "v":
        return st.just(wire.VERSION)
    if name == "ts":
        return _in_window
    if name == "type":
        return st.sampled_from([wire.DEVICE_METER, wire.DEVICE_RELAY])
    if name == "state":
        return st.sampled_from([wire.ONLINE, wire.OFFLINE])
    if name == "relay":
        return st.sampled_from([0, 1])
    if types == (bool,):
        return st.booleans()
    if types == (int,):
        return st.integers(min_value=0, max_value=2**40)
    if types == (str,):
        return st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f"), max_size=12)
    return st.one_of(st.integers(min_value=0, max_value=10**9), st.floats(min_value=0, max_value=1e9))


@st.composite
def near_schema(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """Mostly valid objects of `kind`, with some fields dropped, retyped or added."""
    msg: dict[str, Any] = {}
    for name, (types, _required) in SCHEMAS[kind].items():
        roll = draw(st.integers(min_value=0, max_value=19))
        if roll == 0:
            continue
        msg[name] = draw(_values) if roll == 1 else draw(_valid_value(types, name))
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        msg[draw(st.text(max_size=6))] = draw(_values)
    return msg


_kinds = st.sampled_from(list(STORED_KINDS))


def _dumps(msg: dict[str, Any], style: int) -> bytes:
    text = json.dumps(msg, ensure_ascii=bool(style % 2), separators=(",", ":") if style > 1 else None)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def kind_and_payload(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(_kinds)
    return kind, _dumps(draw(near_schema(kind)), draw(st.integers(min_value=0, max_value=3)))


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind_and_payload())
def test_fast_decode_accepts_only_what_the_contract_accepts_with_the_same_values(case: tuple[str, bytes]) -> None:
    kind, payload = case
    fast = fast_decode.decode(kind, payload)
    try:
        reference: dict[str, Any] | None = wire.decode(kind, payload)
    except wire.ContractError:
        reference = None
    if fast is None:
        return  # the fallback asks the contract; that it rarely happens for valid input is tested below
    assert reference is not None, f"fast path accepted what the contract rejects: {payload!r}"
    got = fast_decode.as_dict(kind, fast)
    assert got.keys() == reference.keys()
    assert all(_same(got[k], reference[k]) for k in got), (got, reference)


@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_valid_messages_take_the_fast_path_and_write_the_reference_line(data: st.DataObject) -> None:
    kind = data.draw(_kinds)
    msg = {name: data.draw(_valid_value(types, name)) for name, (types, req) in SCHEMAS[kind].items()
           if req or data.draw(st.booleans())}  # fmt: skip
    if kind == wire.TELEMETRY:  # the per-type required fields
        msg.update({"power_w": 1.5, "energy_wh": 2.0} if msg["type"] == wire.DEVICE_METER else {"load_w": 0.0})
        msg["relay"] = msg.get("relay", 1)
    payload = json.dumps(msg).encode()
    reference = classify(wire.device_topic("s1", "d-1", kind), payload, NOW)
    assert isinstance(reference, Accepted), reference
    fast = fast_decode.decode(kind, payload)
    assert fast is not None, f"valid message missed the fast path: {payload!r}"
    line, stamp = fast_decode.line("s1", "d-1", kind, fast, NOW) or ("", 0)
    assert line == reference.line
    assert stamp == (reference.stamp_ns if kind != wire.STATUS else seconds_to_ns(NOW))


# ------------------------------------------------------------------ issue 8 (iv): any input, a decision


class Count:
    cases = 0


@pytest.fixture(scope="module")
def counted() -> Iterator[type[Count]]:
    yield Count
    assert Count.cases >= 100_000, f"only {Count.cases} inputs went through the decoder"


_ids = st.sampled_from(["s1", "home-7", "meter", "relay_2", "S1", "a.b", "", "x" * 33]) | st.text(max_size=8)
_topic_kinds = st.sampled_from([*wire.DEVICE_KINDS, wire.TENDER, "TELEMETRY"]) | st.text(max_size=6)
_topics = st.one_of(
    st.builds(lambda s, d, k: f"{wire.ROOT}/{s}/{d}/{k}", _ids, _ids, _topic_kinds),
    st.sampled_from([wire.device_topic("s1", "d1", k) for k in wire.DEVICE_KINDS] + [wire.tender_topic("s1")]),
    st.text(max_size=40),
    st.builds(lambda r: wire.dead_letter_topic(r), st.sampled_from(["bad_json", "x"])),
)
_payloads = st.one_of(
    st.binary(max_size=300),
    kind_and_payload().map(lambda kp: kp[1]),
    st.builds(lambda n: b"[" * n, st.integers(min_value=0, max_value=wire.MAX_PAYLOAD + 5)),
    st.builds(
        lambda n: b"{" + b" " * n + b"}", st.integers(min_value=wire.MAX_PAYLOAD - 3, max_value=wire.MAX_PAYLOAD)
    ),
    st.sampled_from([b"", b"null", b"{}", b"[]", b'"x"', b"\xef\xbb\xbf{}", b"NaN", b"{\"v\":1}" * 3]),
)


@st.composite
def _case(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.integers(min_value=0, max_value=2)) == 0:  # matched topic and payload kinds: deep paths
        kind, payload = draw(kind_and_payload())
        return wire.device_topic(draw(st.sampled_from(["s1", "home-2"])), "dev-1", kind), payload
    return draw(_topics), draw(_payloads)


def _mutants(payload: bytes, rnd: random.Random, count: int) -> Iterator[bytes]:
    """Cheap byte-level damage to a drawn payload: what a flaky radio or a buggy firmware sends."""
    for _ in range(count):
        data = bytearray(payload)
        op = rnd.randrange(6)
        at = rnd.randrange(len(data) + 1)
        if op == 0:
            del data[at:]  # truncated
        elif op == 1 and data:
            data[min(at, len(data) - 1)] ^= 1 << rnd.randrange(8)  # bit flip
        elif op == 2:
            data[at:at] = bytes([rnd.randrange(256)])  # stray byte
        elif op == 3:
            data[at:at] = data[rnd.randrange(len(data) + 1) :][: rnd.randrange(1, 40)]  # repeated slice
        elif op == 4:
            data = bytearray(re.sub(rb"\d", str(rnd.randrange(10)).encode(), bytes(data), count=rnd.randrange(1, 4)))
        else:
            data = bytearray(bytes(data).replace(b'"', b"'", 1))
        yield bytes(data)


# Refusals beyond the contract: duplicate keys, implausible values, far-off timestamps (issue 13).
BOUNDARY_CHECKS = {validation.DUPLICATE_KEY, validation.TYPE_MISMATCH, validation.IMPLAUSIBLE,
                   validation.TS_TOO_OLD, validation.TS_IN_FUTURE}
MUTANTS = 9


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_case(), min_size=10, max_size=10), st.randoms(use_true_random=False))
def test_every_input_is_stored_or_rejected_with_the_contracts_reason(
    counted: type[Count], cases: list[tuple[str, bytes]], rnd: random.Random
) -> None:
    """1,000 examples x 10 drawn inputs x (the input + 9 damaged copies) = 100,000 inputs."""
    classifier = Classifier()
    for topic, drawn in cases:
        for payload in [drawn, *_mutants(drawn, rnd, MUTANTS)]:
            counted.cases += 1
            result = classifier(topic, payload, NOW)
            reference = classify(topic, payload, NOW)
            if isinstance(result, Rejected):
                assert REASON.fullmatch(result.reason), result
                if result.reason in BOUNDARY_CHECKS:
                    # The contract accepts it; ingestion's own checks (cloud.ingest.validation) do not.
                    assert not isinstance(reference, Rejected) or reference.reason == result.reason, (result, reference)
                else:
                    assert isinstance(reference, Rejected) and reference.reason == result.reason, (result, reference)
                assert result.dead_letter(NOW)  # always serialisable, whatever the payload
                continue
            assert isinstance(reference, Accepted), (result, reference)
            assert (result.line, result.stamp_ns, result.seq) == (reference.line, reference.stamp_ns, reference.seq)
            assert result.msg == reference.msg
            assert parse_line(result.line).measurement
            result.line.encode()  # what the committer sends must be UTF-8

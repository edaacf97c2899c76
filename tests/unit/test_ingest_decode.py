"""The ingest decode path: any topic and any bytes give a stored point or a rejection with a reason."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest
import tendril_wire as wire
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tendril_transactive.cloud.ingest.ingestor import DEAD_LETTER_PAYLOAD_BYTES, Accepted, Ingestor, Rejected, classify
from tendril_transactive.cloud.store.line_protocol import MEASUREMENTS, parse_line
from tendril_transactive.cloud.store.sinks import EmbeddedStore
from tendril_transactive.edge.clock import SimClock

pytestmark = pytest.mark.unit

NOW = 1_717_000_000.0
REASON = re.compile(r"[a-z][a-z_]*")


def make_ingestor(store: EmbeddedStore, **kwargs: Any) -> Ingestor:
    # SimClock at speed 1 from a fixed origin: status stamps near NOW, and no broker is needed
    # because `handle` is the synchronous per-message step of `Ingestor.run`.
    return Ingestor("127.0.0.1", 1, store, clock=SimClock(sim_origin=NOW), **kwargs)


# ------------------------------------------------------------------ strategies

_ids = st.one_of(st.sampled_from(["s1", "meter-1", "relay_2"]), st.text(max_size=40))
_kinds = st.one_of(st.sampled_from([*wire.DEVICE_KINDS, wire.TENDER]), st.text(max_size=12))
_topics = st.one_of(
    st.text(max_size=80),
    st.builds(lambda s, d, k: f"{wire.ROOT}/{s}/{d}/{k}", _ids, _ids, _kinds),
    st.builds(lambda s: wire.tender_topic("s1") if s else wire.dead_letter_topic("bad_json"), st.booleans()),
    st.sampled_from([wire.device_topic("s1", "d1", k) for k in wire.DEVICE_KINDS]),
)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from([wire.DEVICE_METER, wire.DEVICE_RELAY, wire.ONLINE, wire.OFFLINE, 1, 0, 1717000000.5]),
)
_field_names = st.one_of(
    st.sampled_from(sorted({name for schema in wire.SCHEMAS.values() for name in schema})),
    st.text(max_size=8),
)
_valid_bases: dict[str, list[dict[str, Any]]] = {
    wire.TELEMETRY: [
        wire.telemetry_meter(1, 1717000000.25, 1200.5, 10.0),
        wire.telemetry_relay(2, 1717000001, 1, 800),
    ],
    wire.STATUS: [{"v": 1, "state": wire.ONLINE}],
    wire.ACK: [wire.ack("c1", 3, 1717000002.5, True, wire.ACCEPTED, 1)],
    wire.STATE: [{"v": 1, "seq": 4, "ts": 1717000003, "fw": "1.0", "uptime_s": 5, "free_heap": 50000}],
}


@st.composite
def _mutated_messages(draw: st.DrawFn, kind: str) -> bytes:
    msg = dict(draw(st.sampled_from(_valid_bases[kind])))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "delete" and msg:
            del msg[draw(st.sampled_from(sorted(msg)))]
        elif action == "replace" and msg:
            msg[draw(st.sampled_from(sorted(msg)))] = draw(_json_scalars)
        else:
            msg[draw(_field_names)] = draw(_json_scalars)
    return json.dumps(msg).encode()


_payloads = st.one_of(
    st.binary(max_size=600),
    st.sampled_from(sorted(_valid_bases)).flatmap(_mutated_messages),
    st.builds(lambda n: b"[" * n, st.integers(min_value=0, max_value=wire.MAX_PAYLOAD)),
    st.builds(lambda n: b" " * n + b"{}", st.sampled_from([wire.MAX_PAYLOAD - 2, wire.MAX_PAYLOAD - 1])),
)


@st.composite
def _matched(draw: st.DrawFn) -> tuple[str, bytes]:
    """A well-formed topic with a payload of its own kind, mostly valid, sometimes mutated."""
    kind = draw(st.sampled_from(sorted(_valid_bases)))
    site = draw(st.sampled_from(["s1", "site-2"]))
    device = draw(st.sampled_from(["m1", "relay_9"]))
    return wire.device_topic(site, device, kind), draw(_mutated_messages(kind))


_cases = st.one_of(_matched(), st.tuples(_topics, _payloads))


# ------------------------------------------------------------------ the property


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases)
def test_any_topic_and_payload_is_stored_or_rejected_with_a_reason(case: tuple[str, bytes]) -> None:
    topic, payload = case
    store = EmbeddedStore()
    ingestor = make_ingestor(store)
    rejected = ingestor.handle(topic, payload)
    asyncio.run(ingestor.flush())

    assert ingestor.stats.received == 1
    event("accepted" if rejected is None else f"rejected: {rejected.reason}")
    if rejected is None:
        site, device, kind = wire.parse_topic(topic)  # independently valid
        msg = wire.decode(kind, payload)
        assert ingestor.stats.by_kind == {kind: 1}
        assert ingestor.stats.rejected == {}
        assert store.count() == 1
        (measurement,) = store.measurements()
        assert measurement in MEASUREMENTS
        (point,) = store.points(measurement)
        assert point.tags == {"site": site, "device": device}
        assert set(point.fields) <= set(msg) | {"online"}
    else:
        assert REASON.fullmatch(rejected.reason), rejected.reason
        assert ingestor.stats.rejected == {rejected.reason: 1}
        assert store.count() == 0
        assert wire.dead_letter_topic(rejected.reason).count("/") == 3  # one topic level, no wildcards
        letter = json.loads(rejected.dead_letter(NOW))
        assert letter["reason"] == rejected.reason
        assert letter["topic"] == topic
        assert letter["size"] == len(payload)
        assert letter["payload"] == payload[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace")


# ------------------------------------------------------------------ chosen examples


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (wire.device_topic("s", "d", "telemetry"), b"[" * wire.MAX_PAYLOAD, "bad_json"),
        (wire.device_topic("s", "d", "telemetry"), b"\xff\xfe\x00garbage", "bad_json"),
        (wire.device_topic("s", "d", "telemetry"), b"{" + b" " * wire.MAX_PAYLOAD + b"}", "too_large"),
        (wire.device_topic("s", "d", "telemetry"), b'"just a string"', "not_object"),
        (wire.device_topic("s", "d", "cmd"), b"{}", "unexpected_kind"),
        (wire.tender_topic("s"), b"{}", "unexpected_kind"),
        (wire.dead_letter_topic("bad_json"), b"{}", "bad_topic"),
        ("elsewhere/v1/s/d/telemetry", b"{}", "bad_topic"),
        (wire.ROOT + "/S1/d/telemetry", b"{}", "bad_site"),
        (wire.ROOT + "/s/d.1/telemetry", b"{}", "bad_device"),
        (
            wire.device_topic("s", "d", "telemetry"),
            json.dumps(wire.telemetry_meter(2**64, 1717000000, 1.0, 1.0)).encode(),
            "out_of_range",
        ),
    ],
)
def test_known_bad_inputs_get_their_reason(topic: str, payload: bytes, reason: str) -> None:
    result = classify(topic, payload, NOW)
    assert isinstance(result, Rejected), result
    assert result.reason == reason
    assert result.topic == topic


def test_good_message_gives_its_line() -> None:
    payload = wire.encode(wire.TELEMETRY, wire.telemetry_relay(9, 1717000000.007, 0, 12.5))
    result = classify(wire.device_topic("s1", "pump", wire.TELEMETRY), payload, NOW)
    assert isinstance(result, Accepted)
    assert (result.site, result.device, result.kind) == ("s1", "pump", wire.TELEMETRY)
    assert result.line == "relay,device=pump,site=s1 seq=9i,relay=0i,load_w=12.5 1717000000007000000"
    assert parse_line(result.line).ts_ns == 1717000000007000000


def test_rejection_is_logged_with_topic_and_reason_and_good_messages_still_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = EmbeddedStore()
    seen: list[tuple[str, str, str]] = []
    ingestor = make_ingestor(store, on_message=lambda s, d, k, m: seen.append((s, d, k)))
    topic = wire.device_topic("s1", "m1", wire.TELEMETRY)
    first = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, 1717000000, 5.0, 1.0))
    second = wire.encode(wire.TELEMETRY, wire.telemetry_meter(2, 1717000010, 5.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="tendril.ingest"):
        assert ingestor.handle(topic, first) is None
        bad = ingestor.handle(topic, b"{not json")
        assert ingestor.handle(topic, second) is None
        assert ingestor.handle(topic, first) is None  # the same message again: a duplicate, not an error
    asyncio.run(ingestor.flush())

    assert bad is not None and bad.reason == "bad_json"
    (record,) = [r for r in caplog.records if r.name == "tendril.ingest"]
    assert record.levelno == logging.WARNING
    assert topic in record.getMessage() and "bad_json" in record.getMessage()
    assert ingestor.stats.received == 4
    assert ingestor.stats.rejected == {"bad_json": 1}
    assert ingestor.stats.duplicates == 1
    assert ingestor.stats.by_kind == {wire.TELEMETRY: 2}
    assert ingestor.stats.written == 2 and store.count() == 2
    assert seen == [("s1", "m1", wire.TELEMETRY)] * 2


def test_status_is_stamped_by_the_injected_clock() -> None:
    store = EmbeddedStore()
    ingestor = make_ingestor(store)
    ingestor.handle(wire.device_topic("s1", "r1", wire.STATUS), wire.status_payload(False))
    asyncio.run(ingestor.flush())
    (point,) = store.points("device_status")
    assert point.fields == {"online": 0}
    assert abs(point.ts_ns / 1e9 - NOW) < 60  # the SimClock's time (2024), not today's wall clock


def test_a_failing_hook_or_sink_is_counted_and_nothing_is_claimed_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenSink:
        async def write(self, lines: list[str]) -> None:
            raise ConnectionError("store is down")

        async def close(self) -> None:
            return None

    def hook(site: str, device: str, kind: str, msg: dict[str, Any]) -> None:
        raise RuntimeError("hook bug")

    ingestor = Ingestor("127.0.0.1", 1, BrokenSink(), on_message=hook)
    topic = wire.device_topic("s1", "m1", wire.TELEMETRY)
    with caplog.at_level(logging.WARNING, logger="tendril.ingest"):
        for seq in range(3):
            ingestor.handle(
                topic, wire.encode(wire.TELEMETRY, wire.telemetry_meter(seq, 1717000000 + seq, 1.0, 1.0))
            )
        # No spool: the store is retried (with backoff) until we give up; nothing was acknowledged,
        # so the broker would deliver the messages again.
        asyncio.run(ingestor.flush(give_up_after_s=0.5))
    assert ingestor.stats.by_kind == {wire.TELEMETRY: 3}
    assert (ingestor.stats.written, ingestor.stats.lost, ingestor.stats.spooled) == (0, 0, 0)
    assert ingestor.stats.write_failures >= 2
    assert ingestor.pending == 0
    assert ingestor.stats.last_error is not None and "store is down" in ingestor.stats.last_error
    assert sum("hook bug" in (r.exc_text or "") or r.exc_info is not None for r in caplog.records) == 3


_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
_ts = st.one_of(
    st.integers(min_value=wire.MIN_TS, max_value=wire.MAX_TS - 1),
    st.integers(min_value=wire.MIN_TS * 1000, max_value=wire.MAX_TS * 1000 - 1).map(lambda ms: ms / 1000),
)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    ts=_ts,
    meter=st.tuples(_finite, st.floats(min_value=0, max_value=1e12)),
    relay=st.tuples(st.sampled_from([0, 1]), _finite),
    as_meter=st.booleans(),
    unsynced=st.one_of(st.none(), st.booleans()),
)
def test_every_valid_telemetry_message_is_stored_value_for_value(
    seq: int,
    ts: float,
    meter: tuple[float, float],
    relay: tuple[int, float],
    as_meter: bool,
    unsynced: bool | None,
) -> None:
    # Plausible values only (cloud/ingest/validation.py refuses the rest, tested there): not ahead
    # of the ingest clock, power within the default rating, the energy register below 1 TWh.
    ts = min(ts, type(ts)(NOW))
    meter = (max(min(meter[0], 1e5), -1e5), min(meter[1], 1e12))
    relay = (relay[0], max(min(relay[1], 1e5), -1e5))
    msg = wire.telemetry_meter(seq, ts, *meter) if as_meter else wire.telemetry_relay(seq, ts, *relay)
    if unsynced is not None:
        msg["unsynced"] = unsynced
    store = EmbeddedStore()
    ingestor = make_ingestor(store)
    assert (
        ingestor.handle(wire.device_topic("s1", "d1", wire.TELEMETRY), wire.encode(wire.TELEMETRY, msg))
        is None
    )
    asyncio.run(ingestor.flush())
    (point,) = store.points(msg["type"])
    expected_ts = ts * 10**9 if isinstance(ts, int) else round(ts * 1000) * 10**6
    assert point.ts_ns == expected_ts
    assert point.fields == {k: v for k, v in msg.items() if k not in ("v", "ts", "type")}

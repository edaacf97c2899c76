"""Ingestion end to end: paho publishes to a real Mosquitto, the Ingestor stores into a real
VictoriaMetrics (through influxdb-client's /api/v2/write) or the EmbeddedStore, and every
value and timestamp is read back. Malformed messages are interleaved with the good ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.store.line_protocol import LinePoint, parse_line
from tendril_transactive.cloud.store.sinks import EmbeddedStore, InfluxSink, Sink
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics, free_port

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
BASE_MS = 1_717_000_000_000  # 2024-05-29
METERS = [("site-a", "meter-1"), ("site-b", "meter-2")]
RELAYS = [("site-a", "pump"), ("site-b", "ev"), ("site-b", "hvac")]
PER_DEVICE = 24


class FixedClock:
    """Receive time for status points, known exactly by the test."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Good:
    site: str
    device: str
    ts_ms: int
    msg: dict[str, Any]


@dataclass(frozen=True)
class Bad:
    topic: str
    payload: bytes
    reason: str


def good_telemetry() -> list[Good]:
    """Values with few significant digits (VictoriaMetrics keeps ~12) and timestamps whose
    millisecond has no exact binary float, so a naive ts*1e9 conversion would show."""
    out: list[Good] = []
    for i in range(PER_DEVICE):
        for k, (site, device) in enumerate(METERS):
            ts_ms = BASE_MS + i * 10_000 + 123 + 7 * k
            power: float = 1500 + 10 * i if i % 4 == 0 else round(1500.25 + 37.125 * i - k, 3)
            msg = wire.telemetry_meter(i, ts_ms / 1000, power, round(10_000.5 + 4.125 * i, 3))
            if i == 0:
                msg["unsynced"] = True
            out.append(Good(site, device, ts_ms, msg))
        for k, (site, device) in enumerate(RELAYS):
            ts_ms = BASE_MS + i * 10_000 + 501 + 11 * k
            on = (i + k) % 2
            out.append(Good(site, device, ts_ms, wire.telemetry_relay(i, ts_ms / 1000, on, 850.5 * on)))
    return out


def _telemetry(site: str, device: str) -> str:
    return wire.device_topic(site, device, wire.TELEMETRY)


def _meter_json(**changes: Any) -> bytes:
    msg: dict[str, Any] = {**wire.telemetry_meter(1, BASE_MS / 1000, 100.0, 5.0), **changes}
    return json.dumps({k: v for k, v in msg.items() if v is not None}).encode()


BAD = [
    Bad(_telemetry("site-a", "bad-json"), b'{"v": 1, "seq": ', "bad_json"),
    Bad(_telemetry("site-a", "missing"), _meter_json(energy_wh=None), "missing_field"),
    Bad(_telemetry("site-a", "wrong-type"), _meter_json(seq="7"), "bad_type"),
    Bad(_telemetry("site-b", "toaster"), _meter_json(type="toaster"), "bad_device_type"),
    Bad(wire.ROOT + "/Site-A/meter-1/telemetry", _meter_json(), "bad_site"),
    Bad(wire.ROOT + "/site-a/meter.1/telemetry", _meter_json(), "bad_device"),
    Bad(_telemetry("site-b", "huge"), _meter_json()[:-1] + b" " * wire.MAX_PAYLOAD + b"}", "too_large"),
    Bad(_telemetry("site-b", "array"), b"[1, 2, 3]", "not_object"),
    Bad(_telemetry("site-b", "old"), _meter_json(ts=86400), "bad_ts"),
]


def interleave(good: list[Good], bad: list[Bad]) -> list[tuple[str, bytes]]:
    every = max(1, len(good) // (len(bad) + 1))
    out: list[tuple[str, bytes]] = []
    pending = list(bad)
    for n, g in enumerate(good, start=1):
        out.append((_telemetry(g.site, g.device), wire.encode(wire.TELEMETRY, g.msg)))
        if n % every == 0 and pending:
            b = pending.pop(0)
            out.append((b.topic, b.payload))
    out.extend((b.topic, b.payload) for b in pending)
    return out


# ------------------------------------------------------------------ MQTT test clients


class PahoClient:
    """A real paho-mqtt 2.x client (VERSION2 callbacks, MQTT 3.1.1) with bounded waits."""

    def __init__(self, port: int, name: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        self._client.on_connect = lambda *_args: self._connected.set()
        self._client.on_message = self._on_message
        self._client.connect(LOOPBACK, port)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError(f"paho client {name} did not connect to 127.0.0.1:{port} within 10 s")

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload))

    def subscribe(self, topic: str) -> None:
        result, _mid = self._client.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS

    def publish_all(self, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
        infos = [self._client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published(), "broker did not acknowledge a QoS 1 publish within 10 s"

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def wait_until(
    condition: Callable[[], bool], what: Callable[[], str], timeout: float = TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what()}")
        await asyncio.sleep(0.05)


async def run_scenario(
    mosquitto: Mosquitto, sink: Sink, good: list[Good], clock: FixedClock, retained: int = 0
) -> Ingestor:
    """Publish `good` interleaved with BAD, wait until all (plus `retained` messages already on
    the broker) are accounted for, stop the ingestor."""
    ingestor = Ingestor(LOOPBACK, mosquitto.port, sink, clock=clock, batch_max=50, flush_interval_s=0.05)
    watcher = PahoClient(mosquitto.port, "dead-letter-watcher")
    watcher.subscribe(wire.dead_letter_topic("+"))
    stop = asyncio.Event()
    task = asyncio.create_task(ingestor.run(stop))
    try:
        await asyncio.wait_for(ingestor.ready.wait(), timeout=TIMEOUT_S)
        publisher = PahoClient(mosquitto.port, "test-publisher")
        await asyncio.to_thread(publisher.publish_all, interleave(good, BAD))
        publisher.close()
        await wait_until(
            lambda: (
                ingestor.stats.written == len(good) + retained
                and sum(ingestor.stats.rejected.values()) == len(BAD)
            ),
            lambda: f"{len(good) + retained} written and {len(BAD)} rejected; stats now {ingestor.stats}",
        )
        await wait_until(
            lambda: len(watcher.messages()) == len(BAD), lambda: f"dead letters {watcher.messages()}"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=TIMEOUT_S)
        watcher.close()

    letters = [json.loads(payload) for _, payload in watcher.messages()]
    assert sorted((m["reason"], m["topic"]) for m in letters) == sorted((b.reason, b.topic) for b in BAD)
    for topic, payload in watcher.messages():
        letter = json.loads(payload)
        assert topic == wire.dead_letter_topic(letter["reason"])
        assert len(letter["payload"]) <= 512
    return ingestor


def assert_rejections(ingestor: Ingestor, good: list[Good], caplog: pytest.LogCaptureFixture) -> None:
    assert ingestor.stats.rejected == Counter(b.reason for b in BAD)
    assert ingestor.stats.lost == 0 and ingestor.stats.write_failures == 0
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "tendril.ingest" and r.levelno == logging.WARNING
    ]
    for bad in BAD:
        assert any(bad.topic in text and bad.reason in text for text in warnings), f"no warning for {bad}"


# ------------------------------------------------------------------ tests


def test_telemetry_reaches_victoria_metrics_point_for_point(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tendril.ingest")
    good = good_telemetry()
    sink = InfluxSink(victoria.url, None, "tendril", "tendril")

    async def scenario() -> Ingestor:
        try:
            return await run_scenario(mosquitto, sink, good, FixedClock(BASE_MS / 1000))
        finally:
            await sink.close()

    ingestor = asyncio.run(scenario())
    assert ingestor.stats.by_kind == {wire.TELEMETRY: len(good)}
    assert_rejections(ingestor, good, caplog)

    # VictoriaMetrics names each series <measurement>_<field>, keeps site/device as labels,
    # adds no bucket/db label, stores milliseconds, and bools as 1/0.
    expected: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for g in good:
        for name, value in g.msg.items():
            if name not in ("v", "ts", "type"):
                key = (f"{g.msg['type']}_{name}", g.site, g.device)
                expected.setdefault(key, []).append((g.ts_ms, float(value)))
    actual: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for series in victoria.export('{__name__=~"(meter|relay)_.+"}'):
        metric = series["metric"]
        assert isinstance(metric, dict)
        assert set(metric) == {"__name__", "site", "device"}, metric
        timestamps, values = series["timestamps"], series["values"]
        assert isinstance(timestamps, list) and isinstance(values, list)
        actual[(metric["__name__"], metric["site"], metric["device"])] = sorted(
            zip(timestamps, values, strict=True)
        )
    assert sorted(actual) == sorted(expected)
    for key, points in expected.items():
        assert actual[key] == sorted(points), key


def test_every_kind_reaches_the_embedded_store_exactly(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tendril.ingest")
    good = good_telemetry()
    received_at = 1_717_000_500.25
    path = tmp_path / "data" / "telemetry.lp"
    store = EmbeddedStore(path)

    async def scenario() -> Ingestor:
        # Retained status before the ingestor exists: delivered on subscribe, stamped at receipt.
        device = PahoClient(mosquitto.port, "device-status")
        status = [(wire.device_topic("site-a", "pump", wire.STATUS), wire.status_payload(False))]
        await asyncio.to_thread(device.publish_all, status, True)
        device.close()
        try:
            return await run_scenario(mosquitto, store, good, FixedClock(received_at), retained=1)
        finally:
            await store.close()

    ingestor = asyncio.run(scenario())
    assert_rejections(ingestor, good, caplog)
    assert ingestor.stats.by_kind == {wire.TELEMETRY: len(good), wire.STATUS: 1}

    tags = {"site": "site-a", "device": "pump"}
    assert store.points("device_status") == [
        LinePoint("device_status", tags, {"online": 0}, 1717000500250000000)
    ]
    expected: dict[str, list[LinePoint]] = {"meter": [], "relay": []}
    for g in good:
        fields = {k: v for k, v in g.msg.items() if k not in ("v", "ts", "type")}
        fields.update({k: float(fields[k]) for k in ("power_w", "energy_wh", "load_w") if k in fields})
        expected[g.msg["type"]].append(
            LinePoint(g.msg["type"], {"site": g.site, "device": g.device}, fields, g.ts_ms * 10**6)
        )
    for measurement, points in expected.items():
        got = store.points(measurement)
        assert got == sorted(points, key=lambda p: p.ts_ns)
        for point in got:
            assert all(
                isinstance(point.fields[k], int)
                for k in ("seq",) + (("relay",) if measurement == "relay" else ())
            )
    assert store.sites() == ["site-a", "site-b"]
    assert store.count() == len(good) + 1

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == store.count()
    assert sorted((p.measurement, p.ts_ns) for p in map(parse_line, lines)) == sorted(
        [(p.measurement, p.ts_ns) for m in store.measurements() for p in store.points(m)]
    )


def test_state_and_ack_are_stored_and_ingestion_survives_a_broker_restart(mosquitto: Mosquitto) -> None:
    store = EmbeddedStore()
    state = {"v": 1, "seq": 5, "ts": 1717000001.001, "fw": "1.4.2", "uptime_s": 12.5, "free_heap": 54321}
    ack = wire.ack("cmd-77", 6, 1717000002.002, False, wire.REFUSE_MIN_OFF, 0)
    seen: list[tuple[str, str, str, dict[str, Any]]] = []

    async def scenario() -> Ingestor:
        ingestor = Ingestor(
            LOOPBACK,
            mosquitto.port,
            store,
            clock=FixedClock(0.0),
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            on_message=lambda *args: seen.append(args),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop))
        try:
            await asyncio.wait_for(ingestor.ready.wait(), timeout=TIMEOUT_S)
            first = PahoClient(mosquitto.port, "before-restart")
            await asyncio.to_thread(
                first.publish_all,
                [(wire.device_topic("s1", "r1", wire.STATE), wire.encode(wire.STATE, state))],
            )
            first.close()
            await wait_until(
                lambda: ingestor.stats.written == 1, lambda: f"state written; stats {ingestor.stats}"
            )

            await asyncio.to_thread(mosquitto.stop)
            await wait_until(
                lambda: not ingestor.ready.is_set(), lambda: "the ingestor to notice the broker is gone"
            )
            await asyncio.to_thread(mosquitto.start)
            await wait_until(
                lambda: ingestor.stats.connects == 2, lambda: f"a reconnect; stats {ingestor.stats}"
            )

            second = PahoClient(mosquitto.port, "after-restart")
            await asyncio.to_thread(
                second.publish_all, [(wire.device_topic("s1", "r1", wire.ACK), wire.encode(wire.ACK, ack))]
            )
            second.close()
            await wait_until(
                lambda: ingestor.stats.written == 2, lambda: f"ack written; stats {ingestor.stats}"
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=TIMEOUT_S)
        return ingestor

    ingestor = asyncio.run(scenario())
    assert ingestor.stats.last_error is not None and ingestor.stats.last_error.startswith("mqtt:")
    tags = {"site": "s1", "device": "r1"}
    assert store.points("device_state") == [
        LinePoint(
            "device_state",
            tags,
            {"seq": 5, "fw": "1.4.2", "uptime_s": 12.5, "free_heap": 54321},
            1717000001001000000,
        )
    ]
    assert store.points("command_ack") == [
        LinePoint(
            "command_ack",
            tags,
            {"id": "cmd-77", "seq": 6, "ok": False, "reason": "min_off_time", "relay": 0},
            1717000002002000000,
        )
    ]
    assert [(s, d, k) for s, d, k, _ in seen] == [("s1", "r1", wire.STATE), ("s1", "r1", wire.ACK)]
    assert seen[1][3] == ack


def test_influx_sink_surfaces_a_failed_write() -> None:
    sink = InfluxSink(f"http://{LOOPBACK}:{free_port()}", None, "tendril", "tendril")

    async def scenario() -> None:
        try:
            await sink.write(["meter,device=d,site=s power_w=1.0 1717000000000000000"])
        finally:
            await sink.close()

    with pytest.raises(OSError, match="Cannot connect"):
        asyncio.run(scenario())

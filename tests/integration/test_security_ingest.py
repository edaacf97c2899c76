"""Ingestion refuses poisoned data and raises an alarm when its session is taken over (issue 13,
findings 2 and 6), against real Mosquitto 2 and VictoriaMetrics."""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.ingest.known_devices import KnownDevices
from tendril_transactive.cloud.ingest.validation import Limits
from tendril_transactive.cloud.store.sinks import InfluxSink
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration


def _publish(port: int, messages: list[tuple[str, bytes]], client_id: str = "fake-device") -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.connect(LOOPBACK, port)
    c.loop_start()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1).wait_for_publish(15)
    return c


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def test_poisoned_messages_are_refused_counted_and_never_stored(
    mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    now = time.time()
    known = KnownDevices()
    known.register("s1", "meter", wire.DEVICE_METER, 5000.0)
    topic = wire.device_topic("s1", "meter", wire.TELEMETRY)
    good = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, now, 100.0, 1.0))
    bad = {
        "ts_in_future": wire.encode(wire.TELEMETRY, wire.telemetry_meter(2, 4_070_000_000, 100.0, 1.0)),  # 2098
        "ts_too_old": wire.encode(wire.TELEMETRY, wire.telemetry_meter(3, now - 86400, 100.0, 1.0)),
        "implausible": wire.encode(wire.TELEMETRY, wire.telemetry_meter(4, now, 1e308, 1.0)),
        "duplicate_key": good[:-1] + b', "power_w": 9999.0}',
        "type_mismatch": wire.encode(wire.TELEMETRY, wire.telemetry_relay(6, now, 1, 100.0)),
    }

    async def run() -> Ingestor:
        sink = InfluxSink(victoria.url, None, "o", "b")
        ingestor = Ingestor(LOOPBACK, mosquitto.port, sink, devices=known, client_id="sec-ingest",
                            limits=Limits(max_age_s=6 * 3600, max_skew_s=300), flush_interval_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop))
        await asyncio.wait_for(ingestor.ready.wait(), 15)
        pub = await asyncio.to_thread(_publish, mosquitto.port, [(topic, p) for p in [*bad.values(), good]])
        await _until(lambda: ingestor.stats.written >= 1 and sum(ingestor.stats.rejected.values()) >= len(bad))
        stop.set()
        await task
        await sink.close()
        pub.loop_stop()
        return ingestor

    ingestor = asyncio.run(run())
    assert dict(ingestor.stats.rejected) == {reason: 1 for reason in bad}
    assert ingestor.stats.written == 1
    series = victoria.export('{__name__=~"meter_.*"}', start=0, end=4_102_444_800)
    stamps = {ts for s in series for ts in s["timestamps"]}  # type: ignore[union-attr]
    assert len(stamps) == 1 and abs(stamps.pop() - now * 1000) < 2  # only the good one, stored in ms


def test_a_takeover_of_the_ingest_session_raises_an_alarm(mosquitto: Mosquitto, victoria: VictoriaMetrics,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> Ingestor:
        sink = InfluxSink(victoria.url, None, "o", "b")
        ingestor = Ingestor(LOOPBACK, mosquitto.port, sink, client_id="victim-ingest", reconnect_min_s=5.0)
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop))
        await asyncio.wait_for(ingestor.ready.wait(), 15)
        thief = await asyncio.to_thread(_publish, mosquitto.port, [], "victim-ingest")
        # Mosquitto 2.0.11 just closes our connection (no DISCONNECT 0x8E), and the thief's clean
        # start erased our session: ingestion sees it on reconnect and raises the alarm.
        await _until(lambda: ingestor.stats.session_takeovers + ingestor.stats.sessions_lost >= 1)
        thief.loop_stop()
        stop.set()
        await task
        await sink.close()
        return ingestor

    ingestor = asyncio.run(run())
    assert ingestor.stats.session_takeovers + ingestor.stats.sessions_lost >= 1
    assert any("ALARM" in r.getMessage() for r in caplog.records)

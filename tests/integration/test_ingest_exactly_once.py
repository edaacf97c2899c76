"""Issue 8 (i): 20,000 messages from 200 devices, 5 % duplicated and 5 % reordered by the publisher,
plus a connection lost while acknowledgements were in flight (so the broker redelivers what was
already stored): every reading arrives in VictoriaMetrics exactly once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import tendril_wire as wire
from ingest_support import (
    Publisher,
    Sent,
    TcpProxy,
    assert_exactly_once,
    fleet,
    readings,
    stored_counts,
    wait_until,
)

from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.ingest.known_devices import UNKNOWN_DEVICE, KnownDevices
from tendril_transactive.cloud.store.sinks import InfluxSink
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MS = 1_717_000_000_000
DEVICES = fleet(100)  # 200 devices
PER_DEVICE = 100  # 20,000 readings


def publisher_order(sent: list[Sent], rng: random.Random) -> tuple[list[Sent], int]:
    """The order a sloppy publisher sends in: 5 % moved up to 20 places, 5 % sent twice."""
    order = list(sent)
    for _ in range(len(order) // 20):
        i = rng.randrange(len(order))
        j = min(len(order) - 1, i + rng.randint(1, 20))
        order[i], order[j] = order[j], order[i]
    twice = rng.sample(range(len(order)), len(order) // 20)
    for i in sorted(twice, reverse=True):  # the copy goes out a little later, like a resend
        order.insert(min(len(order), i + rng.randint(1, 50)), order[i])
    return order, len(twice)


def test_duplicated_reordered_and_redelivered_messages_are_stored_exactly_once(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    sent = readings(DEVICES, PER_DEVICE, BASE_MS)
    order, copies = publisher_order(sent, random.Random(8))
    assert len(order) == 21_000 and len({s.key for s in order}) == 20_000
    known = KnownDevices({(site, device) for site, device, _ in DEVICES})
    sink = InfluxSink(victoria.url, None, "tendril", "tendril")
    stranger = (wire.device_topic("site-000", "intruder", wire.TELEMETRY), sent[0].payload())

    async def scenario() -> Ingestor:
        proxy = TcpProxy(mosquitto.port)
        await proxy.start()
        ingestor = Ingestor(
            LOOPBACK, proxy.port, sink, devices=known, state_dir=tmp_path / "state", batch_max=200,
            flush_interval_s=0.05, reconnect_min_s=0.1, spool_fsync=False, health_interval_s=0.5,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop))
        publisher = Publisher(mosquitto.port, "sloppy-devices")
        try:
            await asyncio.wait_for(ingestor.ready.wait(), 30)
            split = len(order) * 2 // 5
            await asyncio.to_thread(publisher.publish, [(s.topic, s.payload()) for s in order[:split]])
            # Acknowledgements stop reaching the broker, then the connection drops: everything
            # stored meanwhile comes back as QoS 1 redeliveries after the reconnect.
            proxy.hold()
            held_at = ingestor.stats.written
            more = asyncio.create_task(
                asyncio.to_thread(publisher.publish, [(s.topic, s.payload()) for s in order[split:]])
            )
            await wait_until(lambda: ingestor.stats.written >= held_at + 500,
                             lambda: f"500 more writes while acks are held; {ingestor.stats}")  # fmt: skip
            proxy.cut()
            await more
            await asyncio.to_thread(publisher.publish, [stranger])
            # Every reading stored (more, if dedup failed: the assertions below say so) and the stranger seen.
            await wait_until(
                lambda: ingestor.stats.written >= len(sent) and ingestor.stats.rejected and ingestor.pending == 0,
                lambda: f"{len(sent)} written and the stranger rejected; {ingestor.stats}",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await sink.close()
            await proxy.close()
            publisher.close()
        return ingestor

    ingestor = asyncio.run(scenario())
    stats = ingestor.stats
    assert stats.connects == 2, "the connection was cut once"
    assert stats.duplicates > copies + 400, f"redeliveries after the cut: {stats.duplicates - copies}"
    assert (stats.written, stats.lost, stats.rejected) == (len(sent), 0, {UNKNOWN_DEVICE: 1})
    assert_exactly_once(stored_counts(victoria), sent)
    # Values too, not only timestamps: each meter reading's power is the one sent.
    (series,) = victoria.export('{__name__="meter_power_w",site="site-042"}')
    assert series["values"] == [100.0 + seq for seq in range(PER_DEVICE)]
    assert stats.dead_letters == 1
    # ... and counted by reason in ingestion's own health points, in the same store.
    (letters,) = victoria.export('{__name__="ingest_dead_letters_count"}', start=0, end=4_102_444_800)
    assert letters["metric"] == {"__name__": "ingest_dead_letters_count", "worker": "0", "reason": UNKNOWN_DEVICE}
    assert letters["values"][-1] == 1  # type: ignore[index]

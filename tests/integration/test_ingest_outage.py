"""Issue 8 (ii): VictoriaMetrics stopped for 30 s while devices keep publishing, then restarted.
Meanwhile messages are acknowledged from the on-disk spool; afterwards every point is in the
store exactly once, and the spool depth is visible in ingestion's own health points."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from ingest_support import Publisher, assert_exactly_once, fleet, readings, stored_counts, wait_until

from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.store.sinks import InfluxSink
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
FAR_FUTURE = 4_102_444_800  # export's end; near "now" VictoriaMetrics holds back its last 30 s
RATE = 200.0  # messages per second from the fleet during the outage


def test_a_30_s_store_outage_loses_nothing_and_writes_nothing_twice(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    # 50 devices, 10,000 readings, stamped about when they are published (4 a second per device at
    # 200 msg/s), so the lag measured for the spooled ones is the outage itself.
    sent = readings(fleet(25), 200, int(time.time() * 1000), step_ms=250)
    before, during, after = sent[:1000], sent[1000 : 1000 + int(OUTAGE_S * RATE)], sent[1000 + int(OUTAGE_S * RATE) :]
    sink = InfluxSink(victoria.url, None, "tendril", "tendril", timeout_ms=2000)

    async def scenario() -> Ingestor:
        ingestor = Ingestor(LOOPBACK, mosquitto.port, sink, state_dir=tmp_path / "state", health_interval_s=1.0,
                            worker="7", spool_fsync=False)  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop))
        publisher = Publisher(mosquitto.port, "fleet")
        try:
            await asyncio.wait_for(ingestor.ready.wait(), 30)
            await asyncio.to_thread(publisher.publish, [(s.topic, s.payload()) for s in before])
            await wait_until(lambda: ingestor.stats.written == len(before), lambda: f"stored: {ingestor.stats}")

            await asyncio.to_thread(victoria.stop)
            down_at = time.monotonic()
            await asyncio.to_thread(publisher.publish, [(s.topic, s.payload()) for s in during], RATE)
            # With the store gone, what was published is still made durable (spooled) and acknowledged.
            await wait_until(lambda: ingestor.stats.spooled >= len(during) and ingestor.pending == 0,
                             lambda: f"the outage's messages spooled; {ingestor.stats}")  # fmt: skip
            assert ingestor.spool is not None and ingestor.spool.depth_lines >= len(during)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            await asyncio.to_thread(victoria.start)

            await asyncio.to_thread(publisher.publish, [(s.topic, s.payload()) for s in after])
            await wait_until(lambda: ingestor.stats.written >= len(sent) and ingestor.spool.empty,  # type: ignore[union-attr]
                             lambda: f"all {len(sent)} stored and the spool empty; {ingestor.stats}")  # fmt: skip
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await sink.close()
            publisher.close()
        return ingestor

    ingestor = asyncio.run(scenario())
    stats = ingestor.stats
    assert stats.written == len(sent) and stats.duplicates == 0 and stats.lost == 0
    assert stats.replayed == stats.spooled >= len(during)
    assert stats.write_failures >= 1
    assert_exactly_once(stored_counts(victoria), sent)

    # The health points written during the outage were spooled too, and show the spool filling.
    depth = victoria.export('{__name__="ingest_health_spool_lines",worker="7"}', start=0, end=FAR_FUTURE)
    assert depth and max(float(v) for v in depth[0]["values"]) > 0  # type: ignore[union-attr]
    lag = victoria.export('{__name__="ingest_health_lag_max_ms",worker="7"}', start=0, end=FAR_FUTURE)
    assert lag and max(float(v) for v in lag[0]["values"]) >= 1000 * OUTAGE_S / 2  # type: ignore[union-attr]
    assert ingestor.lag_total.max_ms >= 1000 * OUTAGE_S / 2

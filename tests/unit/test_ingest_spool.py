"""The Ingestor around a store that fails: batches go to the spool, come back in order, once;
a restarted ingestor finishes the replay and remembers what it already stored."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.ingest.ingestor import Ingestor, StateDirInUse
from tendril_transactive.cloud.store.sinks import EmbeddedStore, StoreRejected

pytestmark = pytest.mark.unit

TOPIC = wire.device_topic("s1", "m1", wire.TELEMETRY)


class FlakyStore(EmbeddedStore):
    """The real in-process store, behind a switch that makes writes fail or hang."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.hang_s = 0.0
        self.refuse = False
        self.attempts = 0

    async def _gate(self) -> None:
        self.attempts += 1
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.down:
            raise ConnectionError("store is down")
        if self.refuse:
            raise StoreRejected("HTTP 400: field type conflict")

    async def write(self, lines: list[str]) -> None:
        await self._gate()
        await super().write(lines)

    async def write_body(self, body: bytes) -> None:
        await self._gate()
        await super().write_body(body)


def message(seq: int) -> bytes:
    return wire.encode(wire.TELEMETRY, wire.telemetry_meter(seq, 1717000000 + seq, 100.0 + seq, 5.0 * seq))


def ingestor(store: FlakyStore, state: Path, **kwargs: float) -> Ingestor:
    return Ingestor("127.0.0.1", 1, store, state_dir=state, batch_max=10, spool_fsync=False, **kwargs)  # type: ignore[arg-type]


async def replay_all(ing: Ingestor, timeout_s: float = 10.0) -> None:
    """Run the spool replayer until the spool is empty."""
    stop = asyncio.Event()
    task = asyncio.create_task(ing._committer.replay(stop))
    deadline = asyncio.get_running_loop().time() + timeout_s
    assert ing.spool is not None
    while not ing.spool.empty:
        assert asyncio.get_running_loop().time() < deadline, f"spool not drained: {ing.stats}"
        await asyncio.sleep(0.01)
    stop.set()
    await task


def seqs(store: EmbeddedStore) -> list[int]:
    return [int(p.fields["seq"]) for p in store.points("meter")]


def test_an_outage_goes_to_the_spool_and_comes_back_in_order_once(tmp_path: Path) -> None:
    store = FlakyStore()
    ing = ingestor(store, tmp_path)

    async def scenario() -> None:
        store.down = True
        for seq in range(25):
            ing.handle(TOPIC, message(seq))
        await ing.flush()
        assert (ing.stats.spooled, ing.stats.written, ing.pending) == (25, 0, 0)  # durable: could be acked
        assert ing.spool is not None and ing.spool.depth_lines == 25
        store.down = False
        for seq in range(25, 30):  # while the spool is not empty, new batches queue behind it
            ing.handle(TOPIC, message(seq))
        await ing.flush()
        assert ing.stats.spooled == 30 and store.count() == 0
        await replay_all(ing)

    asyncio.run(scenario())
    assert seqs(store) == list(range(30))
    assert (ing.stats.written, ing.stats.replayed, ing.stats.lost) == (30, 30, 0)
    assert ing.lag_total.total == 30  # lag measured for replayed lines too, from their device time


def test_a_slow_store_counts_as_down(tmp_path: Path) -> None:
    store = FlakyStore()
    store.hang_s = 1.0
    ing = ingestor(store, tmp_path, write_timeout_s=0.1)
    for seq in range(5):
        ing.handle(TOPIC, message(seq))
    asyncio.run(ing.flush())
    assert ing.stats.spooled == 5 and ing.stats.write_failures == 1
    assert ing.stats.last_error is not None and "TimeoutError" in ing.stats.last_error


def test_a_restarted_ingestor_replays_the_spool_and_remembers_what_it_stored(tmp_path: Path) -> None:
    first_store = FlakyStore()
    first = ingestor(first_store, tmp_path)
    for seq in range(10):  # stored
        first.handle(TOPIC, message(seq))
    asyncio.run(first.flush())
    first_store.down = True
    for seq in range(10, 20):  # spooled
        first.handle(TOPIC, message(seq))
    asyncio.run(first.flush())
    assert (first.stats.written, first.stats.spooled) == (10, 10)
    del first  # killed: nothing closed, nothing saved at exit (the kernel drops its lock)
    gc.collect()

    store = FlakyStore()
    second = ingestor(store, tmp_path)
    assert second.spool is not None and second.spool.depth_lines == 10
    asyncio.run(replay_all(second))
    for seq in range(20):  # the broker redelivers everything: all of it is known
        assert second.handle(TOPIC, message(seq)) is None
    second.handle(TOPIC, message(20))  # and new data still flows
    asyncio.run(second.flush())
    assert second.stats.duplicates == 20
    assert seqs(store) == list(range(10, 21))


def test_data_the_store_refuses_is_reported_lost_not_retried_forever(tmp_path: Path) -> None:
    store = FlakyStore()
    store.refuse = True
    ing = ingestor(store, tmp_path)
    for seq in range(3):
        ing.handle(TOPIC, message(seq))
    asyncio.run(ing.flush())
    assert (ing.stats.lost, ing.stats.spooled, store.attempts) == (3, 0, 1)
    assert ing.stats.last_error is not None and "field type conflict" in ing.stats.last_error


def test_without_a_spool_nothing_is_acknowledged_until_the_store_takes_it() -> None:
    store = FlakyStore()
    store.down = True
    ing = Ingestor("127.0.0.1", 1, store, batch_max=10)

    async def scenario() -> None:
        for seq in range(5):
            ing.handle(TOPIC, message(seq), packet_id=seq + 1)
        flushing = asyncio.create_task(ing.flush())
        await asyncio.sleep(0.5)
        assert not flushing.done() and ing.pending == 5  # held, retried with backoff
        store.down = False
        await asyncio.wait_for(flushing, 10)

    asyncio.run(scenario())
    assert seqs(store) == list(range(5)) and ing.stats.write_failures >= 2 and ing.pending == 0


def test_two_ingestors_cannot_share_a_state_folder(tmp_path: Path) -> None:
    first = ingestor(FlakyStore(), tmp_path)
    with pytest.raises(StateDirInUse, match="another ingestion process"):
        ingestor(FlakyStore(), tmp_path)
    assert first.spool is not None

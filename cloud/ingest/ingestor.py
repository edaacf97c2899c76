"""Ingestion: MQTT -> contract validation -> dedup -> line protocol -> store (or spool), then PUBACK.

The order of events for every QoS 1 message is what makes "loses nothing, writes once" hold:

1. classified (cloud/ingest/classify.py): a line, a duplicate, or a rejection with a reason
   (counted, logged with a throttle, republished to the dead-letter topic);
2. batched; a batch is closed at `batch_max` lines or after `flush_interval_s`;
3. committed (cloud/ingest/commit.py): acknowledged by the store, or appended to the
   on-disk spool when the store is down or slow;
4. only then its dedup keys are remembered for good and its messages acknowledged (PUBACK).

A crash anywhere before 4 leaves the messages unacknowledged: the broker delivers them again
(our session is persistent) and the dedup window, journalled right after each commit,
recognises the ones already durable. The narrow remaining window (durable, killed before the
journal write) writes an identical point again, which InfluxDB overwrites (same series and
timestamp).

Memory is bounded by the broker: MQTT 5's Receive Maximum (or the broker's in-flight limit for
3.1.1) caps unacknowledged messages, and past `max_pending` we stop reading the socket.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import tendril_wire as wire

from tendril_transactive.cloud.ingest.classify import (
    DEAD_LETTER_PAYLOAD_BYTES,
    INGESTED_KINDS,
    INTERNAL_ERROR,
    Accepted,
    Classifier,
    Rejected,
    classify,
)
from tendril_transactive.cloud.ingest.commit import Batch, Committer
from tendril_transactive.cloud.ingest.dedup import DEFAULT_WINDOW, DedupJournal, DedupWindow
from tendril_transactive.cloud.ingest.health import IngestStats, LagHistogram, ThrottledLog, health_lines
from tendril_transactive.cloud.ingest.known_devices import KnownDevices
from tendril_transactive.cloud.ingest.spool import DEFAULT_MAX_BYTES, Spool
from tendril_transactive.cloud.ingest.validation import Limits
from tendril_transactive.cloud.mqtt.codec import RawPublish
from tendril_transactive.cloud.mqtt.link import BrokerLink, wait_event
from tendril_transactive.cloud.mqtt.session import SessionOptions
from tendril_transactive.cloud.store.sinks import Sink
from tendril_transactive.edge.clock import Clock, WallClock

__all__ = [
    "DEAD_LETTER_PAYLOAD_BYTES", "INGESTED_KINDS", "INTERNAL_ERROR", "Accepted", "IngestStats", "Ingestor",
    "MessageHook", "Rejected", "classify",
]  # fmt: skip

log = logging.getLogger("tendril.ingest")

MessageHook = Callable[[str, str, str, dict[str, Any]], None]
DEDUP_DIR = "dedup"
SPOOL_DIR = "spool"


class StateDirInUse(RuntimeError):
    """Another ingestion process holds this state folder (its spool and dedup journal)."""


def _lock_state(state_dir: Path) -> IO[bytes]:
    """An exclusive lock for the process's lifetime: two writers would corrupt the spool. The
    kernel drops it when the process dies, however it dies."""
    handle = (state_dir / "lock").open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateDirInUse(f"{state_dir} is used by another ingestion process (each needs its own)") from None
    return handle


class Ingestor:
    """Subscribes to every device's telemetry, state, status and ack topics and stores them.

    The injected clock stamps what has no timestamp of its own (status, dead letters, health)
    and measures lag. Batching, retries and reconnects run on real time: they are about the
    network and the store, not the simulated world. The sink belongs to the caller.

    `devices` None accepts any well-formed device (the zero-install demo); `state_dir` None
    keeps no spool (a store outage then holds messages unacknowledged at the broker) and no
    saved dedup window.
    """

    def __init__(
        self,
        broker_host: str,
        broker_port: int,
        sink: Sink,
        *,
        clock: Clock | None = None,
        client_id: str = "tendril-ingest",
        username: str | None = None,
        password: str | None = None,
        batch_max: int = 1000,
        flush_interval_s: float = 0.1,
        on_message: MessageHook | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        keepalive_s: int = 30,
        devices: KnownDevices | None = None,
        state_dir: Path | None = None,
        share_group: str | None = None,
        worker: str = "0",
        health_interval_s: float | None = None,
        dedup_window: int = DEFAULT_WINDOW,
        protocol: int | None = None,
        receive_maximum: int = 10_000,
        max_pending: int = 50_000,
        write_timeout_s: float = 10.0,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_fsync: bool = True,
        stop_timeout_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
        retire: bool = False,
        limits: Limits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        if health_interval_s is not None and not health_interval_s > 0:
            raise ValueError(f"health_interval_s must be > 0, got {health_interval_s}")
        self.broker_host = broker_host
        self.broker_port = broker_port
        self._sink = sink
        self._clock: Clock = clock if clock is not None else WallClock()
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._on_message = on_message
        self._max_pending = max_pending
        self._stop_timeout_s = stop_timeout_s
        self._health_interval_s = health_interval_s
        self._monotonic = monotonic
        self._cpu = cpu
        self.worker = worker
        self.devices = devices
        self.share_group = share_group
        self.stats = IngestStats()
        options = SessionOptions(
            client_id,
            keepalive_s=keepalive_s,
            clean_start=False,  # the broker keeps our queue and unacknowledged messages while we are away
            username=username,
            password=password,
            receive_maximum=receive_maximum,
            protocol=protocol,
            tls=tls,  # mqtts:// (cloud.settings.broker_tls)
        )
        self._link = BrokerLink(
            broker_host, broker_port, options, self.filters, self._on_publishes, self.stats,
            reconnect_min_s=reconnect_min_s, reconnect_max_s=reconnect_max_s,
            label=f", shared group {share_group}" if share_group else "", retire=retire, logger=log,
        )  # fmt: skip
        self.ready = self._link.ready
        self.lag_total = LagHistogram()
        self._lag_interval = LagHistogram()
        self._classify = Classifier(devices, limits)
        self._dedup = DedupWindow(dedup_window)
        self._journal: DedupJournal | None = None
        self._lock: IO[bytes] | None = None
        self.spool: Spool | None = None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_state(state_dir)
            self._journal = DedupJournal(self._dedup, state_dir / DEDUP_DIR)
            self._journal.load()
            self.spool = Spool(state_dir / SPOOL_DIR, max_bytes=spool_max_bytes, fsync=spool_fsync)
        self._committer = Committer(
            sink, spool=self.spool, stats=self.stats, lag=[self.lag_total, self._lag_interval],
            clock=self._clock, cpu=cpu, write_timeout_s=write_timeout_s,
        )  # fmt: skip
        self._throttle = ThrottledLog(log, monotonic)
        self._open: Batch | None = None
        self._closed: deque[Batch] = deque()
        self._pending = 0  # messages received and not yet durable
        self._commit_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._give_up = asyncio.Event()
        self._rate_mark = (monotonic(), 0)  # (time, messages received) at the last health point

    @property
    def filters(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        return [prefix + wire.device_filter(kind) for kind in INGESTED_KINDS]

    @property
    def pending(self) -> int:
        """Messages received and not yet durable (in memory only)."""
        return self._pending

    # ------------------------------------------------------------ per message

    def handle(self, topic: str, payload: bytes, packet_id: int = 0, now: float | None = None) -> Rejected | None:
        """Classify one message into the open batch; returns its rejection, if any."""
        stats = self.stats
        stats.received += 1
        if stats.first_received_at is None:
            stats.first_received_at = self._clock.now()
            stats.cpu_at_first_received = self._cpu()
        if now is None:
            now = self._clock.now()
        try:
            result = self._classify(topic, payload, now)
        except Exception as exc:  # a bug in classification must not stop ingestion
            log.exception("failed to classify a message on %r", topic)
            result = Rejected(topic, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:200], payload)
        batch = self._batch()
        batch.messages += 1
        self._pending += 1
        if packet_id:
            batch.acks.append(packet_id)
        if isinstance(result, Rejected):
            self._reject(result, now)
            return result
        seq = result.seq
        if seq is not None:
            if self._dedup.check_and_hold(topic, seq, result.stamp_ns):
                stats.duplicates += 1
                return None
            batch.keys.append((topic, seq, result.stamp_ns))
        stats.by_kind[result.kind] += 1
        batch.lines.append(result.line)
        if result.lag_ts is not None:
            batch.stamps.append(result.lag_ts)
        if self._on_message is not None:
            try:
                self._on_message(result.site, result.device, result.kind, result.msg)
            except Exception:
                log.exception("on_message hook failed for %r", topic)
        if len(batch.lines) >= self._batch_max:
            self._close_batch()
        return None

    def _reject(self, rejected: Rejected, now: float) -> None:
        self.stats.rejected[rejected.reason] += 1
        self._throttle.warning(
            rejected.reason, "rejected message on %r: %s %s", rejected.topic, rejected.reason, rejected.detail
        )
        if self._link.publish(wire.dead_letter_topic(rejected.reason), rejected.dead_letter(now)):
            self.stats.dead_letters += 1
        else:
            self.stats.dead_letters_dropped += 1

    def _on_publishes(self, publishes: list[RawPublish]) -> None:
        now = self._clock.now()
        handle = self.handle
        for topic, payload, packet_id, _qos in publishes:
            handle(topic, payload, packet_id, now)
        if self._pending >= self._max_pending:
            self._link.pause()  # back-pressure: TCP, then the broker's own queue

    # ------------------------------------------------------------ batches

    def _batch(self) -> Batch:
        batch = self._open
        if batch is None or batch.conn != self._link.conn:
            if batch is not None:
                self._close_batch()  # packet ids belong to one connection
            batch = self._open = Batch(self._link.conn, self._monotonic())
            self._wakeup.set()  # the writer starts this batch's flush timer
        return batch

    def _close_batch(self) -> None:
        batch = self._open
        if batch is not None and (batch.messages or batch.lines):
            self._closed.append(batch)
            self._open = None
            self._wakeup.set()

    async def _commit_next(self) -> None:
        async with self._commit_lock:
            if not self._closed:
                return
            batch = self._closed.popleft()
            durable = await self._committer.commit(batch, self._give_up)
            self._pending -= batch.messages
            if not durable:
                self._dedup.release(batch.keys)  # not acknowledged: the broker sends them again
                return
            self._dedup.commit(batch.keys)
            if self._journal is not None:
                self._journal.record(batch.keys)
            self._link.ack(batch.conn, batch.acks)
            if self._pending < self._max_pending // 2:
                self._link.resume()

    async def flush(self, give_up_after_s: float | None = None) -> None:
        """Commit everything received so far, now. With `give_up_after_s`, stop retrying a store
        that stays down (and no spool) after that long: those messages stay unacknowledged."""
        self._close_batch()
        timer = None
        if give_up_after_s is not None:
            timer = asyncio.get_running_loop().call_later(give_up_after_s, self._give_up.set)
        try:
            while self._closed:
                await self._commit_next()
        finally:
            if timer is not None:
                timer.cancel()
                self._give_up.clear()

    async def _writer(self, closing: asyncio.Event) -> None:
        while True:
            if self._closed:
                await self._commit_next()
                continue
            if closing.is_set():
                return
            batch = self._open
            self._wakeup.clear()
            if batch is None or not (batch.messages or batch.lines):
                await self._wakeup.wait()  # idle: the next batch opened, or closing, wakes us
                continue
            wait = self._flush_interval_s - (self._monotonic() - batch.started)
            if wait <= 0:
                self._close_batch()
                continue
            await wait_event(self._wakeup, wait)

    # ------------------------------------------------------------ housekeeping

    def _add_health(self, rate: float) -> None:
        spool = self.spool
        lines = health_lines(
            self.worker, self.stats, self._lag_interval, rate,
            spool.depth_lines if spool else 0, spool.depth_bytes if spool else 0,
            int(self._clock.now() * 1e9),
        )  # fmt: skip
        self._lag_interval.reset()
        batch = self._batch()
        batch.lines.extend(lines)
        batch.health_lines += len(lines)

    async def compact_dedup(self, force: bool = False) -> None:
        journal = self._journal
        if journal is not None and (force or journal.wants_compaction):
            data, done = journal.start_compaction()
            await asyncio.to_thread(journal.finish_compaction, data, done)

    def _rate(self) -> float:
        """Messages per second since the last call."""
        now, received = self._monotonic(), self.stats.received
        then, before = self._rate_mark
        self._rate_mark = (now, received)
        return (received - before) / (now - then) if now > then else 0.0

    async def _housekeeping(self) -> None:
        last_health = last_registry = self._monotonic()
        self._rate_mark = (last_health, self.stats.received)
        while True:
            await asyncio.sleep(0.5)
            now = self._monotonic()
            await self.compact_dedup()
            if self._health_interval_s is not None and now - last_health >= self._health_interval_s:
                self._add_health(self._rate())
                last_health = now
            if now - last_registry >= 2.0:
                last_registry = now
                if self.devices is not None:
                    self.devices.reload_if_changed()
                self._throttle.flush()

    # ------------------------------------------------------------ MQTT session

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set, reconnecting as needed; commits everything before returning."""
        closing = asyncio.Event()
        replay_stop = asyncio.Event()
        self._give_up.clear()
        writer = asyncio.create_task(self._writer(closing))
        replayer = asyncio.create_task(self._committer.replay(replay_stop))
        housekeeping = asyncio.create_task(self._housekeeping())
        try:
            await self._link.run(stop)
        finally:
            self.ready.clear()
            self._link.pause()
            if self._health_interval_s is not None:
                self._add_health(self._rate())  # the last word: counters and lag up to the stop
            self._close_batch()
            closing.set()
            self._wakeup.set()
            deadline = asyncio.get_running_loop().call_later(self._stop_timeout_s, self._give_up.set)
            await writer
            deadline.cancel()
            self._link.close()
            replay_stop.set()
            housekeeping.cancel()
            await asyncio.gather(replayer, housekeeping, return_exceptions=True)
            if self._journal is not None:
                self._journal.close()
            if self.spool is not None:
                self.spool.close()
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    async def drain(self, quiet_s: float = 2.0, stall_s: float = 60.0) -> bool:
        """Retire this worker (constructed with `retire=True`): take what the broker still holds
        in its session, replay its spool, store all of it, erase the session, return True. Done
        means: unsubscribed, no message for `quiet_s`, nothing pending, the spool empty. False if
        nothing moved for `stall_s` before that (store or broker down): the state is kept.
        MQTT has no "queue empty" signal: the broker sends the next queued message as soon as an
        acknowledgement frees a slot, so `quiet_s` without one after our last PUBACK means none is left."""
        stop = asyncio.Event()
        drained = False

        async def watch() -> None:
            nonlocal drained
            progress: tuple[int, int, int] = (-1, -1, -1)
            moved = quiet_since = self._monotonic()
            while self._monotonic() - moved < stall_s:
                await asyncio.sleep(0.1)
                now = self._monotonic()
                stats = self.stats
                if stats.received != progress[0]:
                    quiet_since = now
                if (stats.received, stats.written, stats.replayed) != progress:
                    progress, moved = (stats.received, stats.written, stats.replayed), now
                spool_empty = self.spool is None or self.spool.empty
                if (self._link.unsubscribed.is_set() and now - quiet_since >= quiet_s and self._pending == 0
                        and not self._closed and spool_empty):  # fmt: skip
                    drained = True
                    break
            stop.set()

        watcher = asyncio.create_task(watch())
        try:
            await self.run(stop)
        finally:
            watcher.cancel()
        if drained:
            await self._link.forget_session()
        return drained

"""Making batches durable: into the store, or into the outage spool when the store is down or slow.

A batch is committed when its lines are in the store (the store acknowledged the write) or in
the spool (written and fdatasync'ed). Only then are its MQTT messages acknowledged and its
dedup keys remembered for good; the caller does both from `on_durable`.

- Store healthy and spool empty: the batch is POSTed; a failure or a write slower than
  `write_timeout_s` sends it to the spool instead.
- Spool not empty: new batches are appended behind what is waiting, so the spool replays in
  arrival order; the replayer drains it from the head with backoff while the store is down.
- No spool configured: the batch is retried until the store takes it. Nothing is acknowledged
  meanwhile, so the broker keeps the messages (and stops sending at its in-flight limit).
- Spool full: the store is retried and appending tried again; same back-pressure.
- The store refused the data itself (HTTP 400/422): retrying cannot help, so the lines are
  counted as lost, logged with the reason, and the batch is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tendril_transactive.cloud.ingest.dedup import Key
from tendril_transactive.cloud.ingest.health import IngestStats, LagHistogram
from tendril_transactive.cloud.ingest.spool import Record, Spool, SpoolFull
from tendril_transactive.cloud.store.line_protocol import LineProtocolError
from tendril_transactive.cloud.store.sinks import BodySink, Sink, StoreRejected
from tendril_transactive.edge.clock import Clock

log = logging.getLogger("tendril.ingest")


@dataclass(slots=True)
class Batch:
    conn: int  # the MQTT connection the packet ids in `acks` belong to
    started: float  # monotonic time of the first message
    lines: list[str] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)  # dedup keys of the lines
    stamps: list[float] = field(default_factory=list)  # device timestamps, for lag
    acks: list[int] = field(default_factory=list)  # QoS 1 packet ids to acknowledge once durable
    messages: int = 0  # MQTT messages in this batch (accepted, rejected or duplicate)
    health_lines: int = 0  # ingestion's own points among `lines` (not counted as written messages)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
    return event.is_set()


class Committer:
    def __init__(
        self,
        sink: Sink,
        *,
        spool: Spool | None,
        stats: IngestStats,
        lag: list[LagHistogram],
        clock: Clock,
        cpu: Callable[[], float],
        write_timeout_s: float = 10.0,
        retry_min_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.stats = stats
        self._lag = lag  # every histogram that wants the lag of stored lines
        self._clock = clock
        self._cpu = cpu
        self.write_timeout_s = write_timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.spool_waiting = asyncio.Event()
        if spool is not None and not spool.empty:
            self.spool_waiting.set()

    # ------------------------------------------------------------ store

    async def _write(self, body: bytes, lines: list[str] | None) -> None:
        if isinstance(self.sink, BodySink):
            write = self.sink.write_body(body)
        else:
            write = self.sink.write(lines if lines is not None else body.decode().split("\n"))
        await asyncio.wait_for(write, timeout=self.write_timeout_s)

    def _stored(self, count: int, health: int, stamps: list[float] | tuple[float, ...]) -> None:
        now = self._clock.now()
        self.stats.written += count - health
        self.stats.health_written += health
        self.stats.last_written_at = now
        self.stats.cpu_at_last_written = self._cpu()
        for hist in self._lag:
            hist.add_many(stamps, now)

    def _refused(self, count: int, exc: Exception) -> None:
        self.stats.lost += count
        self.stats.last_error = f"store refused {count} lines: {exc}"[:300]
        log.error("the store refused %d lines, which are dropped: %s", count, exc)

    def _failed(self, exc: BaseException) -> None:
        self.stats.write_failures += 1
        text = str(exc) or type(exc).__name__
        self.stats.last_error = f"store: {type(exc).__name__}: {text}"[:300]

    # ------------------------------------------------------------ commit

    async def commit(self, batch: Batch, give_up: asyncio.Event) -> bool:
        """Make the batch durable; False only if `give_up` was set first (nothing was acknowledged)."""
        if not batch.lines:
            return True
        # Lines are validated UTF-8-safe text; "replace" only guards the writer against a bug.
        body = "\n".join(batch.lines).encode("utf-8", "replace")
        delay = self.retry_min_s
        while True:
            if self.spool is None or self.spool.empty:
                try:
                    await self._write(body, batch.lines)
                except (StoreRejected, LineProtocolError) as exc:
                    self._refused(len(batch.lines), exc)
                    return True
                except Exception as exc:  # anything else may pass on a retry
                    self._failed(exc)
                    log.warning("store write of %d lines failed (%s)%s", len(batch.lines), self.stats.last_error,
                                "; spooling" if self.spool is not None else f"; retrying in {delay:.1f} s")
                else:
                    self._stored(len(batch.lines), batch.health_lines, batch.stamps)
                    return True
            if self.spool is not None:
                try:
                    record = Record(body, len(batch.lines), tuple(batch.stamps), batch.health_lines)
                    await asyncio.to_thread(self.spool.append, record)
                except (SpoolFull, OSError) as exc:  # full, or the disk itself failed
                    self.stats.last_error = f"spool: {exc}"[:300]
                    log.error("spool: %s; holding messages unacknowledged until the store takes them", exc)
                else:
                    self.stats.spooled += len(batch.lines) - batch.health_lines
                    self.spool_waiting.set()
                    return True
            if await _sleep_unless(give_up, delay):
                return False
            delay = min(delay * 2, self.retry_max_s)

    # ------------------------------------------------------------ replay

    async def replay(self, stop: asyncio.Event) -> None:
        """Drain the spool into the store, oldest first, until `stop`."""
        spool = self.spool
        if spool is None:
            return
        delay = self.retry_min_s
        while not stop.is_set():
            if spool.empty:
                self.spool_waiting.clear()
                stopped = asyncio.create_task(stop.wait())
                waiting = asyncio.create_task(self.spool_waiting.wait())
                await asyncio.wait({stopped, waiting}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                waiting.cancel()
                continue
            record = await asyncio.to_thread(spool.peek)
            if record is None:
                continue
            try:
                await self._write(record.body, None)
            except (StoreRejected, LineProtocolError) as exc:
                self._refused(record.lines, exc)
            except Exception as exc:
                self._failed(exc)
                log.info("spool replay waits for the store (%s); retry in %.1f s", self.stats.last_error, delay)
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            else:
                self.stats.replayed += record.lines - record.health_lines
                self._stored(record.lines, record.health_lines, record.stamps)
            await asyncio.to_thread(spool.pop)
            if delay > self.retry_min_s:
                log.info("store is back; replaying the spool (%d lines waiting)", spool.depth_lines)
            delay = self.retry_min_s

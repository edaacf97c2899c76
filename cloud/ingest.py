"""Ingestion: MQTT -> contract validation -> line protocol -> a Sink, in batches.

`classify` is the pure decision for one message (no I/O, time passed in); `Ingestor` is the
I/O around it: the MQTT session with reconnects, batching, dead letters and statistics.
A bad message is counted, logged and dead-lettered with its reason; it never delays or
drops a good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import tendril_wire as wire

from cloud.line_protocol import STORED_KINDS, contract_error, message_to_line
from cloud.store import Sink
from edge.clock import Clock, WallClock

log = logging.getLogger("tendril.ingest")

INGESTED_KINDS = STORED_KINDS
DEAD_LETTER_PAYLOAD_BYTES = 512
INTERNAL_ERROR = "internal_error"

MessageHook = Callable[[str, str, str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Accepted:
    site: str
    device: str
    kind: str
    msg: dict[str, Any]
    line: str


@dataclass(frozen=True, slots=True)
class Rejected:
    topic: str
    reason: str
    detail: str
    payload: bytes

    def dead_letter(self, received_at: float) -> bytes:
        """What goes to the dead-letter topic: enough to diagnose, bounded in size."""
        return json.dumps(
            {
                "reason": self.reason,
                "detail": self.detail,
                "topic": self.topic,
                "payload": self.payload[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
                "size": len(self.payload),
                "received": received_at,
            }
        ).encode()


def classify(topic: str, payload: bytes, received_at: float) -> Accepted | Rejected:
    """Decide what one MQTT message is: a storable point, or a rejection with a reason."""
    try:
        site, device, kind = wire.parse_topic(topic)
        if kind not in INGESTED_KINDS:
            raise contract_error("unexpected_kind", kind)
        msg = wire.decode(kind, payload)
        line = message_to_line(site, device, kind, msg, received_at)
    except wire.ContractError as exc:
        return Rejected(topic, exc.reason, exc.detail, payload)
    except RecursionError:
        # json.loads recurses per nesting level; 4 KiB of '[' is deeper than Python allows.
        return Rejected(topic, "bad_json", "nested too deeply", payload)
    return Accepted(site, device, kind, msg, line)


@dataclass
class IngestStats:
    received: int = 0
    written: int = 0  # lines the sink accepted
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    by_kind: Counter[str] = field(default_factory=Counter)  # accepted messages
    dead_letters: int = 0
    write_failures: int = 0
    lost: int = 0  # accepted lines dropped because the sink raised
    connects: int = 0
    last_error: str | None = None


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` of real time unless `event` fires first; True if it fired."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
    return event.is_set()


class Ingestor:
    """Subscribes to every device's telemetry, state, status and ack topics and stores them.

    The injected clock stamps what has no timestamp of its own (status, dead letters).
    Batching and reconnect delays run on real time: they are about the network and the
    store, not about the simulated world. The sink belongs to the caller, who closes it.
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
        batch_max: int = 500,
        flush_interval_s: float = 0.1,
        on_message: MessageHook | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        keepalive_s: int = 30,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.broker_host = broker_host
        self.broker_port = broker_port
        self._sink = sink
        self._clock: Clock = clock if clock is not None else WallClock()
        self._client_id = client_id
        self._username = username
        self._password = password
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._on_message = on_message
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._keepalive_s = keepalive_s
        self.ready = asyncio.Event()
        self.stats = IngestStats()
        self._pending: list[str] = []
        self._flush_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ per message

    def handle(self, topic: str, payload: bytes) -> Rejected | None:
        """Classify one message, queue its line or count its rejection; returns the rejection."""
        self.stats.received += 1
        received_at = self._clock.now()
        try:
            result = classify(topic, payload, received_at)
        except Exception as exc:  # a bug in classify must not stop ingestion
            log.exception("failed to classify a message on %r", topic)
            result = Rejected(topic, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:200], payload)
        if isinstance(result, Rejected):
            self.stats.rejected[result.reason] += 1
            log.warning("rejected message on %r: %s %s", topic, result.reason, result.detail)
            return result
        self.stats.by_kind[result.kind] += 1
        self._pending.append(result.line)
        if self._on_message is not None:
            try:
                self._on_message(result.site, result.device, result.kind, result.msg)
            except Exception:
                log.exception("on_message hook failed for %r", topic)
        return None

    # ------------------------------------------------------------ writing

    async def flush(self) -> None:
        """Hand everything queued to the sink now."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            # Shielded: stopping or reconnecting must not abandon a batch halfway to the store.
            task = asyncio.create_task(self._write(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            await asyncio.shield(task)

    async def _write(self, batch: list[str]) -> None:
        # The seam for retry/spooling: wrap the sink in one that retries or spools to disk.
        # Here a failed batch is counted as lost and ingestion carries on.
        try:
            await self._sink.write(batch)
        except Exception as exc:
            self.stats.write_failures += 1
            self.stats.lost += len(batch)
            self.stats.last_error = f"sink: {type(exc).__name__}: {exc}"[:300]
            log.error("sink write of %d lines failed: %s", len(batch), self.stats.last_error)
        else:
            self.stats.written += len(batch)

    async def _flush_every(self, closing: asyncio.Event) -> None:
        while not await _wait(closing, self._flush_interval_s):
            await self.flush()

    # ------------------------------------------------------------ MQTT session

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set, reconnecting as needed; flushes everything before returning."""
        closing = asyncio.Event()
        flusher = asyncio.create_task(self._flush_every(closing))
        try:
            await self._connect_loop(stop)
        finally:
            self.ready.clear()
            closing.set()
            await flusher
            await self.flush()
            if self._inflight:
                await asyncio.gather(*self._inflight)

    async def _connect_loop(self, stop: asyncio.Event) -> None:
        delay = self._reconnect_min_s
        while not stop.is_set():
            subscribed_before = self.stats.connects
            try:
                await self._session(stop)
            except (aiomqtt.MqttError, OSError) as exc:
                self.ready.clear()
                if self.stats.connects > subscribed_before:
                    delay = self._reconnect_min_s  # it worked a moment ago: retry quickly
                self.stats.last_error = f"mqtt: {exc}"[:300]
                log.warning(
                    "broker %s:%d: %s; reconnecting in %.1f s", self.broker_host, self.broker_port, exc, delay
                )
                if await _wait(stop, delay):
                    return
                delay = min(delay * 2, self._reconnect_max_s)

    async def _session(self, stop: asyncio.Event) -> None:
        client = aiomqtt.Client(
            self.broker_host,
            self.broker_port,
            identifier=self._client_id,
            username=self._username,
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V311,  # amqtt, the demo broker, refuses v5
            clean_session=False,  # Mosquitto queues QoS 1 messages while we reconnect
            keepalive=self._keepalive_s,
        )
        async with client:
            for kind in INGESTED_KINDS:
                await client.subscribe(wire.device_filter(kind), qos=1)
            self.stats.connects += 1
            self.ready.set()
            log.info("subscribed on %s:%d as %s", self.broker_host, self.broker_port, self._client_id)
            consume = asyncio.create_task(self._consume(client))
            stopped = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait({consume, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                consume.cancel()
                stopped.cancel()
                await asyncio.gather(consume, stopped, return_exceptions=True)
            if consume in done:
                consume.result()  # re-raises the broker loss for the reconnect loop

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            rejected = self.handle(topic, _as_bytes(message.payload))
            if rejected is not None:
                await self._dead_letter(client, rejected)
            if len(self._pending) >= self._batch_max:
                await self.flush()

    async def _dead_letter(self, client: aiomqtt.Client, rejected: Rejected) -> None:
        await client.publish(
            wire.dead_letter_topic(rejected.reason), rejected.dead_letter(self._clock.now()), qos=1
        )
        self.stats.dead_letters += 1

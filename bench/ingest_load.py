"""Load for bench/ingest.py: 1,000 simulated devices' telemetry, and a lean QoS 1 publisher.

The publisher writes pre-encoded PUBLISH packets in large chunks and counts PUBACKs (4 bytes
each), so it costs far less CPU per message than paho, and leaves the two shared cores to
the broker, the store and the ingestion under test (bench/ingest.py measures how it compares
with mosquitto_pub feeding the same broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import tendril_wire as wire

from tendril_transactive.cloud.mqtt import codec

SITES = 250
RELAYS = ("pump", "ev", "hvac")
PAYLOAD_BYTES = (150, 250)


@dataclass(frozen=True)
class Device:
    site: str
    device: str
    type: str
    topic: str


def devices() -> list[Device]:
    """250 homes, each a meter and three relays: 1,000 devices."""
    out = []
    for i in range(SITES):
        site = f"home-{i:03d}"
        out.append(Device(site, "meter", wire.DEVICE_METER, wire.device_topic(site, "meter", wire.TELEMETRY)))
        out.extend(
            Device(site, name, wire.DEVICE_RELAY, wire.device_topic(site, name, wire.TELEMETRY)) for name in RELAYS
        )
    return out


def payload(dev: Device, seq: int, ts: float, rng: random.Random) -> bytes:
    """A valid telemetry message, padded with JSON whitespace to 150-250 bytes.

    The v1 contract's telemetry is ~110 bytes compact; the issue benchmarks 150-250-byte
    messages (devices with richer payloads), so the broker and the parser move that many bytes.
    """
    if dev.type == wire.DEVICE_METER:
        msg = wire.telemetry_meter(seq, ts, round(rng.uniform(80.0, 9000.0), 1), round(5000.0 + seq * 0.125, 3))
    else:
        on = rng.randint(0, 1)
        msg = wire.telemetry_relay(seq, ts, on, round(rng.uniform(200.0, 4000.0), 1) if on else 0.0)
    text = json.dumps(msg)
    return (text + " " * max(0, rng.randint(*PAYLOAD_BYTES) - len(text))).encode()


def throughput_messages(fleet: list[Device], count: int, base_ts: float, seed: int) -> list[tuple[str, bytes]]:
    """`count` messages, devices in turn; device k's readings every 10 s from base_ts (+k ms)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        k = n % len(fleet)
        seq = n // len(fleet)
        out.append((fleet[k].topic, payload(fleet[k], seq, round(base_ts + seq * 10 + k / 1000, 3), rng)))
    return out


class Publisher:
    """One MQTT 3.1.1 connection publishing at QoS 1 with up to `window` unacknowledged."""

    def __init__(self, host: str, port: int, client_id: str, window: int = 2000) -> None:
        if not 1 <= window < 65535:
            raise ValueError("window must be 1..65534 (packet ids are reused after 65535)")
        self.host, self.port, self.client_id, self.window = host, port, client_id, window
        self.sent = 0
        self.acked = 0
        self._acked_event = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ack_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        sock = self._writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer.write(codec.connect(self.client_id, protocol=codec.V311, keepalive_s=120, clean_start=True))
        connack = await asyncio.wait_for(self._reader.readexactly(4), 10)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"publisher refused: CONNACK {connack.hex()}")
        self._ack_task = asyncio.create_task(self._count_acks())

    async def _count_acks(self) -> None:
        assert self._reader is not None
        leftover = 0
        while True:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("broker closed the publisher's connection")
            if data[(4 - leftover) % 4 :: 4].strip(b"\x40"):
                raise ConnectionError("the broker sent the publisher something other than PUBACKs")
            total = leftover + len(data)
            self.acked += total // 4
            leftover = total % 4
            self._acked_event.set()

    def packet(self, topic: str, body: bytes, index: int) -> bytes:
        return codec.publish(topic, body, qos=1, packet_id=index % 65535 + 1, protocol=codec.V311)

    async def _room(self) -> int:
        while self.sent - self.acked >= self.window:
            self._acked_event.clear()
            await self._wait_acks()
        return self.window - (self.sent - self.acked)

    async def _wait_acks(self) -> None:
        assert self._ack_task is not None
        waiter = asyncio.create_task(self._acked_event.wait())
        await asyncio.wait({waiter, self._ack_task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._ack_task.done():
            self._ack_task.result()
        if not self._acked_event.is_set():
            raise TimeoutError(f"no PUBACK for 30 s ({self.acked} of {self.sent} acknowledged)")

    async def publish_all(self, packets: list[bytes]) -> None:
        """Send pre-built packets as fast as the window allows; return when all are acknowledged."""
        assert self._writer is not None
        total = len(packets)
        start = self.sent
        while self.sent - start < total:
            room = await self._room()
            i = self.sent - start
            chunk = packets[i : i + min(room, 500)]
            self._writer.write(b"".join(chunk))
            self.sent += len(chunk)
            await self._writer.drain()
        await self.drain_acks()

    async def publish_paced(self, make: Callable[[int, float], tuple[str, bytes]], count: int, rate: float) -> None:
        """Publish `count` messages at `rate` per second; `make(i, now)` builds message i."""
        assert self._writer is not None
        begin = time.perf_counter()
        done = 0
        while done < count:
            due = min(count, int((time.perf_counter() - begin) * rate) + 1)
            if due > done:
                room = await self._room()
                upto = min(due, done + room)
                now = time.time()
                chunk: list[bytes] = []
                for i in range(done, upto):
                    topic, body = make(i, now)
                    chunk.append(self.packet(topic, body, self.sent + len(chunk)))
                self._writer.write(b"".join(chunk))
                self.sent += len(chunk)
                done = upto
                await self._writer.drain()
            await asyncio.sleep(0.002)
        await self.drain_acks()

    async def drain_acks(self) -> None:
        while self.acked < self.sent:
            self._acked_event.clear()
            await self._wait_acks()

    async def close(self) -> None:
        if self._ack_task is not None:
            self._ack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._ack_task
        if self._writer is not None:
            self._writer.write(codec.DISCONNECT_PACKET)
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()

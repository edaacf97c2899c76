"""Shared by the ingestion integration tests: a device-like publisher (paho), a TCP proxy that can
hold and cut a connection, and reading points back from VictoriaMetrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.hil.servers import LOOPBACK, VictoriaMetrics

TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Sent:
    site: str
    device: str
    type: str
    seq: int
    ts_ms: int

    @property
    def topic(self) -> str:
        return wire.device_topic(self.site, self.device, wire.TELEMETRY)

    def payload(self) -> bytes:
        ts = self.ts_ms / 1000
        if self.type == wire.DEVICE_METER:
            return wire.encode(wire.TELEMETRY, wire.telemetry_meter(self.seq, ts, 100.0 + self.seq, 2.5 * self.seq))
        return wire.encode(wire.TELEMETRY, wire.telemetry_relay(self.seq, ts, self.seq % 2, 850.0 * (self.seq % 2)))

    @property
    def key(self) -> tuple[str, str, str, int]:
        return f"{self.type}_seq", self.site, self.device, self.ts_ms


def fleet(sites: int) -> list[tuple[str, str, str]]:
    """A meter and a relay per site."""
    out = []
    for i in range(sites):
        out += [(f"site-{i:03d}", "meter", wire.DEVICE_METER), (f"site-{i:03d}", "pump", wire.DEVICE_RELAY)]
    return out


def registered_fleet(sites: int, registry_root: Path) -> list[tuple[str, str, str]]:
    """`fleet(sites)`, each device added to a fresh registry at `registry_root`."""
    devices = fleet(sites)
    registry = Registry(registry_root)
    for site, device, kind in devices:
        registry.add(site, device, kind)
    return devices


def stop_ingest(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM a `tendril ingest` process; it must commit and exit 0 within a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, log_path.read_text()[-3000:]


def readings(devices: list[tuple[str, str, str]], per_device: int, base_ms: int, step_ms: int = 10_000) -> list[Sent]:
    """Each device's readings `step_ms` apart (offset by its index in ms), devices interleaved."""
    return [
        Sent(site, device, kind, seq, base_ms + seq * step_ms + k)
        for seq in range(per_device)
        for k, (site, device, kind) in enumerate(devices)
    ]


class Publisher:
    """A paho 2.x client publishing at QoS 1; `published` counts PUBACKs from the broker."""

    def __init__(self, port: int, name: str) -> None:
        self._connected = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        self._client.max_inflight_messages_set(200)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = lambda *_args: self._connected.set()
        self._client.connect(LOOPBACK, port)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError(f"publisher {name} did not connect to 127.0.0.1:{port} within 10 s")
        self.published = 0

    def publish(self, messages: Iterable[tuple[str, bytes]], rate: float | None = None) -> None:
        """Publish in order (at `rate` msg/s if given); return once the broker acknowledged all."""
        infos = []
        start = time.monotonic()
        for n, (topic, payload) in enumerate(messages):
            if rate is not None:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            infos.append(self._client.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(timeout=TIMEOUT_S)
            assert info.is_published(), "the broker did not acknowledge a QoS 1 publish"
            self.published += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class TcpProxy:
    """127.0.0.1:port -> upstream. `hold()` stops forwarding client -> upstream bytes (so the
    broker gets no acknowledgements); `cut()` drops every connection and what was held."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._held = False
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        self._writers += [client_w, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, holdable: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if holdable and self._held:
                        continue  # swallowed, as a network that lost them
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(client_r, up_w, True), pipe(up_r, client_w, False))

    def hold(self) -> None:
        self._held = True

    def cut(self) -> None:
        self.cuts += 1
        self._held = False
        for writer in self._writers:
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def stored_counts(vm: VictoriaMetrics, metrics: str = "(meter|relay)_seq") -> Counter[tuple[str, str, str, int]]:
    """How many samples each (metric, site, device, ms) has: 1 everywhere means exactly once."""
    counts: Counter[tuple[str, str, str, int]] = Counter()
    # Explicit range: by default export ends 30 s before now (-search.latencyOffset), and readings
    # may be stamped a little ahead of the store's clock.
    for series in vm.export(f'{{__name__=~"{metrics}"}}', start=wire.MIN_TS, end=wire.MAX_TS):
        metric = series["metric"]
        stamps = series["timestamps"]
        assert isinstance(metric, dict) and isinstance(stamps, list)
        for ts in stamps:
            counts[(str(metric["__name__"]), str(metric["site"]), str(metric["device"]), int(ts))] += 1
    return counts


def assert_exactly_once(counts: Counter[tuple[str, str, str, int]], sent: Iterable[Sent]) -> None:
    expected = {s.key for s in sent}
    missing = expected - set(counts)
    extra = set(counts) - expected
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} points never arrived, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} points nobody sent, e.g. {sorted(extra)[:3]}"
    assert not twice, f"{len(twice)} points stored more than once, e.g. {sorted(twice.items())[:3]}"


async def wait_until(condition: Callable[[], bool], what: Callable[[], str], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what()}")
        await asyncio.sleep(0.05)


def wait_until_sync(condition: Callable[[], bool], what: Callable[[], str], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what()}")
        time.sleep(0.05)

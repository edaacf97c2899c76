"""The firmware (MicroPython unix port, Mbed TLS) against Mosquitto's TLS listener: telemetry
arrives, a signed command is acked, and a broker the firmware cannot verify (another CA, or a
certificate for another name) gets no connection at all (issue 13 finding 3)."""

from __future__ import annotations

import datetime
import json
import queue
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import tendril_wire as tw
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.devices import tls_certs
from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, ServerUnavailable, start_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

SITE = "site-tls"
WAIT_S = 20.0  # a bound for things to arrive, never a speed assertion


@pytest.fixture()
def broker() -> Iterator[Mosquitto]:
    workdir = Path(tempfile.mkdtemp(prefix="tendril-tls-fw-"))
    try:
        server = start_mosquitto(workdir, tls=True)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


class Watcher:
    """A subscriber on the broker's cleartext loopback listener (the test's own eyes)."""

    def __init__(self, port: int, device: str) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        subscribed: queue.Queue[bool] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{device}")
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(
            [(tw.device_filter(kind, SITE, device), 1) for kind in tw.DEVICE_KINDS])
        self.client.on_subscribe = lambda *_a: subscribed.put(True)
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        subscribed.get(timeout=WAIT_S)

    def wait_for(self, what: str, match: Any, proc: FirmwareProcess) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                topic, msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {what} within {WAIT_S} s\n{proc.log_text()[-2000:]}")
            if match(topic, msg):
                return msg

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=WAIT_S)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def relay(broker: Mosquitto, tmp_path: Path, device: str, key: bytes, ca: Path, hostname: str) -> FirmwareConfig:
    assert broker.tls_port is not None
    return FirmwareConfig(
        site=SITE, device=device, type="relay", broker_host=LOOPBACK, broker_port=broker.tls_port, key=key,
        telemetry_s=0.5, state_s=5.0, keepalive_s=10, relay_file=tmp_path / f"{device}.relay",
        relay_load_w=1500.0, tls=True, ca=str(ca), server_hostname=hostname,
    )


def wait_log(proc: FirmwareProcess, text: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while text not in proc.log_text():
        if time.monotonic() > deadline:
            pytest.fail(f"firmware did not log {text!r} within {WAIT_S} s\n{proc.log_text()[-2000:]}")
        time.sleep(0.05)
    return proc.log_text()


def test_relay_over_tls_sends_telemetry_and_acks_a_signed_command(
    broker: Mosquitto, tmp_path: Path, micropython: str
) -> None:
    assert broker.ca_file is not None
    key = secrets.token_bytes(32)
    # Dialled by address, verified by name: the certificate's "localhost" must match.
    config = relay(broker, tmp_path, "pump-1", key, broker.ca_file, "localhost")
    watcher = Watcher(broker.port, "pump-1")
    proc = FirmwareProcess(config, tmp_path / "pump-1")
    proc.start()
    try:
        watcher.wait_for("online status", lambda t, m: t.endswith("/status") and m["state"] == tw.ONLINE, proc)
        assert f"connected to {LOOPBACK}:{broker.tls_port}" in proc.log_text()
        tel = watcher.wait_for("telemetry", lambda t, _m: t.endswith("/telemetry"), proc)
        tw.validate(tw.TELEMETRY, tel)
        now = time.time()
        cmd = tw.make_command(key, SITE, "pump-1", "cmd-tls", 1, now, now + 600, 1)
        watcher.publish(tw.device_topic(SITE, "pump-1", tw.CMD), tw.encode(tw.CMD, cmd))
        ack = watcher.wait_for("ack", lambda t, m: t.endswith("/ack") and m["id"] == "cmd-tls", proc)
        assert (ack["ok"], ack["reason"], ack["relay"]) == (True, tw.ACCEPTED, 1)
    finally:
        proc.stop()
        watcher.close()


def test_firmware_refuses_a_broker_it_cannot_verify(broker: Mosquitto, tmp_path: Path, micropython: str) -> None:
    assert broker.ca_file is not None
    stranger = tls_certs.make_ca(datetime.datetime.now(datetime.UTC), "Someone else's CA")
    wrong_ca = tmp_path / "wrong-ca.crt"
    wrong_ca.write_bytes(stranger.cert)
    key = secrets.token_bytes(32)
    nodes = [
        FirmwareProcess(relay(broker, tmp_path, "wrong-ca", key, wrong_ca, "localhost"), tmp_path / "a"),
        FirmwareProcess(relay(broker, tmp_path, "wrong-name", key, broker.ca_file, "mqtt.example.org"),
                        tmp_path / "b"),
    ]
    for proc in nodes:
        proc.start()
    try:
        for proc, why in zip(nodes, ("not correctly signed", "does not match"), strict=True):
            # Each tried, was refused in the handshake by its own check, and backs off to retry.
            text = wait_log(proc, "reconnecting in")
            assert "cannot connect" in text and why in text, text[-2000:]
            assert "connected to" not in text, text[-2000:]
        # The broker never heard a CONNECT from them: nothing was retained for either device.
        seen: queue.Queue[str] = queue.Queue()
        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id="probe")
        probe.on_message = lambda _c, _u, m: seen.put(m.topic)
        probe.connect(LOOPBACK, broker.port)
        probe.subscribe([(tw.device_filter(kind, SITE), 1) for kind in tw.DEVICE_KINDS])
        probe.loop_start()
        marker = tw.device_topic(SITE, "probe", tw.STATUS)
        probe.publish(marker, b"{}", qos=1).wait_for_publish(timeout=WAIT_S)
        assert seen.get(timeout=WAIT_S) == marker  # a retained status of either device would have come first
        probe.loop_stop()
        probe.disconnect()
    finally:
        for proc in nodes:
            proc.stop()

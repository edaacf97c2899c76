"""The real firmware (MicroPython unix port) against a real Mosquitto, observed with paho-mqtt."""

from __future__ import annotations

import itertools
import json
import queue
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import tendril_wire as tw
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.edge.clock import SimClock
from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

SITE = "site-it"
WAIT_S = 20.0  # generous bound for anything to arrive; tests never assert speed
Message = tuple[str, bytes, bool]  # topic, payload, retained


class Collector:
    """A paho-mqtt subscriber whose waits are bounded and fail with what was seen."""

    _ids = itertools.count()

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        self.seen: list[Message] = []
        self._subscribed: queue.Queue[bool] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"it-collector-{next(self._ids)}")
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda _c, _u, _mid, _rc, _p: self._subscribed.put(True)
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port, keepalive=60)
        self.client.loop_start()
        try:
            self._subscribed.get(timeout=WAIT_S)
        except queue.Empty:
            self.close()
            pytest.fail(f"test subscriber got no SUBACK from Mosquitto on port {port} in {WAIT_S} s")

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def wait_for(
        self, what: str, match: Callable[[str, dict[str, Any], bool], bool], context: Callable[[], str] = str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                topic, payload, retained = self.messages.get(timeout=max(0.0, remaining))
            except queue.Empty:
                seen = "\n".join(f"{t} {p[:200]!r}" for t, p, _ in self.seen[-15:])
                pytest.fail(f"no {what} within {WAIT_S} s; last messages:\n{seen}\n{context()}")
            self.seen.append((topic, payload, retained))
            msg = json.loads(payload)
            if match(topic, msg, retained):
                return dict(msg)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"Mosquitto did not PUBACK our publish to {topic}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture()
def start_node(tmp_path: Path, micropython: str) -> Iterator[Callable[..., FirmwareProcess]]:
    started: list[FirmwareProcess] = []

    def start(config: FirmwareConfig, clock_env: str | None = None) -> FirmwareProcess:
        proc = FirmwareProcess(config, tmp_path / config.device, clock_env)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture()
def collectors() -> Iterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for collector in made:
        collector.close()


def topic(device: str, kind: str) -> str:
    return tw.device_topic(SITE, device, kind)


def all_topics(device: str) -> list[str]:
    return [tw.device_filter(kind, SITE, device) for kind in tw.DEVICE_KINDS]


def log_of(proc: FirmwareProcess) -> Callable[[], str]:
    return lambda: f"firmware log ({proc.log_path}):\n{proc.log_text()[-3000:]}"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def relay_config(mosquitto: Mosquitto, tmp_path: Path, key: bytes, device: str = "pump-1") -> FirmwareConfig:
    return FirmwareConfig(
        site=SITE, device=device, type="relay", broker_host=LOOPBACK, broker_port=mosquitto.port, key=key,
        telemetry_s=0.5, state_s=5.0, keepalive_s=10, relay_file=tmp_path / f"{device}.relay",
        relay_load_w=1500.0,
    )


def wait_online(collector: Collector, proc: FirmwareProcess) -> None:
    device = proc.config.device
    collector.wait_for(
        f"online status of {device}",
        lambda t, m, _r: t == topic(device, tw.STATUS) and m["state"] == tw.ONLINE,
        log_of(proc),
    )


def wait_ack(collector: Collector, proc: FirmwareProcess, cmd_id: str) -> dict[str, Any]:
    device = proc.config.device
    return collector.wait_for(
        f"ack of command {cmd_id}",
        lambda t, m, _r: t == topic(device, tw.ACK) and m["id"] == cmd_id,
        log_of(proc),
    )


def wait_log(proc: FirmwareProcess, text: str, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while proc.log_text().count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"firmware did not log {text!r} {count} times within {WAIT_S} s\n{log_of(proc)()}")
        time.sleep(0.02)


def wait_file(path: Path, expected: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and path.read_text() == expected:
            return
        time.sleep(0.02)
    got = path.read_text() if path.exists() else "<missing>"
    pytest.fail(f"{path} is {got!r}, expected {expected!r} within {WAIT_S} s")


def test_meter_telemetry_has_increasing_seq_and_energy_from_the_power_file(
    mosquitto: Mosquitto, tmp_path: Path, start_node: Callable[..., FirmwareProcess],
    collectors: list[Collector],
) -> None:
    power_file = tmp_path / "site.power"
    write_atomically(power_file, "1200\n")
    collector = Collector(mosquitto.port, [topic("meter-1", tw.TELEMETRY), topic("meter-1", tw.STATUS)])
    collectors.append(collector)
    clock = SimClock(sim_origin=1_717_200_000.0, speed=20.0)  # 2024-06-01, 20x faster than life
    config = FirmwareConfig(
        site=SITE, device="meter-1", type="meter", broker_host=LOOPBACK, broker_port=mosquitto.port,
        key=secrets.token_bytes(32), telemetry_s=10.0, state_s=600.0, keepalive_s=10, power_file=power_file,
    )
    started_at = clock.now()
    proc = start_node(config, clock.env_value())
    wait_online(collector, proc)

    def next_reading(power: float | None = None) -> dict[str, Any]:
        msg = collector.wait_for(
            f"meter telemetry{'' if power is None else f' with power {power} W'}",
            lambda t, m, _r: t == topic("meter-1", tw.TELEMETRY) and (power is None or m["power_w"] == power),
            log_of(proc),
        )
        tw.validate(tw.TELEMETRY, msg)
        return msg

    readings = [next_reading() for _ in range(4)]
    write_atomically(power_file, "500")
    switched = next_reading(500.0)
    readings += [switched, next_reading()]
    # A garbled or missing power file keeps the last good value (and the firmware says so).
    write_atomically(power_file, "12OO W")
    wait_log(proc, "unreadable", 1)
    garbled = next_reading()
    power_file.unlink()
    wait_log(proc, "unreadable", 2)
    missing = next_reading()
    assert garbled["power_w"] == missing["power_w"] == 500.0

    assert [r["seq"] for r in readings[:4]] == [0, 1, 2, 3]
    assert all(a["seq"] < b["seq"] for a, b in itertools.pairwise(readings))
    assert all(a["ts"] < b["ts"] for a, b in itertools.pairwise(readings))
    assert started_at <= readings[0]["ts"], "telemetry not on the sim clock"
    assert readings[-1]["ts"] <= clock.now(), "telemetry not on the sim clock"
    assert all(r["power_w"] == 1200.0 for r in readings[:4])
    # Power is held between samples: each interval's energy is the earlier reading's power * time.
    for a, b in [*itertools.pairwise(readings[:4]), (readings[4], readings[5])]:
        expected = a["power_w"] * (b["ts"] - a["ts"]) / 3600
        assert b["energy_wh"] - a["energy_wh"] == pytest.approx(expected, rel=1e-9)
    # The first interval starts at boot, which is after `started_at`.
    assert 0 < readings[0]["energy_wh"] <= 1200.0 * (readings[0]["ts"] - started_at) / 3600


def test_signed_command_switches_the_relay_and_a_bad_signature_is_refused(
    mosquitto: Mosquitto, tmp_path: Path, start_node: Callable[..., FirmwareProcess],
    collectors: list[Collector],
) -> None:
    key = secrets.token_bytes(32)
    config = relay_config(mosquitto, tmp_path, key)
    collector = Collector(mosquitto.port, all_topics("pump-1"))
    collectors.append(collector)
    proc = start_node(config)
    wait_online(collector, proc)
    assert config.relay_file is not None
    wait_file(config.relay_file, "0")  # safe default written at boot

    now = time.time()
    cmd = tw.make_command(key, SITE, "pump-1", "cmd-on", 1, now, now + 600, 1)
    collector.publish(topic("pump-1", tw.CMD), tw.encode(tw.CMD, cmd))
    ack = wait_ack(collector, proc, "cmd-on")
    assert (ack["ok"], ack["reason"], ack["relay"], ack["seq"]) == (True, tw.ACCEPTED, 1, 1)
    wait_file(config.relay_file, "1")
    on = collector.wait_for(
        "relay telemetry showing relay=1",
        lambda t, m, _r: t == topic("pump-1", tw.TELEMETRY) and m["relay"] == 1,
        log_of(proc),
    )
    assert on["load_w"] == 1500.0

    forged = tw.make_command(secrets.token_bytes(32), SITE, "pump-1", "cmd-off", 2, now, now + 600, 0)
    collector.publish(topic("pump-1", tw.CMD), tw.encode(tw.CMD, forged))
    refused = wait_ack(collector, proc, "cmd-off")
    assert (refused["ok"], refused["reason"], refused["relay"]) == (False, tw.REFUSE_BAD_SIG, 1)
    assert config.relay_file.read_text() == "1"
    later = collector.wait_for(
        "relay telemetry after the refusal",
        lambda t, m, _r: t == topic("pump-1", tw.TELEMETRY),
        log_of(proc),
    )
    assert later["relay"] == 1


def test_commands_round_trip_over_the_nodelay_connection(
    mosquitto: Mosquitto, tmp_path: Path, start_node: Callable[..., FirmwareProcess],
    collectors: list[Collector],
) -> None:
    key = secrets.token_bytes(32)
    config = relay_config(mosquitto, tmp_path, key, device="ev-1")
    collector = Collector(mosquitto.port, [topic("ev-1", tw.ACK), topic("ev-1", tw.STATUS)])
    collectors.append(collector)
    proc = start_node(config)
    wait_online(collector, proc)
    assert "nodelay=True" in proc.log_text(), log_of(proc)()

    assert config.relay_file is not None
    for seq in range(1, 7):
        state = seq % 2
        now = time.time()
        cmd = tw.make_command(key, SITE, "ev-1", f"c{seq}", seq, now, now + 600, state)
        collector.publish(topic("ev-1", tw.CMD), tw.encode(tw.CMD, cmd))
        ack = wait_ack(collector, proc, f"c{seq}")
        assert (ack["ok"], ack["relay"]) == (True, state), ack
        wait_file(config.relay_file, str(state))


def test_sigkill_makes_the_broker_publish_the_retained_offline_status(
    mosquitto: Mosquitto, tmp_path: Path, start_node: Callable[..., FirmwareProcess],
    collectors: list[Collector],
) -> None:
    config = relay_config(mosquitto, tmp_path, secrets.token_bytes(32), device="hvac-1")
    watcher = Collector(mosquitto.port, [topic("hvac-1", tw.STATUS)])
    collectors.append(watcher)
    proc = start_node(config)
    wait_online(watcher, proc)

    assert proc.kill() == -signal.SIGKILL
    watcher.wait_for(
        "offline last will", lambda _t, m, _r: m["state"] == tw.OFFLINE, log_of(proc)
    )
    # A subscriber arriving later still learns the device is offline: the will is retained.
    late = Collector(mosquitto.port, [topic("hvac-1", tw.STATUS)])
    collectors.append(late)
    status = late.wait_for("retained status", lambda _t, _m, retained: retained, log_of(proc))
    assert status == json.loads(tw.status_payload(False))

    proc.restart()  # and a restarted node is back online, again retained
    wait_online(late, proc)
    assert proc.alive


def test_frozen_broker_is_detected_and_queued_telemetry_is_replayed_in_order(
    mosquitto: Mosquitto, tmp_path: Path, start_node: Callable[..., FirmwareProcess],
    collectors: list[Collector],
) -> None:
    config = FirmwareConfig(
        site=SITE, device="pool-1", type="relay", broker_host=LOOPBACK, broker_port=mosquitto.port,
        key=secrets.token_bytes(32), telemetry_s=0.25, state_s=0.5, keepalive_s=2, ack_timeout_s=1.0,
        reconnect_max_s=1.0, relay_file=tmp_path / "pool.relay",
    )
    collector = Collector(mosquitto.port, all_topics("pool-1"))
    collectors.append(collector)
    proc = start_node(config)
    wait_online(collector, proc)
    before = collector.wait_for(
        "telemetry before the outage", lambda t, _m, _r: t == topic("pool-1", tw.TELEMETRY), log_of(proc)
    )

    assert mosquitto.proc is not None
    mosquitto.proc.send_signal(signal.SIGSTOP)  # TCP stays up, the broker goes silent
    try:
        wait_log(proc, "session ended", 1)
        time.sleep(1.0)  # let a few readings pile up in the outbox while offline
    finally:
        mosquitto.proc.send_signal(signal.SIGCONT)

    state = collector.wait_for(
        "state record after reconnecting",
        lambda t, m, _r: t == topic("pool-1", tw.STATE) and m["reconnects"] >= 1,
        log_of(proc),
    )
    last = collector.wait_for(
        "telemetry produced after the reconnect",
        lambda t, m, _r: t == topic("pool-1", tw.TELEMETRY) and m["ts"] > state["ts"],
        log_of(proc),
    )

    def telemetry_seqs() -> list[int]:
        return [json.loads(p)["seq"] for t, p, _ in collector.seen if t == topic("pool-1", tw.TELEMETRY)]

    collector.wait_for(  # the backlog is replayed at a bounded rate beside live readings
        "the whole backlog",
        lambda _t, _m, _r: set(range(before["seq"], last["seq"] + 1)) <= set(telemetry_seqs()),
        log_of(proc),
    )
    seqs = telemetry_seqs()
    first_seen: list[int] = []
    for seq in seqs:  # at least once: a reading in flight when the broker froze may arrive twice
        if seq not in first_seen:
            first_seen.append(seq)
    assert sorted(first_seen) == list(range(before["seq"], max(first_seen) + 1)), "telemetry lost"
    # Live readings go out at once and the backlog is replayed beside them oldest first, so what
    # arrives is a merge of two ascending runs: no three readings may arrive in descending order.
    # (A second session drop right after the reconnect parks later readings behind the backlog;
    # they are still replayed in order, which this allows, while any reordering within a run fails.)
    longest_descent = [1] * len(first_seen)
    for j, later in enumerate(first_seen):
        longest_descent[j] = 1 + max((longest_descent[i] for i in range(j) if first_seen[i] > later), default=0)
    assert max(longest_descent) <= 2, f"telemetry reordered: {first_seen}"
    assert state["dropped"] == 0

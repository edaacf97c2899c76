"""`tendril ingest` as a user runs it: a subprocess against real Mosquitto, stopped by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud import command
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="cli-test-publisher", protocol=paho.MQTTv311)
    client.on_connect = lambda *_args: connected.set()
    client.connect(LOOPBACK, port)
    client.loop_start()
    try:
        assert connected.wait(10), f"publisher could not connect to 127.0.0.1:{port}"
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published(), "QoS 1 publish not acknowledged within 10 s"
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(condition: Callable[[], bool], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what()}")
        time.sleep(0.05)


def messages() -> list[tuple[str, bytes]]:
    good = [
        (
            wire.device_topic("s1", "m1", wire.TELEMETRY),
            wire.encode(wire.TELEMETRY, wire.telemetry_meter(i, 1717000000 + i, 100.5 + i, 1000.0 + i)),
        )
        for i in range(10)
    ]
    return [*good[:5], (wire.device_topic("s1", "m1", wire.TELEMETRY), b"not json"), *good[5:]]


def run_cli(args: list[str], log_path: Path, env: dict[str, str] | None = None,
            history: bool = True) -> subprocess.Popen[bytes]:
    """`history`: the fixed 2024 readings are history to this ingest's wall clock (--max-age 0)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command.argv("ingest", "--stats-interval", "0.2", *(["--max-age", "0"] if history else []), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def stop_cli(proc: subprocess.Popen[bytes], sig: int, log_path: Path) -> str:
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"ingest did not stop on {sig!r}:\n{log_path.read_text()}") from None
    log = log_path.read_text()
    assert rc == 0, log
    return log


def test_cli_ingests_into_the_store_file_and_stops_on_sigint(mosquitto: Mosquitto, tmp_path: Path) -> None:
    store_file = tmp_path / "out" / "telemetry.lp"
    log_path = tmp_path / "ingest.log"
    registry = tmp_path / "registry"
    Registry(registry).add("s1", "m1", "meter")
    stranger = (wire.device_topic("s1", "m2", wire.TELEMETRY), messages()[0][1])
    proc = run_cli(
        ["--broker", mosquitto.url, "--store-file", str(store_file), "--registry", str(registry),
         "--state-dir", str(tmp_path / "state"), "--health-interval", "0"],
        log_path,
    )  # fmt: skip
    try:
        wait_for(
            lambda: "subscribed on" in log_path.read_text(),
            lambda: f"subscription; log:\n{log_path.read_text()}",
        )
        publish(mosquitto.port, [*messages(), stranger])
        wait_for(
            lambda: store_file.exists() and len(store_file.read_text().splitlines()) == 10,
            lambda: f"10 lines in {store_file}; log:\n{log_path.read_text()}",
        )
        wait_for(
            lambda: "msg/s" in log_path.read_text(), lambda: f"a progress line; log:\n{log_path.read_text()}"
        )
    finally:
        log = stop_cli(proc, signal.SIGINT, log_path)
    assert "stopped: 12 received, 10 written, 2 rejected {'bad_json': 1, 'unknown_device': 1}, 0 lost" in log
    assert f"rejected message on {wire.device_topic('s1', 'm1', wire.TELEMETRY)!r}: bad_json" in log
    assert f"rejected message on {stranger[0]!r}: unknown_device s1/m2" in log
    lines = store_file.read_text().splitlines()
    assert lines[0] == "meter,device=m1,site=s1 seq=0i,power_w=100.5,energy_wh=1000.0 1717000000000000000"


def test_cli_writes_to_the_influx_url_from_the_environment_and_stops_on_sigterm(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    log_path = tmp_path / "ingest.log"
    env = {"TENDRIL_INFLUX_URL": victoria.url, "TENDRIL_INFLUX_TOKEN": "not-checked-by-vm"}
    proc = run_cli(
        ["--broker", mosquitto.url, "--store-file", str(tmp_path / "unused.lp"), "--accept-any-device",
         "--state-dir", str(tmp_path / "state"), "--health-interval", "0"],
        log_path,
        env,
    )  # fmt: skip
    try:
        wait_for(
            lambda: "subscribed on" in log_path.read_text(),
            lambda: f"subscription; log:\n{log_path.read_text()}",
        )
        publish(mosquitto.port, messages())
        wait_for(
            lambda: "10 written" in log_path.read_text(), lambda: f"10 written; log:\n{log_path.read_text()}"
        )
    finally:
        log = stop_cli(proc, signal.SIGTERM, log_path)
    assert "not-checked-by-vm" not in log
    assert not (tmp_path / "unused.lp").exists()
    (series,) = victoria.export('{__name__="meter_power_w"}')
    assert series["timestamps"] == [1717000000000 + 1000 * i for i in range(10)]
    assert series["values"] == [100.5 + i for i in range(10)]
    assert (
        json.dumps(series["metric"], sort_keys=True)
        == '{"__name__": "meter_power_w", "device": "m1", "site": "s1"}'
    )


@pytest.mark.parametrize("simulated", [False, True], ids=["wall-clock", "simulated-2024-clock"])
def test_cli_refuses_a_reading_older_than_a_device_can_hold_by_default(
    mosquitto: Mosquitto, tmp_path: Path, simulated: bool
) -> None:
    """Issue 13: readings are accepted only inside [now - what the firmware holds offline plus
    the broker's queue, now + skew] unless the operator says otherwise (--max-age 0). On a
    simulated clock ($TENDRIL_CLOCK, as the demo and the full-loop test run the fleet) "now" is
    the simulated time, as it is for the market and the agent."""
    store_file = tmp_path / "telemetry.lp"
    log_path = tmp_path / "ingest.log"
    registry = tmp_path / "registry"
    Registry(registry).add("s1", "m1", "meter")
    now = 1_710_500_000.0 if simulated else time.time()
    env = {"TENDRIL_CLOCK": f"{time.time()!r},{now!r},1"} if simulated else None
    topic = wire.device_topic("s1", "m1", wire.TELEMETRY)
    readings = [(topic, wire.encode(wire.TELEMETRY, wire.telemetry_meter(i, ts, 100.0, 1000.0 + i)))
                for i, ts in enumerate((now - 8 * 3600 - 60, now - 7 * 3600, now))]  # too old, backlog, live
    proc = run_cli(["--broker", mosquitto.url, "--store-file", str(store_file), "--registry", str(registry),
                    "--state-dir", str(tmp_path / "state"), "--health-interval", "0"], log_path, env, history=False)
    try:
        wait_for(lambda: "subscribed on" in log_path.read_text(), lambda: log_path.read_text())
        publish(mosquitto.port, readings)
        wait_for(lambda: store_file.exists() and len(store_file.read_text().splitlines()) == 2,
                 lambda: f"2 lines in {store_file}; log:\n{log_path.read_text()}")
    finally:
        log = stop_cli(proc, signal.SIGTERM, log_path)
    assert "3 received, 2 written, 1 rejected {'ts_too_old': 1}, 0 lost" in log, log
    assert [line.split()[1].split(",")[0] for line in store_file.read_text().splitlines()] == ["seq=1i", "seq=2i"]

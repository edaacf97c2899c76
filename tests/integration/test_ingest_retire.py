"""Going from `tendril ingest --workers 2` to a single process loses nothing: the run that
starts retires the old workers first. Mosquitto keeps routing a shared subscription's messages
into an offline member's persistent session (half of them, with two members), and an old
worker's folder may hold a spool of acknowledged messages the store never got; both must end
up in the store exactly once, and the old sessions must be gone afterwards."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from ingest_support import (
    Publisher,
    assert_exactly_once,
    readings,
    registered_fleet,
    stop_ingest,
    stored_counts,
    wait_until_sync,
)
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud import command
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MS = 1_717_400_000_000


def start(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(command.argv("ingest", "--max-age", "0", *argv), stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip


def spooled(tmp: Path) -> int:
    total = 0
    for i in range(2):
        with contextlib.suppress(OSError, ValueError, KeyError):
            total += json.loads((tmp / f"stats-{i}.json").read_text())["spooled"]
    return total


def session_present(port: int, client_id: str) -> bool:
    got: list[bool] = []
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                         clean_session=False)  # fmt: skip

    def on_connect(_c: paho.Client, _u: object, flags: paho.ConnectFlags, _rc: object, _p: object) -> None:
        got.append(flags.session_present)
        done.set()

    client.on_connect = on_connect
    client.connect(LOOPBACK, port)
    client.loop_start()
    try:
        assert done.wait(10), f"no CONNACK for {client_id}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_two_workers_then_one_process_retires_both_sessions_and_spools(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    devices = registered_fleet(10, tmp_path / "registry")
    sent = readings(devices, 60, BASE_MS)  # 20 devices, 1,200 readings
    live, during_outage, while_away, after = sent[:300], sent[300:600], sent[600:900], sent[900:]
    state = tmp_path / "state"
    log_path = tmp_path / "ingest.log"
    common = ["--broker", mosquitto.url, "--influx-url", victoria.url, "--registry", str(tmp_path / "registry"),
              "--state-dir", str(state), "--stats-interval", "0.1"]  # fmt: skip
    publisher = Publisher(mosquitto.port, "fleet")
    try:
        two = start([*common, "--workers", "2", "--stats-file", str(tmp_path / "stats-{worker}.json")], log_path)
        try:
            wait_until_sync(lambda: log_path.read_text().count("subscribed on") == 2, lambda: log_path.read_text())
            publisher.publish([(s.topic, s.payload()) for s in live])
            wait_until_sync(lambda: sum(stored_counts(victoria).values()) >= len(live), lambda: "live stored")
            victoria.stop()  # the workers acknowledge into their spools
            publisher.publish([(s.topic, s.payload()) for s in during_outage])
            wait_until_sync(lambda: spooled(tmp_path) >= len(during_outage), lambda: f"spooled {spooled(tmp_path)}")
        finally:
            stop_ingest(two, log_path)
        victoria.start()
        assert sorted(p.name for p in state.iterdir()) == ["w0", "w1"]
        publisher.publish([(s.topic, s.payload()) for s in while_away])  # into the two offline sessions

        one = start(common, log_path)  # --workers 1: a plain subscription as "tendril-ingest"
        try:
            wait_until_sync(lambda: log_path.read_text().count("subscribed on") == 3, lambda: log_path.read_text())
            publisher.publish([(s.topic, s.payload()) for s in after])
            wait_until_sync(lambda: sum(stored_counts(victoria).values()) >= len(sent),
                            lambda: f"{sum(stored_counts(victoria).values())} of {len(sent)} stored")  # fmt: skip
        finally:
            stop_ingest(one, log_path)
    finally:
        publisher.close()
    assert_exactly_once(stored_counts(victoria), sent)
    text = log_path.read_text()
    taken = [int(n) for n in re.findall(r"retired \S+: (\d+) messages taken", text)]
    assert len(taken) == 2, text[-3000:]
    assert sum(taken) == len(while_away), f"the offline sessions held {taken}, published {len(while_away)} meanwhile"
    assert sorted(p.name for p in state.iterdir()) == ["w0"], "w1 drained and removed; w0 reused by the new run"
    for client_id in ("tendril-ingest-0", "tendril-ingest-1"):
        assert not session_present(mosquitto.port, client_id), f"{client_id}'s session was not erased"

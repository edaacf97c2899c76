"""Issue 8 (iii): `tendril ingest` killed with SIGKILL mid-stream and started again: every message
the broker acknowledged to the devices ends up in the store. Once with the store up (the
broker's persistent session holds what was not acknowledged), once with the store hanging
(frozen: nothing received may be acknowledged yet), once with the store down (the restart
resumes from the spool).

The store here overwrites a repeated series + timestamp, as InfluxDB does: the one write a kill
can land in the middle of (stored, not yet journalled) is repeated after the restart, and that
overwrite is the documented second line of defence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import Publisher, Sent, assert_exactly_once, fleet, readings, stored_counts, wait_until_sync

from tendril_transactive.cloud import command
from tendril_transactive.hil import servers
from tendril_transactive.hil.servers import Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MS = 1_717_200_000_000


@pytest.fixture()
def overwriting_victoria() -> Iterator[VictoriaMetrics]:
    workdir = Path(tempfile.mkdtemp(prefix="tendril-vm-"))
    try:
        server = servers.start_victoria_metrics(workdir, dedup_ms=1)
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


class Ingest:
    """`tendril ingest` as a process, watched through its --stats-file."""

    def __init__(self, broker: Mosquitto, vm: VictoriaMetrics, tmp: Path) -> None:
        self.argv = command.argv("ingest", "--max-age", "0", "--broker", broker.url, "--influx-url", vm.url,
            "--accept-any-device", "--state-dir", str(tmp / "state"), "--stats-file", str(tmp / "stats.json"),
            "--stats-interval", "0.1", "--health-interval", "0", "--batch-max", "100", "--flush-interval", "0.05",
        )  # fmt: skip
        self.stats_path = tmp / "stats.json"
        self.log_path = tmp / "ingest.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.stats_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        wait_until_sync(lambda: self.log().count("subscribed on") >= self.starts, lambda: f"subscribed:\n{self.log()}")

    def stats(self) -> dict[str, int]:
        try:
            data: dict[str, int] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def publish_in_background(port: int, sent: list[Sent], rate: float) -> tuple[threading.Thread, Publisher]:
    publisher = Publisher(port, f"fleet-{os.getpid()}-{len(sent)}")
    thread = threading.Thread(target=publisher.publish, args=([(s.topic, s.payload()) for s in sent], rate))
    thread.start()
    return thread, publisher


def test_sigkill_mid_stream_loses_no_acknowledged_message(
    mosquitto: Mosquitto, overwriting_victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    vm = overwriting_victoria
    sent = readings(fleet(20), 200, BASE_MS)  # 40 devices, 8,000 readings
    first, frozen, second = sent[:3000], sent[3000:5000], sent[5000:]
    ingest = Ingest(mosquitto, vm, tmp_path)
    ingest.start()
    try:
        # 1. Killed while writing to a healthy store; the devices keep publishing meanwhile.
        thread, publisher = publish_in_background(mosquitto.port, first, rate=1000.0)
        wait_until_sync(lambda: ingest.stats().get("written", 0) >= 1000, lambda: f"1,000 written: {ingest.stats()}")
        ingest.kill()
        thread.join(timeout=60)
        assert publisher.published == len(first), "every message was acknowledged by the broker"
        publisher.close()
        ingest.start()
        wait_until_sync(lambda: len(stored_counts(vm)) >= len(first), lambda: f"{len(first)} points in the store")

        # 2. Killed while a write hangs: whatever arrived meanwhile is in memory only, so it must
        #    not have been acknowledged (the broker sends it again to the restarted process).
        assert vm.proc is not None
        vm.proc.send_signal(signal.SIGSTOP)
        try:
            received = ingest.stats().get("received", 0)
            thread, publisher = publish_in_background(mosquitto.port, frozen, rate=4000.0)
            thread.join(timeout=60)
            wait_until_sync(lambda: ingest.stats().get("received", 0) >= received + len(frozen),
                            lambda: f"the frozen part received: {ingest.stats()}")  # fmt: skip
            ingest.kill()
            publisher.close()
        finally:
            vm.proc.send_signal(signal.SIGCONT)
        ingest.start()
        wait_until_sync(lambda: len(stored_counts(vm)) >= len(first) + len(frozen),
                        lambda: f"{len(first) + len(frozen)} points in the store")  # fmt: skip

        # 3. Killed while the store is down and the spool holds the data.
        vm.stop()
        thread, publisher = publish_in_background(mosquitto.port, second, rate=2000.0)
        thread.join(timeout=60)
        wait_until_sync(lambda: ingest.stats().get("spool_lines", 0) >= len(second) // 2,
                        lambda: f"half the second part spooled: {ingest.stats()}")  # fmt: skip
        ingest.kill()
        publisher.close()
        vm.start()
        ingest.start()
        wait_until_sync(lambda: len(stored_counts(vm)) >= len(sent), lambda: f"{len(sent)} points in the store")
    finally:
        ingest.stop()
    assert "replay" in ingest.log() or "spool" in ingest.log()
    assert_exactly_once(stored_counts(vm), sent)

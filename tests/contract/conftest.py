import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The contract test modules must not import pytest (they also run under MicroPython).
    for item in items:
        if "tests/contract/" in str(item.fspath):
            item.add_marker(pytest.mark.unit)

"""Wheel build hook. The wire contract and firmware core live in firmware/lib and the bundled
data in data/, outside the Python packages; a built wheel must carry them, an editable install
must not (it serves the checkout itself through dev-mode-dirs; a copy would shadow the edits)."""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

WHEEL_EXTRAS = {
    "firmware/lib/tendril_wire.py": "tendril_wire.py",
    "firmware/lib/tendril_fw": "tendril_fw",
    "firmware": "tendril_transactive/resources/firmware",
    "data": "tendril_transactive/resources/data",
}


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "standard":
            build_data["force_include"].update(WHEEL_EXTRAS)

"""Where the bundled files live: `firmware/` and `data/` sit beside the packages in a source
checkout (and its editable install); a built wheel carries them under `tendril_resources/`."""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    """The folder `name` ("firmware" or "data"): the checkout's, else the installed wheel's. If
    neither exists the checkout path is returned, so the error names where it was expected."""
    for base in (_ROOT, _ROOT / "tendril_resources"):
        if (base / name).is_dir():
            return base / name
    return _ROOT / name


FIRMWARE_DIR = resource_dir("firmware")
DATA_DIR = resource_dir("data")

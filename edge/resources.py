"""Where the bundled files live: `firmware/` and `data/` sit beside the packages in a source
checkout (and its editable install); a built wheel carries them in `tendril_transactive/resources/`."""

from __future__ import annotations

from pathlib import Path

# resolved: in a checkout this file is reached through the tendril_transactive/edge link, and
# the real folder's parent is the checkout; in a wheel it is the tendril_transactive package
_ROOT = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    """The folder `name` ("firmware" or "data"): the checkout's, else the installed wheel's. If
    neither exists the checkout path is returned, so the error names where it was expected."""
    for base in (_ROOT, _ROOT / "resources"):
        if (base / name).is_dir():
            return base / name
    return _ROOT / name


FIRMWARE_DIR = resource_dir("firmware")
DATA_DIR = resource_dir("data")

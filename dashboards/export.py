"""Write the dashboards defined in code to dashboards/json/, or check the committed files match.

    python -m tendril_transactive.dashboards            # regenerate dashboards/json/*.json
    python -m tendril_transactive.dashboards --check    # exit 1 if a committed file differs from the code
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tendril_transactive.dashboards.checks import JSON_DIR
from tendril_transactive.dashboards.definitions import all_dashboards


def rendered() -> dict[str, dict[str, Any]]:
    """file name -> dashboard JSON, as the code defines them."""
    return {f"{d.uid}.json": d.to_json() for d in all_dashboards()}


def dumps(dash: dict[str, Any]) -> str:
    return json.dumps(dash, indent=2, sort_keys=False) + "\n"


def write(folder: Path = JSON_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    wanted = rendered()
    for stale in folder.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    paths = []
    for name, dash in wanted.items():
        path = folder / name
        path.write_text(dumps(dash))
        paths.append(path)
    return paths


def stale(folder: Path = JSON_DIR) -> list[str]:
    """Names of files missing, extra or different from what the code renders."""
    wanted = {name: dumps(d) for name, d in rendered().items()}
    have = {p.name: p.read_text() for p in folder.glob("*.json")} if folder.is_dir() else {}
    return sorted(n for n in wanted.keys() | have.keys() if wanted.get(n) != have.get(n))

"""Building blocks for Grafana dashboard JSON with InfluxQL targets.

InfluxQL (not Flux) because it runs on InfluxDB 1.x, 2.x (v1 API + DBRP mapping) and 3.x.
Every target is a raw query string; `$timeFilter`, `$__interval` and `$site`-style template
variables are left for Grafana to fill in (and for the verification test to substitute).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
DATASOURCE_TYPE = "influxdb"
DATASOURCE_UID = "tendril-influxql"  # provisioning creates the datasource with exactly this uid
DATASOURCE_REF = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
FOLDER_TITLE = "Tendril"
FOLDER_UID = "tendril"
GRID_WIDTH = 24

Json = dict[str, Any]


def q(name: str) -> str:
    """Quote an identifier for InfluxQL."""
    return '"' + name.replace('"', '\\"') + '"'


def match(tag: str, variable: str) -> str:
    """A tag filter on a template variable; a regex so Grafana's multi-value `(a|b)` works too."""
    return f"{q(tag)} =~ /^${variable}$/"


def where(*conditions: str) -> str:
    return " AND ".join([*conditions, "$timeFilter"])


@dataclass(frozen=True)
class Target:
    """One InfluxQL query of a panel; `columns` are the value columns it must return (after `time`)."""

    query: str
    columns: tuple[str, ...]
    alias: str = ""
    result_format: str = "time_series"

    def to_json(self, ref_id: str) -> Json:
        out: Json = {
            "refId": ref_id,
            "datasource": dict(DATASOURCE_REF),
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries | stat | table | state-timeline
    targets: tuple[Target, ...]
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    options: Json = field(default_factory=dict)


@dataclass(frozen=True)
class Variable:
    """A query template variable: its values are tag values the store holds."""

    name: str
    label: str
    query: str
    include_all: bool = False

    def to_json(self) -> Json:
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": dict(DATASOURCE_REF),
            "query": self.query,
            "definition": self.query,
            "refresh": 2,  # on time range change: new sites appear without a reload
            "includeAll": self.include_all,
            "allValue": ".*" if self.include_all else None,
            "multi": False,
            "sort": 1,
            "current": {},
            "options": [],
            "hide": 0,
        }


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("tendril",)
    time_from: str = "now-24h"

    def to_json(self) -> Json:
        """Grafana dashboard JSON: panels laid out left to right, ids 1..n in order."""
        panels: list[Json] = []
        x = y = row_h = 0
        for panel_id, panel in enumerate(self.panels, start=1):
            if x + panel.width > GRID_WIDTH:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            x += panel.width
            row_h = max(row_h, panel.height)
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "refresh": "1m",
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": [v.to_json() for v in self.variables]},
            "annotations": {"list": []},
            "links": [],
            "panels": panels,
        }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> Json:
    steps = [{"color": color, "value": value} for color, value in panel.thresholds]
    out: Json = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(DATASOURCE_REF),
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "targets": [t.to_json(ref) for t, ref in zip(panel.targets, _ref_ids(), strict=False)],
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": dict(panel.options),
    }
    if panel.kind == "timeseries" and len(panel.thresholds) > 1:
        out["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return out


def _ref_ids() -> itertools.chain[str]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return itertools.chain(letters, (a + b for a in letters for b in letters))

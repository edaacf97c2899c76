"""Checks on dashboard JSON, and the queries it holds with template variables filled in.

`problems` is what Grafana would trip over (schema version, duplicate panel ids, a datasource
nobody provisions, a variable nobody defines); `queries` and `substitute` let a test run every
panel and variable query against a real InfluxQL engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tendril_transactive.dashboards.model import DATASOURCE_TYPE, DATASOURCE_UID, SCHEMA_VERSION

JSON_DIR = Path(__file__).resolve().parent / "json"
MIN_SCHEMA_VERSION = 36  # panels' `datasource` as {type, uid} objects
BUILTIN_VARIABLES = frozenset({"timeFilter", "__interval", "interval", "__interval_ms", "__timeFilter"})
_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
ALL = "$__all"  # a variable set to "All": Grafana sends the variable's allValue, `.*` here
_REQUIRED_TOP = ("uid", "title", "schemaVersion", "panels", "templating", "time")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    panel: str
    ref_id: str
    query: str
    result_format: str


def load_dir(folder: Path = JSON_DIR) -> dict[str, dict[str, Any]]:
    """file name -> dashboard JSON for every *.json in `folder`."""
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _variables_used(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VAR_RE.finditer(text)}


def _iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _iter_panels(panel.get("panels", []))  # collapsed rows hold their panels


def problems(dash: Mapping[str, Any], datasource_uids: frozenset[str] = frozenset({DATASOURCE_UID})) -> list[str]:
    """Everything wrong with one dashboard's JSON; empty when Grafana can load it as intended."""
    out: list[str] = []
    title = str(dash.get("title", "?"))
    for key in _REQUIRED_TOP:
        if key not in dash:
            out.append(f"{title}: missing '{key}'")
    version = dash.get("schemaVersion")
    if not isinstance(version, int) or not MIN_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
        out.append(f"{title}: schemaVersion {version!r} not in {MIN_SCHEMA_VERSION}..{SCHEMA_VERSION}")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    defined = variables | BUILTIN_VARIABLES

    def check_ref(ref: Any, where: str) -> None:
        if not isinstance(ref, dict):
            out.append(f"{title}: {where}: datasource must be a {{type, uid}} object, got {ref!r}")
            return
        uid = ref.get("uid")
        if ref.get("type") != DATASOURCE_TYPE or uid not in datasource_uids:
            out.append(f"{title}: {where}: datasource {ref!r} is not a provisioned {DATASOURCE_TYPE} datasource")

    for var in dash.get("templating", {}).get("list", []):
        check_ref(var.get("datasource"), f"variable ${var.get('name')}")
        for used in _variables_used(str(var.get("query", ""))) - defined:
            out.append(f"{title}: variable ${var.get('name')} uses undefined ${used}")
    seen: dict[int, str] = {}
    for panel in _iter_panels(dash.get("panels", [])):
        pid, ptitle = panel.get("id"), panel.get("title", "?")
        if not isinstance(pid, int):
            out.append(f"{title}: panel {ptitle!r} has no integer id")
        elif pid in seen:
            out.append(f"{title}: panel id {pid} used by {seen[pid]!r} and {ptitle!r}")
        else:
            seen[pid] = ptitle
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")) or grid.get("x", 0) + grid.get(
                "w", 0) > 24:
            out.append(f"{title}: panel {ptitle!r} has a bad gridPos {grid!r}")
        if panel.get("type") == "row":
            continue
        check_ref(panel.get("datasource"), f"panel {ptitle!r}")
        targets = panel.get("targets", [])
        if not targets:
            out.append(f"{title}: panel {ptitle!r} has no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            out.append(f"{title}: panel {ptitle!r} repeats a refId: {refs}")
        for target in targets:
            ref = target.get("datasource", panel.get("datasource"))
            check_ref(ref, f"panel {ptitle!r} query {target.get('refId')}")
            if not target.get("rawQuery") or not str(target.get("query", "")).strip():
                out.append(f"{title}: panel {ptitle!r} query {target.get('refId')} is not a raw InfluxQL query")
            for used in _variables_used(str(target.get("query", ""))) - defined:
                out.append(f"{title}: panel {ptitle!r} uses undefined ${used}")
    return out


def queries(dash: Mapping[str, Any]) -> list[PanelQuery]:
    title = str(dash["title"])
    return [
        PanelQuery(title, int(p["id"]), str(p["title"]), str(t["refId"]), str(t["query"]),
                   str(t.get("resultFormat", "time_series")))
        for p in _iter_panels(dash["panels"]) if p.get("type") != "row"
        for t in p.get("targets", [])
    ]


def variable_queries(dash: Mapping[str, Any]) -> dict[str, str]:
    return {str(v["name"]): str(v["query"]) for v in dash["templating"]["list"] if v.get("type") == "query"}


def substitute(query: str, values: Mapping[str, str], start_s: int, end_s: int, interval: str = "1m") -> str:
    """What Grafana sends for one choice of variables and time range (values go inside /^...$/ regexes)."""
    builtins = {"timeFilter": f"time >= {start_s}s AND time <= {end_s}s", "__interval": interval,
                "interval": interval}

    def repl(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in builtins:
            return builtins[name]
        if name not in values:
            raise KeyError(f"no value for ${name} in {query!r}")
        if values[name] == ALL:
            return ".*"
        return re.escape(values[name]).replace("/", "\\/")

    return _VAR_RE.sub(repl, query)

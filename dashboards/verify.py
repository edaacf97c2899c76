"""Run every dashboard query against a real InfluxQL engine and say which ones fail, and why.

A query fails when the engine reports an error, returns no series, or returns columns other
than the ones its panel was written for -- which is what a panel referring to a measurement or
field nobody writes looks like. Pure apart from `run_query`, which the caller supplies
(an HTTP GET on InfluxDB's /query in the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tendril_transactive.dashboards.checks import queries, substitute, variable_queries
from tendril_transactive.dashboards.definitions import all_dashboards

RunQuery = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class Failure:
    dashboard: str
    where: str
    query: str
    reason: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.where}: {self.reason}\n    {self.query}"


def expected_columns() -> dict[tuple[str, int, str], tuple[str, ...]]:
    """(dashboard uid, panel id, refId) -> value columns the panel expects, from the code."""
    out: dict[tuple[str, int, str], tuple[str, ...]] = {}
    for dash in all_dashboards():
        rendered = dash.to_json()
        for pj, panel in zip(rendered["panels"], dash.panels, strict=True):
            for tj, target in zip(pj["targets"], panel.targets, strict=True):
                out[(dash.uid, pj["id"], tj["refId"])] = target.columns
    return out


def _series(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    results = body.get("results") or [{}]
    first = results[0]
    error = body.get("error") or first.get("error")
    return list(first.get("series") or []), error


def verify(
    dashboards: Mapping[str, Mapping[str, Any]], run_query: RunQuery, values: Mapping[str, str],
    start_s: int, end_s: int, interval: str = "1m",
) -> list[Failure]:
    """Every variable and panel query of every dashboard, with `values` for its variables."""
    columns = expected_columns()
    failures: list[Failure] = []
    for dash in dashboards.values():
        uid, title = str(dash["uid"]), str(dash["title"])
        for name, query in variable_queries(dash).items():
            text = substitute(query, values, start_s, end_s, interval)
            series, error = _series(run_query(text))
            if error or not any(s.get("values") for s in series):
                failures.append(Failure(title, f"variable ${name}", text, error or "no values"))
        for pq in queries(dash):
            text = substitute(pq.query, values, start_s, end_s, interval)
            where = f"panel {pq.panel!r} query {pq.ref_id}"
            want = columns.get((uid, pq.panel_id, pq.ref_id))
            if want is None:
                failures.append(Failure(title, where, text, "not defined in dashboards/definitions.py"))
                continue
            series, error = _series(run_query(text))
            if error:
                failures.append(Failure(title, where, text, f"engine error: {error}"))
                continue
            rows = [row for s in series for row in s.get("values") or []]
            got = {tuple(s.get("columns") or []) for s in series}
            if not rows:
                failures.append(Failure(title, where, text, "no data"))
            elif got != {("time", *want)}:
                failures.append(Failure(title, where, text, f"columns {sorted(got)} != {('time', *want)}"))
            elif all(v is None for row in rows for v in row[1:]):
                failures.append(Failure(title, where, text, "only nulls"))
    return failures

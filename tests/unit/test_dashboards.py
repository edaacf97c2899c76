"""Dashboard JSON: loads as Grafana dashboards, matches the code, refers only to stored names."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from tendril_transactive.cloud.reports import market_lines as mk
from tendril_transactive.cloud.store import line_protocol as lp
from tendril_transactive.dashboards.__main__ import main as dashboards_main
from tendril_transactive.dashboards.checks import JSON_DIR, load_dir, problems, queries, substitute, variable_queries
from tendril_transactive.dashboards.export import rendered, stale, write
from tendril_transactive.dashboards.model import DATASOURCE_UID, SCHEMA_VERSION

pytestmark = pytest.mark.unit

EXPECTED = {"tendril-fleet.json", "tendril-site.json", "tendril-prices.json", "tendril-settlement.json",
            "tendril-devices.json", "tendril-ingestion.json"}


def test_committed_json_is_what_the_code_renders() -> None:
    assert stale() == [], "run `python -m tendril_transactive.dashboards` and commit dashboards/json"
    assert set(load_dir()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_dashboard_loads_as_valid_grafana_json(name: str) -> None:
    dash = json.loads((JSON_DIR / name).read_text())
    assert problems(dash) == []
    assert dash["schemaVersion"] == SCHEMA_VERSION
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and ids
    refs = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert refs == {DATASOURCE_UID}


def test_dashboard_uids_and_titles_are_unique() -> None:
    dashes = list(load_dir().values())
    assert len({d["uid"] for d in dashes}) == len(dashes)
    assert len({d["title"] for d in dashes}) == len(dashes)


def test_template_variables_site_device_feeder_exist() -> None:
    names = {v for d in load_dir().values() for v in variable_queries(d)}
    assert {"site", "device", "feeder"} <= names


_FROM = re.compile(r'FROM "([^"]+)"')


def test_every_query_reads_a_measurement_some_writer_defines() -> None:
    written = set(lp.MEASUREMENTS) | set(mk.MARKET_MEASUREMENTS)
    for dash in load_dir().values():
        texts = [pq.query for pq in queries(dash)] + list(variable_queries(dash).values())
        for text in texts:
            for measurement in _FROM.findall(text):
                assert measurement in written, f"{dash['title']}: {measurement!r} is written by nobody: {text}"


def _base() -> dict[str, object]:
    return copy.deepcopy(rendered()["tendril-site.json"])


def test_problems_reports_a_duplicate_panel_id() -> None:
    dash = _base()
    panels = dash["panels"]
    assert isinstance(panels, list)
    panels[1]["id"] = panels[0]["id"]
    assert any("panel id 1 used by" in p for p in problems(dash))


def test_problems_reports_a_datasource_nobody_provisions() -> None:
    dash = _base()
    panels = dash["panels"]
    assert isinstance(panels, list)
    panels[0]["targets"][0]["datasource"] = {"type": "influxdb", "uid": "somewhere-else"}
    found = problems(dash)
    assert len(found) == 1 and "somewhere-else" in found[0]


def test_problems_reports_an_undefined_variable_and_an_old_schema() -> None:
    dash = _base()
    panels = dash["panels"]
    assert isinstance(panels, list)
    panels[0]["targets"][0]["query"] += " AND $nosuch"
    dash["schemaVersion"] = 16
    found = problems(dash)
    assert any("undefined $nosuch" in p for p in found)
    assert any("schemaVersion 16" in p for p in found)


def test_substitute_fills_grafana_variables_as_regex_safe_text() -> None:
    text = substitute('SELECT 1 FROM "m" WHERE "site" =~ /^$site$/ AND $timeFilter GROUP BY time($__interval)',
                      {"site": "a.b/c"}, 10, 20, "5m")
    assert text == 'SELECT 1 FROM "m" WHERE "site" =~ /^a\\.b\\/c$/ AND time >= 10s AND time <= 20s GROUP BY time(5m)'
    with pytest.raises(KeyError, match="site"):
        substitute("$site", {}, 0, 1)


def test_check_mode_passes_and_stale_reports_an_edited_or_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dashboards_main(["--check"]) == 0
    assert "matches" in capsys.readouterr().out
    write(tmp_path)
    assert stale(tmp_path) == []
    edited = tmp_path / "tendril-site.json"
    edited.write_text(edited.read_text().replace("power_w", "power_watts"))
    (tmp_path / "tendril-fleet.json").unlink()
    assert stale(tmp_path) == ["tendril-fleet.json", "tendril-site.json"]

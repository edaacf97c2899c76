"""`tendril dashboards provision` replayed against a RECORDED HTTP exchange (no Grafana can run here).

The exchange (tests/unit/recorded/grafana_provision_exchange.json) was written by hand from the
Grafana and InfluxDB 2 HTTP API references -- see its `source` note. Two loopback replay servers
answer as Grafana and InfluxDB would and fail the test on any request out of order, with a wrong
body or without the credentials. The real grafana-client code sends the requests.
"""

from __future__ import annotations

import argparse
import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tendril_transactive.dashboards import cli as dashboards_cli
from tendril_transactive.dashboards.checks import load_dir

pytestmark = pytest.mark.unit

CASSETTE = Path(__file__).parent / "recorded" / "grafana_provision_exchange.json"
GRAFANA_TOKEN = "grafana-token"
INFLUX_TOKEN = "influx-token-from-env"
AUTH = {"grafana": f"Bearer {GRAFANA_TOKEN}", "influx": f"Token {INFLUX_TOKEN}"}


def _fill(value: Any, uid: str) -> Any:
    if isinstance(value, str):
        return value.replace("{uid}", uid)
    if isinstance(value, dict):
        return {k: _fill(v, uid) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, uid) for v in value]
    return value


def _expand(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uids = [d["uid"] for d in load_dir().values()]
    out: list[dict[str, Any]] = []
    for entry in entries:
        if "for_each_dashboard" in entry:
            out += [_fill(e, uid) for uid in uids for e in entry["for_each_dashboard"]]
        else:
            out.append(entry)
    return out


def _subset(want: Any, got: Any, path: str = "") -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path or 'body'}: expected an object, got {got!r}"[:200]]
        return [m for k, v in want.items() for m in _subset(v, got.get(k), f"{path}.{k}")]
    return [] if want == got else [f"{path}: expected {want!r}, got {got!r}"[:200]]


class Replay:
    """Expected requests in order; answers each with its recorded response."""

    def __init__(self) -> None:
        self.expected: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.saved: dict[str, dict[str, Any]] = {}  # uid -> dashboard as Grafana stored it
        self.lock = threading.Lock()

    def answer(self, server: str, method: str, raw_path: str, headers: Any, body: Any) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        with self.lock:
            if not self.expected:
                self.errors.append(f"unexpected {server} {method} {raw_path}: the exchange is over")
                return 500, {"message": "not in the recorded exchange"}
            want = self.expected.pop(0)
            got = f"{server} {method} {parts.path}"
            if got != f"{want['server']} {want['method']} {want['path']}":
                self.errors.append(f"expected {want['server']} {want['method']} {want['path']}, got {got}")
                return 500, {"message": "out of order"}
            if dict(parse_qsl(parts.query)) != want.get("query", {}):
                self.errors.append(f"{got}: query {parts.query!r} != {want.get('query')}")
            if headers.get("Authorization") != AUTH[server]:
                self.errors.append(f"{got}: Authorization {headers.get('Authorization')!r}")
            if "body" in want:
                self.errors += [f"{got}: {m}" for m in _subset(want["body"], body)]
            elif body is not None:
                self.errors.append(f"{got}: unexpected body {body!r}"[:200])
            response = copy.deepcopy(want["response"])
            if want.get("save_dashboard"):
                dash = body["dashboard"]
                self.saved[dash["uid"]] = {**dash, "id": 11, "version": 1}
            if isinstance(response, dict) and response.get("dashboard") == "$saved":
                response["dashboard"] = self.saved[parts.path.rsplit("/", 1)[1]]
            return int(want["status"]), response


def _server(replay: Replay, name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, response = replay.answer(name, self.command, self.path, self.headers, body)
            data = json.dumps(response).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a kept-alive client connection must not hold up teardown
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture()
def replay() -> Iterator[tuple[Replay, str, str]]:
    rp = Replay()
    grafana, influx = _server(rp, "grafana"), _server(rp, "influx")
    yield rp, f"http://127.0.0.1:{grafana.server_port}", f"http://127.0.0.1:{influx.server_port}"
    for srv in (grafana, influx):
        srv.shutdown()
        srv.server_close()


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tendril")
    dashboards_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _provision(grafana: str, influx: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("TENDRIL_INFLUX_TOKEN", INFLUX_TOKEN)
    # Grafana reaches InfluxDB by its compose name; provisioning reaches it here through the replay.
    return _run(["dashboards", "provision", "--grafana", grafana, "--token", GRAFANA_TOKEN,
                 "--influx-url", influx, "--influx-org", "tendril", "--influx-bucket", "tendril"])


def test_recorded_exchange_first_run_creates_then_second_run_changes_nothing(
    replay: tuple[Replay, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rp, grafana, influx = replay
    recorded = json.loads(CASSETTE.read_text())
    for entry in recorded["first_run"] + recorded["second_run"]:  # Grafana sees InfluxDB by this URL
        for e in entry.get("for_each_dashboard", [entry]):
            if e.get("body", {}).get("url") == "http://influxdb:8086":
                e["body"]["url"] = influx

    rp.expected = _expand(recorded["first_run"])
    assert _provision(grafana, influx, monkeypatch) == 0
    assert rp.errors == [] and rp.expected == []
    out = capsys.readouterr().out
    assert "dbrp tendril/autogen -> tendril: created" in out
    assert "datasource tendril-influxql: created" in out and "folder tendril: created" in out
    assert out.count(": created") == 3 + len(load_dir())
    assert set(rp.saved) == {d["uid"] for d in load_dir().values()}

    rp.expected = _expand(recorded["second_run"])
    assert _provision(grafana, influx, monkeypatch) == 0
    assert rp.errors == [] and rp.expected == []
    out = capsys.readouterr().out
    assert "dbrp tendril/autogen -> tendril: exists" in out and "folder tendril: exists" in out
    assert out.count(": unchanged") == len(load_dir()), out


def test_recorded_exchange_a_dashboard_edited_in_grafana_is_put_back(
    replay: tuple[Replay, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rp, grafana, _influx = replay
    recorded = json.loads(CASSETTE.read_text())
    rp.saved = {d["uid"]: {**d, "id": 11, "version": 1} for d in load_dir().values()}
    rp.saved["tendril-site"]["title"] = "edited by hand"
    second = _expand(recorded["second_run"])[2:]  # Grafana only: --no-dbrp
    second[1]["body"]["url"] = "http://influxdb:8086"
    i = next(i for i, e in enumerate(second) if e["path"] == "/api/dashboards/uid/tendril-site")
    second.insert(i + 1, {"server": "grafana", "method": "POST", "path": "/api/dashboards/db",
                          "body": {"dashboard": {"uid": "tendril-site", "title": "Tendril / Site detail"},
                                   "folderUid": "tendril", "overwrite": True},
                          "status": 200, "response": {"id": 11, "uid": "tendril-site", "status": "success",
                                                      "version": 2}})
    rp.expected = second
    monkeypatch.setenv("TENDRIL_INFLUX_TOKEN", INFLUX_TOKEN)
    code = _run(["dashboards", "provision", "--grafana", grafana, "--token", GRAFANA_TOKEN, "--no-dbrp",
                 "--influx-url", "http://influxdb:8086"])
    assert code == 0 and rp.errors == [] and rp.expected == []
    out = capsys.readouterr().out
    assert "dashboard tendril-site: updated" in out and out.count(": unchanged") == len(load_dir()) - 1


def test_recorded_exchange_grafana_refusal_is_reported_with_the_step(
    replay: tuple[Replay, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rp, grafana, _influx = replay
    rp.expected = [{"server": "grafana", "method": "GET", "path": "/api/datasources/uid/tendril-influxql",
                    "status": 403, "response": {"message": "Permission denied"}}]
    monkeypatch.setenv("TENDRIL_INFLUX_TOKEN", INFLUX_TOKEN)
    code = _run(["dashboards", "provision", "--grafana", grafana, "--token", GRAFANA_TOKEN, "--no-dbrp"])
    assert code == 1
    err = capsys.readouterr().err
    assert "datasource tendril-influxql" in err and "Permission denied" in err


def test_provision_without_a_token_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert _run(["dashboards", "provision", "--grafana", "http://127.0.0.1:9"]) == 2
    assert "--token" in capsys.readouterr().err


def test_recorded_exchange_dbrp_only_as_the_compose_setup_runs_it(
    replay: tuple[Replay, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rp, _grafana, influx = replay
    recorded = json.loads(CASSETTE.read_text())
    rp.expected = [e for e in recorded["first_run"] if e.get("server") == "influx"]
    assert len(rp.expected) == 3
    monkeypatch.setenv("TENDRIL_INFLUX_TOKEN", INFLUX_TOKEN)
    assert _run(["dashboards", "provision", "--influx-url", influx]) == 0
    assert rp.errors == [] and rp.expected == []
    assert capsys.readouterr().out.strip() == "dbrp tendril/autogen -> tendril: created"


def test_recorded_exchange_dbrp_mapped_to_another_bucket_is_an_error(
    replay: tuple[Replay, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rp, _grafana, influx = replay
    recorded = json.loads(CASSETTE.read_text())
    buckets, dbrps = copy.deepcopy(recorded["second_run"][:2])
    dbrps["response"]["content"][0]["bucketID"] = "ffffffffffffffff"
    rp.expected = [buckets, dbrps]
    monkeypatch.setenv("TENDRIL_INFLUX_TOKEN", INFLUX_TOKEN)
    assert _run(["dashboards", "provision", "--influx-url", influx]) == 1
    assert rp.errors == [] and rp.expected == []
    assert "already mapped to bucket ffffffffffffffff" in capsys.readouterr().err

"""Put Tendril's dashboards into a Grafana: datasource, folder, dashboards -- idempotently.

Through grafana-client (the maintained fork of grafana-api) against Grafana's HTTP API:
running it twice changes nothing the second time (the datasource is re-put with the same
settings, the folder exists, dashboards identical to the stored ones are skipped).

The datasource speaks InfluxQL. On InfluxDB 2.x that goes through the v1 compatibility API,
which needs a DBRP mapping from database/retention policy to a bucket; `ensure_dbrp` creates
it through InfluxDB's own API. `provisioning_files` emits the same setup as Grafana
file-provisioning YAML, for operators who deploy configuration rather than call APIs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError

from tendril_transactive.dashboards.model import DATASOURCE_TYPE, DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID

DATASOURCE_NAME = "Tendril InfluxDB (InfluxQL)"
DEFAULT_DATABASE = "tendril"
DEFAULT_RETENTION_POLICY = "autogen"
PROVIDER_NAME = "tendril"
VOLATILE_KEYS = ("id", "version")  # Grafana assigns these; they say nothing about content


class ProvisionError(RuntimeError):
    """Provisioning could not finish; the message says which step and what the server said."""


@dataclass(frozen=True)
class InfluxTarget:
    """Where the datasource points. `token` (InfluxDB 2/3) or `user`/`password` (1.x); never logged."""

    url: str
    database: str = DEFAULT_DATABASE
    token: str = field(default="", repr=False)
    user: str = ""
    password: str = field(default="", repr=False)


@dataclass
class ProvisionReport:
    datasource: str = ""  # created | updated
    folder: str = ""  # created | exists
    dashboards: dict[str, str] = field(default_factory=dict)  # uid -> created | updated | unchanged

    def render(self) -> str:
        lines = [f"datasource {DATASOURCE_UID}: {self.datasource}", f"folder {FOLDER_UID}: {self.folder}"]
        lines += [f"dashboard {uid}: {state}" for uid, state in sorted(self.dashboards.items())]
        return "\n".join(lines)


def datasource_body(target: InfluxTarget) -> dict[str, Any]:
    """Grafana's datasource JSON for an InfluxQL InfluxDB datasource with Tendril's fixed uid."""
    json_data: dict[str, Any] = {"version": "InfluxQL", "dbName": target.database, "httpMode": "POST"}
    secure: dict[str, str] = {}
    body: dict[str, Any] = {
        "uid": DATASOURCE_UID, "name": DATASOURCE_NAME, "type": DATASOURCE_TYPE, "access": "proxy",
        "url": target.url, "database": target.database, "isDefault": False, "jsonData": json_data,
    }
    if target.token:
        # InfluxDB 2/3 v1 API: the token in an Authorization header, as Grafana documents for InfluxQL.
        json_data["httpHeaderName1"] = "Authorization"
        secure["httpHeaderValue1"] = f"Token {target.token}"
    elif target.user:
        body["user"] = target.user
        secure["password"] = target.password
    if secure:
        body["secureJsonData"] = secure
    return body


def _status(exc: GrafanaClientError) -> int:
    code: int = exc.status_code
    return code


def _exists(call: Any, *args: Any) -> Any | None:
    """The object a GET returns, or None on 404."""
    try:
        return call(*args)
    except GrafanaClientError as exc:
        if _status(exc) == 404:
            return None
        raise


def _content(dashboard: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dashboard.items() if k not in VOLATILE_KEYS}


def provision(api: GrafanaApi, target: InfluxTarget, dashboards: Mapping[str, Mapping[str, Any]]) -> ProvisionReport:
    """Datasource, folder and every dashboard in `dashboards` (file name -> JSON)."""
    report = ProvisionReport()
    body = datasource_body(target)
    client: Any = api  # grafana-client's element methods are unannotated
    try:
        if _exists(client.datasource.get_datasource_by_uid, DATASOURCE_UID) is None:
            client.datasource.create_datasource(body)
            report.datasource = "created"
        else:
            client.datasource.update_datasource_by_uid(DATASOURCE_UID, body)
            report.datasource = "updated"
    except GrafanaClientError as exc:
        raise ProvisionError(f"datasource {DATASOURCE_UID}: {exc}") from exc
    try:
        if _exists(client.folder.get_folder, FOLDER_UID) is None:
            client.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            report.folder = "created"
        else:
            report.folder = "exists"
    except GrafanaClientError as exc:
        raise ProvisionError(f"folder {FOLDER_UID}: {exc}") from exc
    for name, dash in dashboards.items():
        uid = str(dash["uid"])
        try:
            stored = _exists(client.dashboard.get_dashboard, uid)
            if stored is not None and _content(stored["dashboard"]) == _content(dash) and \
                    stored.get("meta", {}).get("folderUid") == FOLDER_UID:
                report.dashboards[uid] = "unchanged"
                continue
            client.dashboard.update_dashboard({"dashboard": {**_content(dash), "id": None}, "folderUid": FOLDER_UID,
                                            "overwrite": True, "message": "tendril dashboards provision"})
            report.dashboards[uid] = "created" if stored is None else "updated"
        except GrafanaClientError as exc:
            raise ProvisionError(f"dashboard {name} ({uid}): {exc}") from exc
    return report


# ------------------------------------------------------------------ InfluxDB 2: DBRP mapping


def _influx2(url: str, token: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("Authorization", f"Token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise ProvisionError(f"InfluxDB {method} {path}: HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise ProvisionError(f"InfluxDB {method} {path}: {exc.reason}") from None
    return json.loads(raw) if raw else None


def ensure_dbrp(url: str, token: str, org: str, bucket: str, database: str = DEFAULT_DATABASE,
                retention_policy: str = DEFAULT_RETENTION_POLICY) -> str:
    """Map InfluxQL `database`/`retention_policy` to `bucket` on InfluxDB 2; 'created' or 'exists'."""
    found = _influx2(url, token, "GET", "/api/v2/buckets?" + urllib.parse.urlencode({"org": org, "name": bucket}))
    buckets = (found or {}).get("buckets") or []
    if not buckets:
        raise ProvisionError(f"InfluxDB has no bucket {bucket!r} in org {org!r}")
    bucket_id, org_id = str(buckets[0]["id"]), str(buckets[0]["orgID"])
    query = urllib.parse.urlencode({"orgID": org_id, "db": database, "rp": retention_policy})
    existing = (_influx2(url, token, "GET", f"/api/v2/dbrps?{query}") or {}).get("content") or []
    if any(m.get("bucketID") == bucket_id for m in existing):
        return "exists"
    if existing:
        raise ProvisionError(f"{database}/{retention_policy} is already mapped to bucket "
                             f"{existing[0].get('bucketID')}, not {bucket!r} ({bucket_id})")
    _influx2(url, token, "POST", "/api/v2/dbrps", {"bucketID": bucket_id, "orgID": org_id, "database": database,
                                                   "retention_policy": retention_policy, "default": True})
    return "created"


# ------------------------------------------------------------------ file provisioning


def provisioning_files(target: InfluxTarget, dashboards_path: str, token_env: str = "INFLUX_TOKEN"
                       ) -> dict[str, str]:
    """Relative path -> YAML text for Grafana's provisioning folder (datasources/, dashboards/).

    The secret is never written: the YAML names an environment variable Grafana expands at start.
    """
    import yaml

    ds = datasource_body(InfluxTarget(target.url, target.database, token="$" + "{" + token_env + "}"))
    ds.pop("uid")
    datasource = {"apiVersion": 1, "datasources": [{"uid": DATASOURCE_UID, **ds, "editable": False}]}
    provider = {"apiVersion": 1, "providers": [{
        "name": PROVIDER_NAME, "orgId": 1, "folder": FOLDER_TITLE, "folderUid": FOLDER_UID, "type": "file",
        "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }]}
    return {
        "datasources/tendril.yaml": yaml.safe_dump(datasource, sort_keys=False),
        "dashboards/tendril.yaml": yaml.safe_dump(provider, sort_keys=False),
    }

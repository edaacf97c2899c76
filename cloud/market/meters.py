"""Reading a site's meter energy register back from the telemetry store, for settlement.

`MeterReader.readings(site, start, end)` -> {device: [(unix s, energy_wh), ...] in time order},
from measurement `meter`, field `energy_wh`, tags site/device (cloud.store.line_protocol).

* `EmbeddedMeterReader`: the in-process EmbeddedStore (demo). Not thread-safe against the
  ingestor writing in the same loop, so `blocking = False`: the service calls it in the loop.
* `LineProtocolFileReader`: the file `tendril ingest --store-file` appends to, read
  incrementally (only new bytes on each call).
* `VictoriaMeterReader`: VictoriaMetrics' /api/v1/export (series `meter_energy_wh`), as the
  integration tests read it. Blocking HTTP: the service calls it from a worker thread.
* `InfluxQLMeterReader`: InfluxQL on `/query` — InfluxDB 1.x, 2.x (v1 compatibility API with the
  DBRP mapping `tendril dashboards provision` creates) and 3.x, the same language the dashboards
  use; tested against Debian's InfluxDB 1.6.
`meter_reader(url, ...)` picks one by asking the server's `/ping` for an InfluxDB version.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from tendril_transactive.cloud.settings import ENV_INFLUX_TOKEN
from tendril_transactive.cloud.store.line_protocol import (
    FIELD_ENERGY_WH,
    MEASUREMENT_METER,
    TAG_DEVICE,
    TAG_SITE,
    LinePoint,
    LineProtocolError,
    parse_line,
)
from tendril_transactive.cloud.store.sinks import EmbeddedStore

Readings = dict[str, list[tuple[float, float]]]
_NS = 1_000_000_000


class MeterReadError(RuntimeError):
    """The store could not be read now; settlement waits and tries again."""


class MeterReader(Protocol):
    blocking: bool

    def readings(self, site: str, start: float, end: float) -> Readings:
        """Energy register readings of every meter of `site` with start <= ts <= end."""
        ...


def _collect(points: list[LinePoint], site: str, start: float, end: float) -> Readings:
    out: Readings = {}
    lo, hi = int(start * _NS), int(end * _NS)
    for p in points:
        if p.tags.get(TAG_SITE) != site or not lo <= p.ts_ns <= hi:
            continue
        value = p.fields.get(FIELD_ENERGY_WH)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault(p.tags.get(TAG_DEVICE, ""), []).append((p.ts_ns / _NS, float(value)))
    for series in out.values():
        series.sort()
    return out


class EmbeddedMeterReader:
    blocking = False

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store

    def readings(self, site: str, start: float, end: float) -> Readings:
        return _collect(self.store.points(MEASUREMENT_METER, site=site), site, start, end)


class LineProtocolFileReader:
    """Meter points of a line-protocol file that another process appends to."""

    blocking = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""
        self._points: list[LinePoint] = []

    def _catch_up(self) -> None:
        try:
            with self.path.open("r", encoding="utf-8") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
                self._offset = fh.tell()
        except FileNotFoundError:
            return  # nothing ingested yet
        except OSError as exc:
            raise MeterReadError(f"{self.path}: {exc}") from exc
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for its newline
        for line in lines:
            if not line.startswith(MEASUREMENT_METER + ","):
                continue
            try:
                self._points.append(parse_line(line))
            except LineProtocolError:
                continue  # ingestion wrote it, so it parsed once; a torn line is not a reading

    def readings(self, site: str, start: float, end: float) -> Readings:
        self._catch_up()
        return _collect(self._points, site, start, end)


class VictoriaMeterReader:
    blocking = True

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def readings(self, site: str, start: float, end: float) -> Readings:
        match = f'{{__name__="{MEASUREMENT_METER}_{FIELD_ENERGY_WH}",{TAG_SITE}="{site}"}}'
        query = urllib.parse.urlencode({"match[]": match, "start": repr(float(start)), "end": repr(float(end))})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=self.timeout_s) as resp:
                body = resp.read().decode()
        except OSError as exc:
            raise MeterReadError(f"{self.url}: {exc}") from exc
        out: Readings = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            series = json.loads(line)
            device = str(series["metric"].get(TAG_DEVICE, ""))
            pairs = zip(series["timestamps"], series["values"], strict=True)
            out.setdefault(device, []).extend((ts / 1000.0, float(v)) for ts, v in pairs)
        for readings in out.values():
            readings.sort()
        return out


class InfluxQLMeterReader:
    """`SELECT energy_wh FROM meter WHERE site = ...` grouped by device, epoch milliseconds."""

    blocking = True

    def __init__(self, url: str, database: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Token {token}"} if token else {}

    def readings(self, site: str, start: float, end: float) -> Readings:
        quoted = site.replace("\\", "\\\\").replace("'", "\\'")  # ids are [a-z0-9_-]; quote anyway
        q = (f'SELECT "{FIELD_ENERGY_WH}" FROM "{MEASUREMENT_METER}" WHERE "{TAG_SITE}" = \'{quoted}\' '
             f"AND time >= {int(start * 1000)}ms AND time <= {int(end * 1000)}ms GROUP BY \"{TAG_DEVICE}\"")
        query = urllib.parse.urlencode({"db": self.database, "q": q, "epoch": "ms"})
        req = urllib.request.Request(f"{self.url}/query?{query}", headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read().decode())
        except (OSError, ValueError) as exc:
            raise MeterReadError(f"{self.url}: {exc}") from exc
        out: Readings = {}
        for result in body.get("results", []):
            if "error" in result:
                raise MeterReadError(f"{self.url}: {result['error']}")
            for series in result.get("series", []):
                device = str(series.get("tags", {}).get(TAG_DEVICE, ""))
                for ts, value in series.get("values", []):
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        out.setdefault(device, []).append((ts / 1000.0, float(value)))
        for readings in out.values():
            readings.sort()
        return out


def influx_version(url: str, timeout_s: float = 10.0) -> str | None:
    """The X-Influxdb-Version a server's /ping reports (None: not InfluxDB, e.g. VictoriaMetrics)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout_s) as resp:
            version: str | None = resp.headers.get("X-Influxdb-Version")
            return version
    except OSError as exc:
        raise MeterReadError(f"{url}: {exc}") from exc


def meter_reader(url: str, database: str, token: str | None = None) -> MeterReader:
    """InfluxQL for a server that says it is InfluxDB, VictoriaMetrics' export API otherwise."""
    if influx_version(url) is not None:
        return InfluxQLMeterReader(url, database, token if token is not None else os.environ.get(ENV_INFLUX_TOKEN))
    return VictoriaMeterReader(url)

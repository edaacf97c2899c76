"""Reading a site's meter energy register back from the telemetry store, for settlement.

`MeterReader.readings(site, start, end)` -> {device: [(unix s, energy_wh), ...] in time order},
from measurement `meter`, field `energy_wh`, tags site/device (cloud.store.line_protocol).

* `EmbeddedMeterReader`: the in-process EmbeddedStore (demo). Not thread-safe against the
  ingestor writing in the same loop, so `blocking = False`: the service calls it in the loop.
* `LineProtocolFileReader`: the file `tendril ingest --store-file` appends to, read
  incrementally (only new bytes on each call).
* `VictoriaMeterReader`: VictoriaMetrics' /api/v1/export (series `meter_energy_wh`), as the
  integration tests read it. Blocking HTTP: the service calls it from a worker thread.
An InfluxDB 2/3 Flux reader is not written yet (see docs/market.md).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from cloud.store.line_protocol import (
    FIELD_ENERGY_WH,
    MEASUREMENT_METER,
    TAG_DEVICE,
    TAG_SITE,
    LinePoint,
    LineProtocolError,
    parse_line,
)
from cloud.store.sinks import EmbeddedStore

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

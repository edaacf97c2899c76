"""Where ingested points go: a real InfluxDB-compatible server, or an in-process store.

Both take pre-built line-protocol strings. Building influxdb-client `Point` objects costs
~20 us each (MEASURED.md) and would cap ingestion near 40 k points/s; strings reach ~130 k.

A failed write raises. Retrying and spooling to disk belong in a Sink that wraps another
Sink (same protocol), so the Ingestor never needs to know which one it has.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

from cloud.line_protocol import TAG_DEVICE, TAG_SITE, LinePoint, parse_line

StoredPoint = LinePoint


class Sink(Protocol):
    async def write(self, lines: list[str]) -> None:
        """Store every line or raise; a partial write is reported as a failure."""
        ...

    async def close(self) -> None: ...


class InfluxSink:
    """InfluxDB 2.x/3.x (or anything speaking `/api/v2/write`) through influxdb-client's async API."""

    def __init__(
        self, url: str, token: str | None, org: str, bucket: str, *, timeout_ms: int = 10_000
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self._token = token or ""  # empty: no Authorization header (servers without auth)
        self._timeout_ms = timeout_ms
        self._client: Any = None
        self._write_api: Any = None

    async def write(self, lines: list[str]) -> None:
        if not lines:
            return
        if self._client is None:
            # The async client opens an aiohttp session, which must happen inside the running loop.
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

            self._client = InfluxDBClientAsync(
                url=self.url, token=self._token, org=self.org, timeout=self._timeout_ms
            )
            self._write_api = self._client.write_api()
        from influxdb_client.domain.write_precision import WritePrecision

        await self._write_api.write(
            bucket=self.bucket, org=self.org, record=lines, write_precision=WritePrecision.NS
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._write_api = self._client, None, None
            await client.close()

    def __repr__(self) -> str:  # never show the token
        return f"InfluxSink(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r})"


class EmbeddedStore:
    """In-process store for the zero-install demo and tests.

    Every line is parsed (so a line the store cannot read fails the write) and kept in
    memory for queries. With `path`, the lines are also appended to that file exactly as
    written, so they can be inspected or imported into a real InfluxDB later
    (`influx write --precision ns --file PATH`). `memory=False` keeps only the file, for a
    long-running ingest that nobody queries in-process.
    """

    def __init__(self, path: Path | None = None, *, memory: bool = True) -> None:
        self.path = path
        self._memory = memory
        self._file: IO[str] | None = None
        self._order = itertools.count()
        # measurement -> [(ts_ns, arrival number, point)]; sorted lazily on query
        self._points: dict[str, list[tuple[int, int, LinePoint]]] = {}
        self._unsorted: set[str] = set()
        self._count = 0

    async def write(self, lines: list[str]) -> None:
        self.add_lines(lines)

    def add_lines(self, lines: Iterable[str]) -> None:
        batch = list(lines)
        parsed = [parse_line(line) for line in batch]  # all or nothing: parse before storing any
        if self.path is not None and batch:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write("".join(line + "\n" for line in batch))
            self._file.flush()
        self._count += len(parsed)
        if not self._memory:
            return
        for point in parsed:
            self._points.setdefault(point.measurement, []).append((point.ts_ns, next(self._order), point))
            self._unsorted.add(point.measurement)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _sorted(self, measurement: str) -> list[tuple[int, int, LinePoint]]:
        rows = self._points.get(measurement, [])
        if measurement in self._unsorted:
            rows.sort(key=lambda row: (row[0], row[1]))  # time, then arrival: deterministic
            self._unsorted.discard(measurement)
        return rows

    def points(
        self, measurement: str, site: str | None = None, device: str | None = None
    ) -> list[StoredPoint]:
        """Points of one measurement in time order (ties in arrival order), optionally one site/device."""
        return [
            point
            for _, _, point in self._sorted(measurement)
            if (site is None or point.tags.get(TAG_SITE) == site)
            and (device is None or point.tags.get(TAG_DEVICE) == device)
        ]

    def count(self) -> int:
        """Points written, including those not kept in memory."""
        return self._count

    def measurements(self) -> list[str]:
        return sorted(name for name, rows in self._points.items() if rows)

    def sites(self) -> list[str]:
        return sorted(
            {p.tags[TAG_SITE] for rows in self._points.values() for _, _, p in rows if TAG_SITE in p.tags}
        )

    def devices(self, site: str | None = None) -> list[str]:
        return sorted(
            {
                p.tags[TAG_DEVICE]
                for rows in self._points.values()
                for _, _, p in rows
                if TAG_DEVICE in p.tags and (site is None or p.tags.get(TAG_SITE) == site)
            }
        )

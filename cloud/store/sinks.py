"""Where ingested points go: a real InfluxDB-compatible server, or an in-process store.

Both take pre-built line protocol. Building influxdb-client `Point` objects costs ~20 us each
(docs/measured.md) and would cap ingestion near 40 k points/s; the async client with strings
reaches ~130 k, a plain HTTP POST of a pre-joined body 220-320 k. So InfluxSink POSTs the
body itself to `/api/v2/write`, the endpoint of InfluxDB 2.x, 3.x and Cloud (and of
VictoriaMetrics, which the tests use).

A failed write raises: StoreRejected when the server refused the data itself (retrying cannot
help), anything else (connection refused, timeout, 5xx, 401, 429) when a retry may succeed.
Retrying and spooling belong to the caller (cloud/ingest/commit.py).
"""

from __future__ import annotations

import itertools
import logging
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from tendril_transactive.cloud.store.line_protocol import TAG_DEVICE, TAG_SITE, LinePoint, parse_line

StoredPoint = LinePoint

log = logging.getLogger("tendril.store")


class StoreRejected(ValueError):
    """The store refused the data (HTTP 400/422: malformed lines, field type conflict)."""


class StoreUnavailable(ConnectionError):
    """The store did not take the write now (5xx, 401/403, 429...); a retry may succeed."""


class Sink(Protocol):
    async def write(self, lines: list[str]) -> None:
        """Store every line or raise; a partial write is reported as a failure."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class BodySink(Protocol):
    """A Sink that also takes the lines already joined by newlines and encoded (the hot path)."""

    async def write_body(self, body: bytes) -> None: ...


_PERMANENT = (400, 422)  # the data itself is wrong; 413 cannot happen at our batch sizes


class InfluxSink:
    """InfluxDB 2.x/3.x/Cloud (or anything speaking `/api/v2/write`) over aiohttp.

    InfluxDB 1.x has no `/api/v2/write` before 1.8: opening the sink asks the server's `/ping`
    for its version, and a 1.x server is written through its own `/write?db=BUCKET` instead (the
    bucket names the database; a token "user:password" becomes basic auth), logged once. Without
    the probe, a 1.6 server answered every batch with 404 and the ingest spooled forever.
    """

    def __init__(
        self, url: str, token: str | None, org: str, bucket: str, *, timeout_ms: int = 10_000
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self._token = token or ""  # empty: no Authorization header (servers without auth)
        self._timeout_ms = timeout_ms
        self._session: Any = None
        query = urllib.parse.urlencode({"org": org, "bucket": bucket, "precision": "ns"})
        self._write_url = url.rstrip("/") + "/api/v2/write?" + query
        self.server_version: str | None = None  # X-Influxdb-Version from /ping, when it says

    async def write(self, lines: list[str]) -> None:
        if lines:
            await self.write_body("\n".join(lines).encode())

    async def open(self) -> None:
        """Import the HTTP client and make the session now (call from the loop that will write).

        Otherwise the first write does it: importing aiohttp costs ~0.16 CPU s, which would land
        on the first batch's latency and, with N workers, N times inside the first messages' CPU.
        """
        if self._session is not None:
            return
        import aiohttp

        headers = {"Content-Type": "text/plain; charset=utf-8"}
        timeout = aiohttp.ClientTimeout(total=self._timeout_ms / 1000)
        version = await self._probe(aiohttp, timeout)
        auth = None
        if version is not None and version.startswith("1."):
            query = urllib.parse.urlencode({"db": self.bucket, "precision": "ns"})
            self._write_url = self.url.rstrip("/") + "/write?" + query
            user, sep, password = self._token.partition(":")
            if sep:
                auth = aiohttp.BasicAuth(user, password)
            log.warning("%s is InfluxDB %s: writing through its 1.x /write API into database %r",
                        self.url, version, self.bucket)
        elif self._token:
            headers["Authorization"] = f"Token {self._token}"
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout, auth=auth)

    async def _probe(self, aiohttp: Any, timeout: Any) -> str | None:
        """The server's InfluxDB version from /ping (None: not InfluxDB, or not reachable now)."""
        try:
            async with aiohttp.ClientSession(timeout=timeout) as probe, \
                    probe.get(self.url.rstrip("/") + "/ping") as resp:
                self.server_version = resp.headers.get("X-Influxdb-Version")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None  # the write path reports the outage; the spool keeps the data
        return self.server_version

    async def write_body(self, body: bytes) -> None:
        if not body:
            return
        if self._session is None:
            await self.open()  # the session belongs to the running loop, so it is made there
        async with self._session.post(self._write_url, data=body) as resp:
            if 200 <= resp.status < 300:
                return
            text = (await resp.text(errors="replace"))[:300]
            if resp.status in _PERMANENT:
                raise StoreRejected(f"{self.url} refused the write: HTTP {resp.status}: {text}")
            raise StoreUnavailable(f"{self.url} did not take the write: HTTP {resp.status}: {text}")

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

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

    async def write_body(self, body: bytes) -> None:
        if body:
            self.add_lines(body.decode().split("\n"))

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

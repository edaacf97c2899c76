"""Ingestion's view of itself: lag histogram, health points for the store, throttled warnings.

Health points go through the same batches as device data (so they also survive an outage
in the spool) under the measurement names defined in line_protocol.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tendril_transactive.cloud.store import line_protocol as lp

# ------------------------------------------------------------------ lag histogram

# Bucket upper edges in ms: 1 ms steps to 1 s, 10 ms to 10 s, 1 s to 10 min; then overflow.
_EDGES: list[float] = (
    [float(ms) for ms in range(1, 1001)]
    + [float(ms) for ms in range(1010, 10_001, 10)]
    + [float(ms) for ms in range(11_000, 600_001, 1000)]
)
_OVERFLOW = len(_EDGES)


def _bucket(lag_ms: float) -> int:
    if lag_ms < 1000:
        return max(int(lag_ms), 0)
    if lag_ms < 10_000:
        return 1000 + int((lag_ms - 1000) // 10)
    if lag_ms < 600_000:
        return 1900 + int((lag_ms - 10_000) // 1000)
    return _OVERFLOW


class LagHistogram:
    """Counts of lags (device timestamp -> write acknowledged), resolution 1 ms below 1 s."""

    def __init__(self) -> None:
        self.counts = [0] * (_OVERFLOW + 1)
        self.total = 0
        self.max_ms = 0.0

    def reset(self) -> None:
        self.counts = [0] * (_OVERFLOW + 1)
        self.total = 0
        self.max_ms = 0.0

    def add_many(self, stamps: Iterable[float], now: float) -> None:
        counts, bucket = self.counts, _bucket
        n, worst = 0, self.max_ms
        for stamp in stamps:
            lag_ms = (now - stamp) * 1000.0
            counts[bucket(lag_ms)] += 1
            n += 1
            if lag_ms > worst:
                worst = lag_ms
        self.total += n
        self.max_ms = worst

    def merge(self, other: LagHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.max_ms = max(self.max_ms, other.max_ms)

    def quantile(self, q: float) -> float | None:
        """Upper edge (ms) of the bucket holding the q-quantile; None when empty."""
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if count and seen >= rank:
                return _EDGES[index] if index < _OVERFLOW else self.max_ms
        return self.max_ms

    def to_json(self) -> dict[str, object]:
        return {"counts": {str(i): c for i, c in enumerate(self.counts) if c}, "max_ms": self.max_ms}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LagHistogram:
        hist = cls()
        counts = data.get("counts", {})
        assert isinstance(counts, dict)
        for index, count in counts.items():
            hist.counts[int(index)] = int(count)
        hist.total = sum(hist.counts)
        max_ms = data.get("max_ms", 0.0)
        hist.max_ms = float(max_ms) if isinstance(max_ms, int | float) else 0.0
        return hist


# ------------------------------------------------------------------ counters


@dataclass
class IngestStats:
    received: int = 0
    written: int = 0  # message lines the store acknowledged (directly or replayed from the spool)
    health_written: int = 0  # ingestion's own health points stored
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    by_kind: Counter[str] = field(default_factory=Counter)  # accepted messages
    duplicates: int = 0  # dropped: already seen (QoS 1 redelivery, replayed backlog, publisher resend)
    dead_letters: int = 0  # published to the dead-letter topic
    dead_letters_dropped: int = 0  # not published: broker gone or too many unacknowledged
    spooled: int = 0  # lines appended to the spool
    replayed: int = 0  # lines written from the spool
    write_failures: int = 0  # store writes that failed and were retried or spooled
    lost: int = 0  # lines the store refused as malformed (HTTP 400/422): never retried
    connects: int = 0
    session_takeovers: int = 0  # the broker said another client took our client id (ALARM)
    sessions_lost: int = 0  # reconnected and the broker had no session for us (ALARM)
    last_error: str | None = None
    first_received_at: float | None = None  # injected clock
    last_written_at: float | None = None
    cpu_at_first_received: float | None = None  # process CPU seconds
    cpu_at_last_written: float | None = None


def health_lines(
    worker: str,
    stats: IngestStats,
    interval_lag: LagHistogram,
    rate_msg_s: float,
    spool_lines: int,
    spool_bytes: int,
    now_ns: int,
) -> list[str]:
    """Health points for one interval: one `ingest_health` point plus one per dead-letter reason."""
    tags = {lp.TAG_WORKER: worker}
    fields: dict[str, lp.FieldValue] = {
        lp.FIELD_RECEIVED: stats.received,
        lp.FIELD_WRITTEN: stats.written,
        lp.FIELD_RATE: float(rate_msg_s),
        lp.FIELD_DUPLICATES: stats.duplicates,
        lp.FIELD_REJECTED: sum(stats.rejected.values()),
        lp.FIELD_SPOOL_LINES: spool_lines,
        lp.FIELD_SPOOL_BYTES: spool_bytes,
        lp.FIELD_WRITE_FAILURES: stats.write_failures,
        # Every way a message can be lost or dropped is a field, so an alert can watch each.
        "dead_letters_dropped": stats.dead_letters_dropped,
        "lost": stats.lost,
        "session_takeovers": stats.session_takeovers,
        "sessions_lost": stats.sessions_lost,
    }
    for name, q in ((lp.FIELD_LAG_P50, 0.5), (lp.FIELD_LAG_P99, 0.99)):
        value = interval_lag.quantile(q)
        if value is not None:
            fields[name] = float(value)
    if interval_lag.total:
        fields[lp.FIELD_LAG_MAX] = float(interval_lag.max_ms)
    lines = [lp.format_line(lp.LinePoint(lp.MEASUREMENT_INGEST_HEALTH, tags, fields, now_ns))]
    for reason, count in sorted(stats.rejected.items()):
        point = lp.LinePoint(
            lp.MEASUREMENT_DEAD_LETTERS, {**tags, lp.TAG_REASON: reason}, {lp.FIELD_COUNT: count}, now_ns
        )
        lines.append(lp.format_line(point))
    return lines


# ------------------------------------------------------------------ throttled warnings


class ThrottledLog:
    """At most `burst` warnings per reason per `window_s`; then one summary of what was held back.

    A flood of garbage from one broken device must not fill the disk with log lines, nor hide
    the first few examples, which are the useful ones.
    """

    def __init__(
        self, logger: logging.Logger, monotonic: Callable[[], float], burst: int = 10, window_s: float = 60.0
    ) -> None:
        self._log = logger
        self._monotonic = monotonic
        self._burst = burst
        self._window_s = window_s
        self._windows: dict[str, tuple[float, int]] = {}  # reason -> (window start, count in window)

    def warning(self, reason: str, fmt: str, *args: object) -> None:
        now = self._monotonic()
        start, count = self._windows.get(reason, (now, 0))
        if now - start >= self._window_s:
            self._summarise(reason, start, count, now)
            start, count = now, 0
        count += 1
        self._windows[reason] = (start, count)
        if count <= self._burst:
            self._log.warning(fmt, *args)
        elif count == self._burst + 1:
            self._log.warning("reason %s: more than %d rejections; holding the rest back for %.0f s",
                              reason, self._burst, self._window_s)

    def flush(self) -> None:
        """Log the summaries of windows that have ended (call now and then)."""
        now = self._monotonic()
        for reason, (start, count) in list(self._windows.items()):
            if now - start >= self._window_s:
                self._summarise(reason, start, count, now)
                del self._windows[reason]

    def _summarise(self, reason: str, start: float, count: int, now: float) -> None:
        held = count - self._burst
        if held > 0:
            self._log.warning("%d more rejections with reason %s in the last %.0f s (not logged one by one)",
                              held, reason, now - start)  # fmt: skip

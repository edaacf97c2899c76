"""Ingestion's own health: lag histogram, health points in line protocol, throttled warnings,
and the device registry check."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import Registry, RegistryError
from tendril_transactive.cloud.ingest.health import IngestStats, LagHistogram, ThrottledLog, health_lines
from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.ingest.known_devices import UNKNOWN_DEVICE, KnownDevices
from tendril_transactive.cloud.store import line_protocol as lp
from tendril_transactive.cloud.store.sinks import EmbeddedStore

pytestmark = pytest.mark.unit


def test_lag_quantiles_have_millisecond_resolution_below_a_second() -> None:
    hist = LagHistogram()
    now = 1000.0
    hist.add_many([now - ms / 1000 for ms in range(1, 101)], now)  # 1..100 ms
    assert hist.total == 100
    assert hist.quantile(0.5) == pytest.approx(51.0, abs=1.0)
    assert hist.quantile(0.99) == pytest.approx(100.0, abs=1.0)
    assert hist.max_ms == pytest.approx(100.0)
    assert LagHistogram().quantile(0.5) is None


def test_lag_histograms_merge_and_survive_json() -> None:
    a, b = LagHistogram(), LagHistogram()
    a.add_many([0.0] * 10, 0.005)  # 5 ms
    b.add_many([0.0] * 10, 30.0)  # 30 s
    a.merge(b)
    again = LagHistogram.from_json(a.to_json())
    assert again.counts == a.counts and again.total == 20
    assert again.quantile(0.25) == 6.0  # upper edge of the 5 ms bucket
    assert again.quantile(0.9) == 31_000.0
    far = LagHistogram()
    far.add_many([0.0], 3600.0)  # an hour-old backlog lands in the overflow bucket, reported by its max
    assert far.quantile(0.5) == pytest.approx(3_600_000.0)


def test_health_points_are_line_protocol_with_the_schema_names() -> None:
    stats = IngestStats(received=10, written=7, duplicates=1, rejected=Counter({"bad_json": 2}))
    lag = LagHistogram()
    lag.add_many([9.99, 9.9], 10.0)
    lines = health_lines("3", stats, lag, 12.5, spool_lines=4, spool_bytes=512, now_ns=5_000_000_000)
    health, dead = (lp.parse_line(line) for line in lines)
    assert health.measurement == lp.MEASUREMENT_INGEST_HEALTH and health.tags == {lp.TAG_WORKER: "3"}
    assert health.fields[lp.FIELD_RECEIVED] == 10 and health.fields[lp.FIELD_RATE] == 12.5
    assert health.fields[lp.FIELD_SPOOL_LINES] == 4 and health.fields[lp.FIELD_DUPLICATES] == 1
    assert health.fields[lp.FIELD_LAG_P99] == pytest.approx(100.0, abs=1.0)
    assert dead == lp.LinePoint(lp.MEASUREMENT_DEAD_LETTERS, {"worker": "3", "reason": "bad_json"}, {"count": 2},
                                5_000_000_000)  # fmt: skip


def test_warnings_are_throttled_per_reason_with_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = ThrottledLog(logging.getLogger("t"), lambda: now[0], burst=3, window_s=60)
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            throttle.warning("bad_json", "bad %d", i)
        throttle.warning("bad_ts", "other reason still logged")
        now[0] = 61.0
        throttle.flush()
    texts = [r.getMessage() for r in caplog.records]
    assert texts[:3] == ["bad 0", "bad 1", "bad 2"]
    assert any("more than 3 rejections" in t for t in texts)
    assert "other reason still logged" in texts
    assert any(t.startswith("47 more rejections with reason bad_json") for t in texts)
    assert len(texts) == 6


def test_only_registered_devices_are_accepted_and_the_registry_is_reread(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.add("s1", "m1", "meter")
    known = KnownDevices(registry_root=tmp_path / "reg")
    store = EmbeddedStore()
    ingestor = Ingestor("127.0.0.1", 1, store, devices=known)
    msg = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, 1717000000, 5.0, 1.0))

    assert ingestor.handle(wire.device_topic("s1", "m1", wire.TELEMETRY), msg) is None
    stranger = ingestor.handle(wire.device_topic("s1", "m2", wire.TELEMETRY), msg)
    assert stranger is not None and (stranger.reason, stranger.detail) == (UNKNOWN_DEVICE, "s1/m2")

    registry.add("s1", "m2", "meter")  # `tendril device add` while ingestion runs
    assert known.reload_if_changed()
    assert ingestor.handle(wire.device_topic("s1", "m2", wire.TELEMETRY), msg) is None
    known.register("s9", "lab")  # or a program registers one itself
    assert ingestor.handle(wire.device_topic("s9", "lab", wire.TELEMETRY), msg) is None
    asyncio.run(ingestor.flush())
    assert store.count() == 3 and ingestor.stats.rejected == {UNKNOWN_DEVICE: 1}


def test_a_broken_registry_file_keeps_the_last_good_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Registry(tmp_path).add("s1", "m1", "meter")
    known = KnownDevices(registry_root=tmp_path)
    (tmp_path / "devices.json").write_text("{ not json")
    assert not known.reload_if_changed()
    assert ("s1", "m1") in known and "not reloaded" in caplog.text
    with pytest.raises(RegistryError, match="tendril device add"):
        KnownDevices(registry_root=tmp_path / "missing")

"""EmbeddedStore: queries, deterministic time order, the line-protocol file, all-or-nothing writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tendril_transactive.cloud.store.line_protocol import LinePoint, LineProtocolError, format_line, parse_line
from tendril_transactive.cloud.store.sinks import EmbeddedStore, InfluxSink, Sink

pytestmark = pytest.mark.unit


def meter(site: str, device: str, ts_ns: int, power: float) -> str:
    return format_line(
        LinePoint("meter", {"site": site, "device": device}, {"seq": 1, "power_w": power}, ts_ns)
    )


def relay(site: str, device: str, ts_ns: int, state: int) -> str:
    return format_line(LinePoint("relay", {"site": site, "device": device}, {"relay": state}, ts_ns))


def test_queries_filter_by_site_and_device_and_order_by_time() -> None:
    store = EmbeddedStore()
    asyncio.run(
        store.write([meter("s2", "m", 300, 3.0), meter("s1", "m", 200, 2.0), relay("s1", "r", 50, 1)])
    )
    asyncio.run(store.write([meter("s1", "m", 100, 1.0), meter("s1", "x", 150, 1.5)]))

    assert [p.ts_ns for p in store.points("meter")] == [100, 150, 200, 300]
    assert [p.fields["power_w"] for p in store.points("meter", site="s1", device="m")] == [1.0, 2.0]
    assert [p.tags["device"] for p in store.points("meter", site="s1")] == ["m", "x", "m"]
    assert store.points("meter", device="r") == []
    assert store.points("nothing") == []
    assert store.count() == 5
    assert store.measurements() == ["meter", "relay"]
    assert store.sites() == ["s1", "s2"]
    assert store.devices() == ["m", "r", "x"]
    assert store.devices(site="s2") == ["m"]


def test_equal_timestamps_keep_arrival_order() -> None:
    store = EmbeddedStore()
    store.add_lines([meter("s", "d", 10, float(i)) for i in range(5)])
    store.add_lines([meter("s", "d", 5, 99.0), meter("s", "d", 10, 5.0)])
    assert [p.fields["power_w"] for p in store.points("meter")] == [99.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_points_come_back_exactly_as_written() -> None:
    point = LinePoint(
        "command_ack",
        {"site": "s", "device": "d"},
        {"id": 'c "1"', "ok": False, "relay": 1, "reason": "expired"},
        1717000000123000000,
    )
    store = EmbeddedStore()
    store.add_lines([format_line(point)])
    assert store.points("command_ack") == [point]


def test_file_gets_every_line_appended_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "telemetry.lp"
    first = [meter("s", "d", 2, 1.0), relay("s", "r", 1, 0)]
    second = [meter("s", "d", 3, 2.5)]

    async def scenario() -> None:
        store = EmbeddedStore(path)
        await store.write(first)
        await store.write([])
        await store.write(second)
        await store.close()
        reopened = EmbeddedStore(path)  # a second run appends, never truncates
        await reopened.write(second)
        await reopened.close()

    asyncio.run(scenario())
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == first + second + second
    assert [format_line(parse_line(line)) for line in lines] == lines


def test_a_bad_line_fails_the_whole_write_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.lp"
    store = EmbeddedStore(path)
    with pytest.raises(LineProtocolError):
        store.add_lines([meter("s", "d", 1, 1.0), "meter,site=s power_w=1"])
    assert store.count() == 0
    assert store.points("meter") == []
    assert not path.exists()


def test_file_only_mode_counts_but_keeps_nothing_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "t.lp"
    store = EmbeddedStore(path, memory=False)
    store.add_lines([meter("s", "d", 1, 1.0), meter("s", "d", 2, 1.0)])
    assert store.count() == 2
    assert store.points("meter") == []
    assert len(path.read_text().splitlines()) == 2


def test_influx_sink_repr_never_shows_the_token() -> None:
    sink: Sink = InfluxSink("http://127.0.0.1:1", "secret-token", "o", "b")
    assert "secret-token" not in repr(sink)
    assert "http://127.0.0.1:1" in repr(sink)

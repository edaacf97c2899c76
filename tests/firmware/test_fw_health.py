# Watchdog liveness: fed only while every loop keeps its promise.

from tendril_fw.health import Liveness


def test_all_loops_alive_until_one_misses_its_promise():
    live = Liveness()
    assert live.stale(0.0) == []
    live.beat("producer", 0.0, 10.0)
    live.beat("uplink", 0.0, 5.0)
    assert live.stale(5.0) == []
    assert live.stale(5.5) == ["uplink"]
    live.beat("uplink", 5.5, 5.0)
    assert live.stale(10.5) == ["producer"]
    assert live.stale(11.0) == ["producer", "uplink"]
    live.forget("producer")
    assert live.stale(10.5) == []

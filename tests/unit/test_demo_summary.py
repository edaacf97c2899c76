"""The demo's summary is computed from stored readings; check the arithmetic by hand."""

from __future__ import annotations

import json

import pytest

from tendril_transactive.cloud.demo.summary import (
    DemoSummary,
    PricePoint,
    energy_cost,
    price_at,
    relay_activity,
    site_result,
)

pytestmark = pytest.mark.unit

PRICES = [PricePoint(1000.0, 300, 0.10), PricePoint(1300.0, 300, 0.30)]


def test_price_at_uses_the_tender_in_force() -> None:
    assert price_at(PRICES, 1000.0) == 0.10
    assert price_at(PRICES, 1299.9) == 0.10
    assert price_at(PRICES, 1300.0) == 0.30
    assert price_at(PRICES, 500.0) == 0.10  # before the first tender: nearest


def test_price_at_without_prices_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no tender prices"):
        price_at([], 0.0)


def test_energy_cost_prices_each_step_at_its_start_and_sorts_late_readings() -> None:
    # 1 kWh from 1000 to 1200 at $0.10, then 2 kWh from 1200 to 1400 (started at 1200 -> $0.10),
    # then 1 kWh from 1400 to 1500 at $0.30. Total 4 kWh, $0.10 + $0.20 + $0.30 = $0.60.
    readings = [(1400.0, 3000.0), (1000.0, 0.0), (1200.0, 1000.0), (1500.0, 4000.0)]
    kwh, cost = energy_cost(readings, PRICES)
    assert kwh == pytest.approx(4.0)
    assert cost == pytest.approx(0.60)


def test_meter_reset_never_bills_negative_energy() -> None:
    kwh, cost = energy_cost([(1000.0, 500.0), (1100.0, 0.0), (1200.0, 1000.0)], PRICES)
    assert kwh == pytest.approx(1.0)
    assert cost == pytest.approx(0.10)


def test_relay_activity_counts_on_time_and_switches() -> None:
    on_h, switches = relay_activity([(0.0, 0), (3600.0, 1), (7200.0, 1), (10800.0, 0), (14400.0, 0)])
    assert on_h == pytest.approx(2.0)
    assert switches == 2


def test_summary_renders_every_site_and_serialises() -> None:
    s = DemoSummary(1.0, 2.0, 10, 1, 5, 3, 3, 0, 2, 2)
    s.sites.append(site_result("site-1", [(1000.0, 0.0), (1300.0, 1000.0)], [(1000.0, 0), (1300.0, 1)], PRICES))
    text = s.render()
    assert "site-1" in text and "commands acked" in text
    assert json.loads(s.to_json())["sites"][0]["energy_kwh"] == pytest.approx(1.0)

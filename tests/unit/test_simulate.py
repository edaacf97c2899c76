"""`tendril simulate` on a small case: the agent core (cloud.agent.core, planning in worker
processes) beats the devices on their own, keeps comfort, meets the pump's hours and the EV's
energy, and every trade goes through the market's tender book."""

from __future__ import annotations

import pytest

from tendril_transactive.cloud.sim.fleet import make_homes
from tendril_transactive.cloud.sim.run import SimConfig, simulate

pytestmark = pytest.mark.unit


def test_optimizer_beats_baseline_on_a_small_fleet() -> None:
    lines: list[str] = []
    result = simulate(SimConfig(sites=2, days=1, start="2024-03-12", loss=0.02), progress=lines.append)
    b, o = result.baseline, result.optimized
    assert o.cost_tender_usd < b.cost_tender_usd
    assert o.shadow_bill_usd < b.shadow_bill_usd
    assert o.comfort_ch <= b.comfort_ch + 0.05  # no worse than a thermostat
    assert o.pump_h == pytest.approx(o.pump_need_h) and b.pump_h == pytest.approx(b.pump_need_h)
    assert o.ev_short_kwh == pytest.approx(0.0, abs=0.05)
    assert any("optimized: 100.0%" in line for line in lines)  # progress reached the end
    notes = "\n".join(result.notes)
    assert "failed solves 0" in notes
    assert "forward transactions accepted" in notes and "refused 0;" in notes  # the market took every one
    assert "refused by devices 0" in notes  # dispatch never asked for what the firmware refuses
    table = result.render()
    assert "shadow bill" in table and "optimized" in table


def test_homes_are_reproducible_and_varied() -> None:
    a = make_homes(8, 1_709_280_000.0, 3)
    b = make_homes(8, 1_709_280_000.0, 3)
    assert [h.spec for h in a] == [h.spec for h in b]
    assert any(h.spec.pump for h in a) and any(h.spec.ev for h in a) and any(h.spec.battery for h in a)
    assert any(h.spec.pump is None for h in a)
    with pytest.raises(ValueError, match="at least one site"):
        make_homes(0, 1_709_280_000.0, 3)


def test_a_window_past_the_price_data_is_refused() -> None:
    with pytest.raises(ValueError, match="no day-ahead price"):
        simulate(SimConfig(sites=1, days=2, start="2024-03-30"), progress=lambda _: None)

"""Shared inputs for optimizer tests: real March 2024 tender prices and TMY3 weather."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from tendril_transactive.cloud.market.tenders import TenderConfig, tender_prices
from tendril_transactive.cloud.optimizer.devices import FloatArray, Horizon, SiteForecast
from tendril_transactive.cloud.sources.prices import default_prices, prices_between
from tendril_transactive.cloud.sources.weather import load_weather
from tendril_transactive.edge.ev import EvSession

LOCAL = ZoneInfo("America/Los_Angeles")
START = datetime(2024, 3, 14, tzinfo=LOCAL).timestamp()


def hourly_buy(start: float, hours: int) -> FloatArray:
    cfg = TenderConfig()
    da = prices_between(default_prices("DAM"), start, start + hours * 3600)
    assert len(da) == hours
    return np.array([tender_prices(p.lmp_usd_per_mwh, p.start, cfg)[0] for p in da])


def forecast(h: Horizon, start: float = START, *, base_kw: float = 0.4, position_kwh: float = 0.0,
             sessions: tuple[EvSession, ...] = (), pump_plan: FloatArray | None = None,
             pump_need_h: float = 0.0, buy: FloatArray | None = None) -> SiteForecast:
    per_hour = max(1, round(3600 / h.step_s))
    if buy is None:
        buy = np.repeat(hourly_buy(start, -(-h.steps // per_hour)), per_hour)[: h.steps]
    temp, ghi = load_weather().series(start, h.steps, h.step_s)
    return SiteForecast(start=start, buy=buy, sell=buy - 0.02, position_kwh=np.full(h.steps, position_kwh),
                        base_kw=np.full(h.steps, base_kw), t_out_c=temp, ghi_w_m2=ghi, ev_sessions=sessions,
                        pump_plan=pump_plan, pump_need_h=pump_need_h)

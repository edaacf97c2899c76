"""Series a simulation reads: tender prices, weather and base load on the 5-minute grid.

Tender prices do not depend on the home (one feeder, no congestion here), so they are priced
once for the fleet: per 5-minute step the real-time tender (RTM LMP; the hour's DAM LMP where
the RTM series has a gap) and the day-ahead tender of the step's hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tendril_transactive.cloud.market.tenders import LOCAL_TZ, TenderConfig, tender_prices
from tendril_transactive.cloud.optimizer.devices import FloatArray
from tendril_transactive.cloud.sources.prices import PriceInterval, default_prices
from tendril_transactive.cloud.sources.weather import load_weather
from tendril_transactive.cloud.timefmt import local_time
from tendril_transactive.edge.site import SiteModel

STEP_S = 300
LOOKAHEAD_STEPS = 288  # the real-time horizon: a day


def _lmp_by_start(prices: list[PriceInterval]) -> dict[int, float]:
    return {p.start: p.lmp_usd_per_mwh for p in prices}


@dataclass(frozen=True)
class PriceSeries:
    start: float
    rt_buy: FloatArray
    rt_sell: FloatArray
    da_buy: FloatArray
    da_sell: FloatArray
    rt_lmp: FloatArray
    da_lmp: FloatArray

    @property
    def steps(self) -> int:
        return len(self.rt_buy)

    def realtime_forecast(self, k: int, n: int) -> tuple[FloatArray, FloatArray]:
        """What is known at step k about steps k..k+n: the real-time tender for step k, the
        day-ahead tenders after it."""
        buy = self.da_buy[k:k + n].copy()
        sell = self.da_sell[k:k + n].copy()
        buy[0], sell[0] = self.rt_buy[k], self.rt_sell[k]
        return buy, sell


def price_series(start: float, steps: int, config: TenderConfig) -> PriceSeries:
    """Tender prices for `steps` 5-minute steps from `start`; ValueError if the data end first."""
    rtm = _lmp_by_start(default_prices("RTM"))
    dam = _lmp_by_start(default_prices("DAM"))
    n = steps
    rt_lmp, da_lmp = np.empty(n), np.empty(n)
    rt_buy, rt_sell, da_buy, da_sell = (np.empty(n) for _ in range(4))
    for k in range(n):
        t = int(start + k * STEP_S)
        hour = t - t % 3600
        if hour not in dam:
            raise ValueError(f"no day-ahead price for the hour starting {local_time(hour, LOCAL_TZ)} "
                             "(bundled data: March 2024; the optimizer looks a day past the simulated window)")
        da_lmp[k] = dam[hour]
        rt_lmp[k] = rtm.get(t, dam[hour])
        rt_buy[k], rt_sell[k] = tender_prices(rt_lmp[k], t, config)
        da_buy[k], da_sell[k] = tender_prices(da_lmp[k], t, config)
    return PriceSeries(start, rt_buy, rt_sell, da_buy, da_sell, rt_lmp, da_lmp)


def base_load_kw(load: SiteModel, start: float, steps: int) -> FloatArray:
    """A home's base load, mean kW over each 5-minute step (the UCI minutes)."""
    minutes = start + np.arange(steps * 5) * 60.0
    out: FloatArray = np.array([load.base_w(t) for t in minutes]).reshape(steps, 5).mean(axis=1) / 1000.0
    return out


def weather_series(start: float, steps: int, step_s: float = STEP_S) -> tuple[FloatArray, FloatArray]:
    """(outdoor C, GHI W/m2) per step; the same station for the whole fleet."""
    return load_weather().series(start, steps, step_s)

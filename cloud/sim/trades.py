"""A simulated home's position and its forward transactions, through the real tender book.

Position = subscription + forward buys - forward sells (cloud.market.transactions). Day-ahead trades
are accepted on hourly DAM tenders, real-time trades on the 5-minute tender of the step, each
built by cloud.market.tenders and accepted by cloud.market.transactions.TenderBook (expiry, party and
quantity checks included), so the shadow bill prices exactly what was transacted.
"""

from __future__ import annotations

import numpy as np
import tendril_wire as wire

from cloud.market.tenders import TenderConfig, build_tenders
from cloud.market.transactions import TenderBook, Transaction
from cloud.optimizer.devices import FloatArray
from cloud.optimizer.schedule import MIN_TRADE_KWH, SiteSchedule
from cloud.sim.inputs import STEP_S, PriceSeries
from cloud.sources.prices import PriceInterval

FEEDER = "feeder-a"


class TradeDesk:
    def __init__(self, start: float, subscriptions: dict[str, FloatArray], prices: PriceSeries,
                 config: TenderConfig) -> None:
        """`subscriptions`: per site, subscribed kWh per UTC hour from `start` (covering the run
        and its lookahead)."""
        self.start = start
        self.prices = prices
        self.config = config
        self.book = TenderBook()
        self.transactions: dict[str, list[Transaction]] = {site: [] for site in subscriptions}
        self._position = {site: np.repeat(np.asarray(sub, float) / 12.0, 12)[: prices.steps]
                          for site, sub in subscriptions.items()}
        for site, pos in self._position.items():
            if len(pos) < prices.steps:
                raise ValueError(f"subscription of {site} covers {len(pos)} steps, need {prices.steps}")

    def position_kwh(self, site: str, k: int, n: int) -> FloatArray:
        out: FloatArray = self._position[site][k:k + n].copy()
        return out

    def _accept(self, site: str, interval: PriceInterval, market: str, now: float, expires_s: float,
                buy_kwh: float, sell_kwh: float) -> Transaction | None:
        side, qty = (wire.SIDE_BUY, buy_kwh) if buy_kwh >= sell_kwh else (wire.SIDE_SELL, sell_kwh)
        if qty < MIN_TRADE_KWH:
            return None
        tenders = build_tenders(site, FEEDER, [interval], market, now, self.config, expires_s)
        tender = next(t for t in tenders if t["side"] == side)
        self.book.offer(tender)
        tx = self.book.accept(tender["tenderId"], site, round(qty, 6), now + 1)
        self.transactions[site].append(tx)
        return tx

    def day_ahead(self, site: str, k0: int, day_end: int, sched: SiteSchedule) -> None:
        """Accept the day-ahead plan's hourly trades for the hours in steps [k0, day_end)."""
        now = self.start + k0 * STEP_S - 3600  # the day-ahead market closes before the day
        for h in range(sched.steps):
            k = k0 + h * 12
            if k >= day_end:
                break
            t = int(self.start + k * STEP_S)
            interval = PriceInterval(t, 3600, float(self.prices.da_lmp[k]), "DAM")
            tx = self._accept(site, interval, "DAM", now, 2 * 86400, float(sched.buy_kwh[h]),
                              float(sched.sell_kwh[h]))
            if tx is not None:
                self._position[site][k:k + 12] += tx.signed_kwh / 12.0

    def real_time(self, site: str, k: int, buy_kwh: float, sell_kwh: float) -> None:
        """Accept the real-time plan's trade for step k on that step's tender."""
        t = int(self.start + k * STEP_S)
        interval = PriceInterval(t, STEP_S, float(self.prices.rt_lmp[k]), "RTM")
        tx = self._accept(site, interval, "RTM", t - 10, STEP_S, buy_kwh, sell_kwh)
        if tx is not None:
            self._position[site][k] += tx.signed_kwh

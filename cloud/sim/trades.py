"""The market side of a simulation: tenders offered to each home and transactions accepted, as
`tendril market` does it, without the broker and the ledger.

Tenders are built by cloud.market.tenders.build_tenders (day-ahead hourly, real-time per 5-minute
step, on the step's LMP with the feeder's adders); a home's agent answers with wire TRANSACTION
messages; cloud.market.transactions.TenderBook accepts them (expiry, party and quantity checks
included) under the agent's own transaction id, and the answer is the wire CONFIRM the market
service would publish. The accepted transactions are what the shadow bill prices.
"""

from __future__ import annotations

from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.market.core import confirm_ok, confirm_refused
from tendril_transactive.cloud.market.tenders import TenderConfig, build_tenders
from tendril_transactive.cloud.market.transactions import TenderBook, Transaction, TransactionRefused
from tendril_transactive.cloud.sim.inputs import STEP_S, PriceSeries
from tendril_transactive.cloud.sources.prices import PriceInterval

FEEDER = "feeder-a"
RT_LEAD_S = 10  # real-time tenders go out this long before their interval (the market's --rt-lead-s)
DA_LEAD_S = 3600  # day-ahead tenders are built this long before the midnight they are published at


class SimMarket:
    def __init__(self, sites: list[str], start: float, prices: PriceSeries, config: TenderConfig) -> None:
        self.start = start
        self.prices = prices
        self.config = config
        self.book = TenderBook()
        self.transactions: dict[str, list[Transaction]] = {site: [] for site in sites}
        self.refused: dict[str, int] = {}  # by reason

    def _offer(self, site: str, intervals: list[PriceInterval], market: str, now: float,
               expires_s: float) -> list[dict[str, Any]]:
        tenders = build_tenders(site, FEEDER, intervals, market, now, self.config, expires_s)
        for t in tenders:
            self.book.offer(t)
        return tenders

    def real_time(self, site: str, k: int) -> list[dict[str, Any]]:
        """The BUY and SELL tenders of step k, built RT_LEAD_S before it starts."""
        t = int(self.start + k * STEP_S)
        interval = PriceInterval(t, STEP_S, float(self.prices.rt_lmp[k]), "RTM")
        return self._offer(site, [interval], "RTM", t - RT_LEAD_S, STEP_S)

    def day_ahead(self, site: str, hours: list[int], now: float) -> list[dict[str, Any]]:
        """Hourly tenders built at `now` for the hours starting at these times (unix s), priced at
        the hour's DAM LMP; each stays open until its hour ends."""
        if not hours:
            return []
        intervals = []
        for h in hours:
            k = round((h - self.start) / STEP_S)
            intervals.append(PriceInterval(h, 3600, float(self.prices.da_lmp[k]), "DAM"))
        return self._offer(site, intervals, "DAM", now, 3 * 86400)

    def transact(self, site: str, msg: dict[str, Any], now: float) -> dict[str, Any]:
        """A TRANSACTION from `site`'s agent -> the CONFIRM (accepted, or refused with a reason)."""
        wire.validate(wire.TRANSACTION, msg)
        try:
            tx = self.book.accept(msg["tenderId"], site, float(msg["quantity"]), now,
                                  transaction_id=msg["transactionId"], party_id=msg["partyId"])
        except TransactionRefused as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            return confirm_refused(msg["transactionId"], msg["tenderId"], exc.reason, exc.detail)
        self.transactions[site].append(tx)
        return confirm_ok(tx)

"""Each demo site's market outcome, read back from the ledger the market wrote.

Pure over ledger records: transactions accepted and refused, forward and ex-post energy, and the
window's shadow bill against the OAT (energy charges only; the monthly fixed charge is the same on
both sides and left out). Per settled 5-minute interval:

    OAT          = metered kWh x the tariff's rate in force
    subscription = subscribed kWh x the same rate
    shadow       = subscription + forward buys - forward sells (at their tender prices)
                   + ex-post deviation x the interval's real-time tender price
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.billing.tariff import Tariff
from tendril_transactive.cloud.market.settle import KIND_SETTLEMENT
from tendril_transactive.cloud.market.transactions import KIND_REFUSAL, KIND_TRANSACTION


@dataclass(frozen=True)
class SiteMarket:
    site: str
    accepted: int
    refused: int
    forward_buy_kwh: float
    forward_sell_kwh: float
    forward_usd: float
    intervals_settled: int
    metered_kwh: float
    ex_post_kwh: float  # metered - position, summed (+ bought ex post, - sold)
    ex_post_usd: float
    subscription_usd: float
    oat_usd: float

    @property
    def shadow_usd(self) -> float:
        return self.subscription_usd + self.forward_usd + self.ex_post_usd

    @property
    def rebate_usd(self) -> float:
        return max(0.0, self.oat_usd - self.shadow_usd)


def site_market(site: str, records: Iterable[tuple[str, dict[str, Any]]], tariff: Tariff,
                subscription_kwh_by_hour: tuple[float, ...], window: tuple[float, float]) -> SiteMarket:
    """`records`: the site's (kind, body) ledger records in ledger order; only transactions and
    settlements for intervals starting inside `window` (the run) count: day-ahead trades reach
    into the next day."""
    lo, hi = window
    accepted = refused = settled = 0
    buy = sell = fwd_usd = metered = ex_kwh = ex_usd = sub_usd = oat_usd = 0.0
    for kind, body in records:
        if kind == KIND_TRANSACTION:
            if not lo <= float(body["interval_start"]) < hi:
                continue
            accepted += 1
            qty, price = float(body["quantity_kwh"]), float(body["price_usd_per_kwh"])
            if body["side"] == wire.SIDE_BUY:
                buy += qty
                fwd_usd += qty * price
            else:
                sell += qty
                fwd_usd -= qty * price
        elif kind == KIND_REFUSAL:
            refused += 1
        elif kind == KIND_SETTLEMENT and "intervalStart" in body and lo <= float(body["intervalStart"]) < hi:
            settled += 1
            start = float(body["intervalStart"])
            rate = float(tariff.period_at(start)[1].usd_per_kwh)
            hour = tariff.local(start).hour
            sub_kwh = (subscription_kwh_by_hour[hour] / 12.0) if subscription_kwh_by_hour else 0.0
            metered += float(body["meteredKwh"])
            ex_kwh += float(body["deviationKwh"])
            ex_usd += float(body["amountUsd"])
            sub_usd += sub_kwh * rate
            oat_usd += float(body["meteredKwh"]) * rate
    return SiteMarket(site, accepted, refused, round(buy, 4), round(sell, 4), round(fwd_usd, 4), settled,
                      round(metered, 4), round(ex_kwh, 4), round(ex_usd, 4), round(sub_usd, 4), round(oat_usd, 4))


def fleet_market(records: Iterable[tuple[str, str, dict[str, Any]]], tariff: Tariff,
                 subscriptions: Mapping[str, tuple[float, ...]], window: tuple[float, float]) -> list[SiteMarket]:
    """`records`: (kind, site, body) for the whole ledger; one SiteMarket per site in `subscriptions`."""
    by_site: dict[str, list[tuple[str, dict[str, Any]]]] = {site: [] for site in subscriptions}
    for kind, site, body in records:
        if site in by_site:
            by_site[site].append((kind, body))
    return [site_market(site, recs, tariff, subscriptions[site], window) for site, recs in sorted(by_site.items())]

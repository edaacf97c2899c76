"""Ex-post settlement of one 5-minute interval of one site, from its meter's energy register.

    metered  = E(end) - E(start), E the meter's cumulative energy_wh linearly interpolated
               between the readings around each instant, summed over the site's meters
    position = subscription (kWh in the local clock hour / 12) + forward buys - forward sells
               (an hourly transaction counts 1/12 in each of its 5-minute intervals)
    deviation = metered - position, bought at that interval's real-time BUY tender price when
               > 0, sold at its SELL price when < 0

Pure: readings, transactions and tenders are passed in. An interval is settled only when every
meter of the site has a reading at or before its start and one at or after its end; otherwise
it waits (late telemetry) — never a guessed zero. Deliberately independent of cloud.billing
(billing imports the market, not the other way round).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import SiteRecord
from tendril_transactive.cloud.market.schedule import HOUR_S, RT_STEP_S
from tendril_transactive.cloud.market.tenders import local_hour
from tendril_transactive.cloud.market.transactions import Transaction

KIND_SETTLEMENT = "settlement"
KWH_DECIMALS = 6
USD_DECIMALS = 6

Readings = Sequence[tuple[float, float]]  # (unix s, energy_wh), time order


def register_at(readings: Readings, t: float) -> float | None:
    """The energy register (Wh) at `t`, interpolated; None unless readings lie on both sides."""
    times = [ts for ts, _ in readings]
    i = bisect.bisect_right(times, t)  # readings[:i] are at or before t
    if i == 0:
        return None
    t0, e0 = readings[i - 1]
    if t0 == t:
        return e0
    if i == len(readings):
        return None
    t1, e1 = readings[i]
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0)


def metered_kwh(readings_by_device: Mapping[str, Readings], start: float, end: float) -> float | None:
    """kWh through all of the site's meters in [start, end); None while any meter lacks data."""
    if not readings_by_device:
        return None
    total = 0.0
    for readings in readings_by_device.values():
        a, b = register_at(readings, start), register_at(readings, end)
        if a is None or b is None:
            return None
        # A register never runs backwards (the firmware persists it); a drop is a replaced meter,
        # whose energy in this interval is unknown.
        if b < a:
            return None
        total += (b - a) / 1000.0
    return total


def subscription_kwh(site: SiteRecord, start: int, duration_s: int = RT_STEP_S) -> float:
    """The site's subscribed kWh in [start, start+duration): its hourly quantity, pro rata."""
    if not site.subscription_kwh_by_hour:
        return 0.0
    return site.subscription_kwh_by_hour[local_hour(start)] * duration_s / HOUR_S


def forward_kwh(transactions: Iterable[Transaction], start: int, end: int) -> float:
    """Net forward kWh (buys +, sells -) falling into [start, end), by overlap."""
    total = 0.0
    for tx in transactions:
        lo, hi = max(tx.interval_start, start), min(tx.interval_start + tx.duration_s, end)
        if lo < hi:
            total += tx.signed_kwh * (hi - lo) / tx.duration_s
    return total


def settlement_body(site: SiteRecord, start: int, metered: float, transactions: Iterable[Transaction],
                    rt_tenders: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The ledger body of one settled interval. `rt_tenders`: the interval's RTM tenders by side."""
    end = start + RT_STEP_S
    position = subscription_kwh(site, start) + forward_kwh(transactions, start, end)
    deviation = round(metered - position, KWH_DECIMALS)
    side = wire.SIDE_BUY if deviation > 0 else wire.SIDE_SELL
    tender = rt_tenders[side]
    price = float(tender["price"])
    return {"site": site.site, "intervalStart": start, "durationS": RT_STEP_S,
            "meteredKwh": round(metered, KWH_DECIMALS), "positionKwh": round(position, KWH_DECIMALS),
            "deviationKwh": deviation, "side": side if deviation else "", "priceUsdPerKwh": price,
            "amountUsd": round(deviation * price, USD_DECIMALS), "tenderId": tender["tenderId"]}

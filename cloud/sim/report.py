"""What a simulation run cost and how the houses fared: the two columns `tendril simulate` prints.

* cost at tender prices: each home's net metered energy per 5-minute step at that step's
  real-time tender (buy price when importing, sell price when exporting);
* shadow bill (RATES): subscription at the OAT + forward buys - forward sells + ex-post
  settlement of metered - position at the real-time tender price (cloud.billing.settlement). The
  subscription is each home's own baseline usage shaped by cloud.billing.subscription, so the baseline's
  shadow bill is close to its OAT bill by construction. The fixed monthly charge is left out of
  both (it is the same with or without the optimizer);
* peak kW (5-minute demand), comfort (degree-hours outside the home's band), EV energy the car
  left without, pool pump hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tendril_transactive.cloud.billing.bill import tou_lines
from tendril_transactive.cloud.billing.settlement import price_grid, settle
from tendril_transactive.cloud.billing.subscription import Subscription, subscribe
from tendril_transactive.cloud.billing.tariff import Tariff
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.market.transactions import Transaction, position_series
from tendril_transactive.cloud.sim.inputs import STEP_S
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.sources.prices import default_prices

FIXED = "fixed monthly charge"


@dataclass(frozen=True)
class RunTotals:
    label: str
    energy_kwh: float
    cost_tender_usd: float
    shadow_bill_usd: float
    oat_bill_usd: float
    peak_site_kw: float  # mean over homes of each home's highest 5-minute demand
    fleet_peak_kw: float  # highest 5-minute demand of all homes together
    comfort_ch: float  # degree-hours outside the comfort band, all homes
    comfort_hours_pct: float  # share of home-hours with the house outside its band
    ev_short_kwh: float
    pump_h: float
    pump_need_h: float


def metered(grid_kwh: np.ndarray, start: float) -> list[UsageInterval]:
    return [UsageInterval(int(start) + k * STEP_S, STEP_S, float(v)) for k, v in enumerate(grid_kwh)]


def subscriptions(homes: Sequence[str], grid_kwh: np.ndarray, start: float, tariff: Tariff) -> list[Subscription]:
    """Each home's subscription, shaped from its own (baseline) usage."""
    return [subscribe(site, metered(grid_kwh[i], start), tariff) for i, site in enumerate(homes)]


def _energy_lines(tariff: Tariff, usage: list[UsageInterval], start: int, end: int) -> float:
    return float(sum(line.amount_usd for line in tou_lines(tariff, usage, start, end, "x") if line.label != FIXED))


def shadow_bill(usage: list[UsageInterval], sub: Subscription, trades: Sequence[Transaction], start: int,
                end: int, config: TenderConfig) -> float:
    sub_q = sub.quantities(start, end)
    grid = price_grid(start, end, default_prices("RTM"), default_prices("DAM"))
    settled = settle(usage, position_series(sub_q, [tx for tx in trades if start <= tx.interval_start < end]),
                     grid, config)
    forward = sum(tx.cost_usd for tx in trades if start <= tx.interval_start < end)
    return _energy_lines(sub.tariff, sub_q, start, end) + forward + sum(s.amount_usd for s in settled)


def totals(label: str, grid_kwh: np.ndarray, temp_c: np.ndarray, bands: Sequence[tuple[float, float] | None],
           rt_buy: np.ndarray, rt_sell: np.ndarray, start: float, subs: Sequence[Subscription],
           trades: Sequence[Sequence[Transaction]], ev_short: Sequence[float], pump_h: Sequence[float],
           pump_need_h: float, config: TenderConfig) -> RunTotals:
    steps = grid_kwh.shape[1]
    s, e = int(start), int(start) + steps * STEP_S
    cost = float(np.where(grid_kwh > 0, grid_kwh * rt_buy[:steps], grid_kwh * rt_sell[:steps]).sum())
    kw = grid_kwh * 3600 / STEP_S
    shadow = oat = 0.0
    for i, sub in enumerate(subs):
        usage = metered(grid_kwh[i], start)
        shadow += shadow_bill(usage, sub, trades[i], s, e, config)
        oat += _energy_lines(sub.tariff, usage, s, e)
    gap_ch, outside_steps, home_steps = 0.0, 0, 0
    for i, band in enumerate(bands):
        if band is None:
            continue
        gap = np.clip(band[0] - temp_c[i], 0, None) + np.clip(temp_c[i] - band[1], 0, None)
        gap_ch += float(gap.sum() * STEP_S / 3600)
        outside_steps += int((gap > 1e-9).sum())
        home_steps += steps
    return RunTotals(label, float(grid_kwh.sum()), cost, shadow, oat, float(kw.max(axis=1).mean()),
                     float(kw.sum(axis=0).max()), gap_ch, 100.0 * outside_steps / max(1, home_steps),
                     float(sum(ev_short)), float(sum(pump_h)), pump_need_h)


def render(base: RunTotals, opt: RunTotals, notes: Sequence[str]) -> str:
    rows = [
        ("net energy (kWh)", "{:,.1f}", base.energy_kwh, opt.energy_kwh),
        ("cost at tender prices ($)", "{:,.2f}", base.cost_tender_usd, opt.cost_tender_usd),
        ("shadow bill, energy ($)", "{:,.2f}", base.shadow_bill_usd, opt.shadow_bill_usd),
        ("OAT bill, energy ($)", "{:,.2f}", base.oat_bill_usd, opt.oat_bill_usd),
        ("peak kW per home (mean)", "{:.2f}", base.peak_site_kw, opt.peak_site_kw),
        ("fleet peak kW", "{:.1f}", base.fleet_peak_kw, opt.fleet_peak_kw),
        ("comfort violation (deg-h)", "{:.2f}", base.comfort_ch, opt.comfort_ch),
        ("home-hours outside band (%)", "{:.2f}", base.comfort_hours_pct, opt.comfort_hours_pct),
        ("EV energy short at departure (kWh)", "{:.2f}", base.ev_short_kwh, opt.ev_short_kwh),
        ("pool pump hours (needed)", "{:.1f}", base.pump_h, opt.pump_h),
    ]
    out = [f"{'':36}{'baseline':>14}{'optimized':>14}{'change':>10}"]
    for name, fmt, b, o in rows:
        change = f"{100 * (o - b) / abs(b):+.1f}%" if abs(b) > 1e-9 else ""
        out.append(f"{name:36}{fmt.format(b):>14}{fmt.format(o):>14}{change:>10}")
    out[-1] += f"   ({base.pump_need_h:.1f} needed)"
    out.extend(notes)
    return "\n".join(out)

"""The monthly bill: OAT bill, shadow bill, transactive net credit and rebate.

    OAT bill     = metered kWh by TOU period x OAT price + fixed charge
    shadow bill  = subscription at OAT (same formula on the subscribed kWh, fixed charge included)
                   + forward buys - forward sells + ex-post buys - ex-post sells
    net credit   = OAT bill - shadow bill
    rebate       = max(0, net credit)      (no participant pays more than the OAT)

Billing determinants are kWh per (season, period) to the Wh, each line rounded to the cent
(half up), as a utility bill prints them; totals are sums of printed lines, so the bill adds
up. If metered usage equals the subscription and nothing was traded, every subscription line
equals its OAT line and the shadow bill equals the OAT bill exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from tendril_transactive.cloud.billing import energy_grid
from tendril_transactive.cloud.billing.settlement import SettledInterval, price_grid, settle, totals
from tendril_transactive.cloud.billing.subscription import Subscription
from tendril_transactive.cloud.billing.tariff import Tariff
from tendril_transactive.cloud.market.tenders import TenderConfig
from tendril_transactive.cloud.market.transactions import Transaction, position_series
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.sources.prices import MARKET_LABELS, PriceInterval

CENT = Decimal("0.01")
WH = Decimal("0.001")
HOUR = 3600


def _quantize(amount: float | Decimal, step: Decimal) -> Decimal:
    value = amount if isinstance(amount, Decimal) else Decimal(repr(float(amount)))
    rounded = value.quantize(step, rounding=ROUND_HALF_UP)
    return rounded.copy_abs() if rounded.is_zero() else rounded  # never print "-0.00"


def cents(amount: float | Decimal) -> Decimal:
    return _quantize(amount, CENT)


def kwh(amount: float) -> Decimal:
    return _quantize(amount, WH)


def _neg(amount: Decimal) -> Decimal:
    return Decimal("0.00") - amount


@dataclass(frozen=True)
class BillLine:
    section: str  # oat | subscription | transactive | summary
    label: str
    amount_usd: Decimal
    kwh: Decimal | None = None
    rate_usd_per_kwh: Decimal | None = None

    def as_dict(self) -> dict[str, str]:
        return {"section": self.section, "label": self.label,
                "kwh": "" if self.kwh is None else str(self.kwh),
                "rate_usd_per_kwh": "" if self.rate_usd_per_kwh is None else str(self.rate_usd_per_kwh),
                "amount_usd": str(self.amount_usd)}


def tou_lines(tariff: Tariff, usage: Iterable[UsageInterval], start: int, end: int,
              section: str) -> list[BillLine]:
    """Energy charge per (season, period) for usage in [start, end), plus the fixed charge."""
    by_period: dict[tuple[str, str], float] = {}
    rates: dict[tuple[str, str], Decimal] = {}
    for piece in energy_grid.split(energy_grid.clip(usage, start, end), HOUR):
        season, period = tariff.period_at(piece.start)
        key = (season.name, period.name)
        by_period[key] = by_period.get(key, 0.0) + piece.kwh
        rates[key] = period.usd_per_kwh
    lines = []
    for key in sorted(by_period, key=lambda k: (k[0], -rates[k], k[1])):
        energy = kwh(by_period[key])
        lines.append(BillLine(section, f"{key[0]} {key[1].replace('_', '-')}",
                              cents(energy * rates[key]), energy, rates[key]))
    lines.append(BillLine(section, "fixed monthly charge", cents(tariff.fixed_monthly_usd)))
    return lines


def _traded(label: str, amount: Decimal, energy: Decimal) -> BillLine:
    """A transactive line; its rate is the average price paid (received), amount / kWh."""
    rate = None if energy.is_zero() else (amount / energy).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    return BillLine("transactive", label, amount, energy, rate)


def _sum(lines: Iterable[BillLine]) -> Decimal:
    return sum((line.amount_usd for line in lines), Decimal("0.00"))


@dataclass(frozen=True)
class PriceUse:
    """How much of a month's ex-post settlement one market's prices priced (0 intervals: none)."""

    market: str
    node: str
    intervals: int
    seconds: int
    steps_s: frozenset[int]  # the durations of those intervals (gaps clip a cell short)

    @property
    def source(self) -> str:
        node = f" {self.node}" if self.node else ""
        return f"CAISO{node} {MARKET_LABELS.get(self.market, self.market)}"

    def amount(self) -> str:
        if self.steps_s == {HOUR}:
            return f"{self.intervals:,} hours"
        if len(self.steps_s) == 1:
            return f"{self.intervals:,} intervals of {next(iter(self.steps_s)) // 60} min"
        return f"{self.intervals:,} intervals, {self.seconds / HOUR:,.1f} h"

    def as_dict(self) -> dict[str, object]:
        return {"market": self.market, "node": self.node, "intervals": self.intervals,
                "hours": round(self.seconds / HOUR, 3)}


def price_uses(settled: Sequence[SettledInterval],
               price_layers: Sequence[Sequence[PriceInterval]]) -> list[PriceUse]:
    """One PriceUse per market of the layers given, finest first, counting the settled cells it priced."""
    nodes: dict[str, str] = {}  # market -> node, in layer order
    for layer in price_layers:
        for p in layer:
            nodes.setdefault(p.market, p.node)
    for s in settled:
        if s.market:
            nodes.setdefault(s.market, "")
    uses = []
    for market, node in nodes.items():
        cells = [s.duration_s for s in settled if s.market == market]
        uses.append(PriceUse(market, node, len(cells), sum(cells), frozenset(cells)))
    return uses


def priced_at(uses: Sequence[PriceUse], month: str, unpriced_s: int) -> str:
    """'ex-post priced at: CAISO SP-15 day-ahead hourly (743 hours); no real-time 5-minute prices for
    2025-03': what the ex-post lines of the bill were priced at, the sources that priced none named too."""
    used = [u for u in uses if u.intervals]
    parts = [f"{u.source} ({u.amount()})" if i == 0 else
             f"{u.source} in the gaps of the {MARKET_LABELS.get(used[0].market, used[0].market)} prices "
             f"({u.amount()})" for i, u in enumerate(used)]
    parts += [f"no {MARKET_LABELS.get(u.market, u.market)} prices for {month}" for u in uses if not u.intervals]
    if unpriced_s:
        parts.append(f"{unpriced_s / HOUR:,.1f} h without a price (nothing to settle in them)")
    return "ex-post priced at: " + "; ".join(parts or [f"no prices for {month}"])


@dataclass
class MonthlyBill:
    site: str
    month: str  # YYYY-MM
    tariff_id: str
    start: int
    end: int
    lines: list[BillLine]
    oat_usd: Decimal
    subscription_usd: Decimal
    shadow_usd: Decimal
    net_credit_usd: Decimal
    rebate_usd: Decimal
    metered_kwh: Decimal
    subscribed_kwh: Decimal
    settled: list[SettledInterval] = field(default_factory=list, repr=False)
    price_markets: dict[str, int] = field(default_factory=dict)
    price_uses: list[PriceUse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # where the data came from, data warnings

    @property
    def priced_at(self) -> str:
        unpriced = sum(s.duration_s for s in self.settled if not s.market)
        return priced_at(self.price_uses, self.month, unpriced)

    @property
    def pays_usd(self) -> Decimal:
        """What the customer pays in the end: the OAT bill less the rebate."""
        return self.oat_usd - self.rebate_usd

    def summary(self) -> dict[str, object]:
        return {"site": self.site, "month": self.month, "tariff": self.tariff_id,
                "window_utc": [self.start, self.end],
                "metered_kwh": str(self.metered_kwh), "subscribed_kwh": str(self.subscribed_kwh),
                "oat_bill_usd": str(self.oat_usd), "subscription_usd": str(self.subscription_usd),
                "shadow_bill_usd": str(self.shadow_usd), "net_credit_usd": str(self.net_credit_usd),
                "rebate_usd": str(self.rebate_usd), "customer_pays_usd": str(self.pays_usd),
                "settlement_intervals_by_market": dict(self.price_markets),
                "ex_post_prices": [u.as_dict() for u in self.price_uses],
                "ex_post_priced_at": self.priced_at,
                "notes": list(self.notes),
                "lines": [line.as_dict() for line in self.lines]}

    def render(self) -> str:
        out = [f"Tendril bill  site {self.site}  month {self.month}  tariff {self.tariff_id}",
               f"{'':2}{'line':<44}{'kWh':>11}{'$/kWh':>10}{'amount $':>11}"]
        section = ""
        for line in self.lines:
            if line.section != section:
                section = line.section
                out.append(f"[{section}]")
            qty = "" if line.kwh is None else f"{line.kwh:,.3f}"
            rate = "" if line.rate_usd_per_kwh is None else f"{line.rate_usd_per_kwh:.4f}"
            out.append(f"{'':2}{line.label:<44}{qty:>11}{rate:>10}{line.amount_usd:>11,.2f}")
        out.append(self.priced_at)
        return "\n".join(out)


def monthly_bill(site: str, year: int, month: int, tariff: Tariff, metered: Sequence[UsageInterval],
                 subscription: Subscription, transactions: Iterable[Transaction],
                 price_layers: Sequence[Sequence[PriceInterval]], config: TenderConfig,
                 feeder_load_ratio: float = 0.0) -> MonthlyBill:
    """Bill one calendar month (local time of the tariff); `price_layers` finest first (RTM, DAM)."""
    start, end = tariff.month_window(year, month)
    sub = subscription.quantities(start, end)
    trades = [tx for tx in transactions if tx.site == site and start <= tx.interval_start < end]
    oat = tou_lines(tariff, metered, start, end, "oat")
    oat_total = _sum(oat)
    subscribed = tou_lines(tariff, sub, start, end, "subscription")
    sub_total = _sum(subscribed)

    settled = settle(energy_grid.clip(metered, start, end), position_series(sub, trades),
                     price_grid(start, end, *price_layers, tz=tariff.tz), config, feeder_load_ratio, tariff.tz)
    expost = totals(settled)
    buys = [tx for tx in trades if tx.signed_kwh > 0]
    sells = [tx for tx in trades if tx.signed_kwh < 0]
    transactive = [
        _traded("forward buys (accepted tenders)", cents(sum(tx.cost_usd for tx in buys)),
                kwh(sum(tx.quantity_kwh for tx in buys))),
        _traded("forward sells (accepted tenders)", _neg(cents(-sum(tx.cost_usd for tx in sells))),
                kwh(-sum(tx.quantity_kwh for tx in sells))),
        _traded("ex-post buys (metered above position)", cents(expost.bought_usd), kwh(expost.bought_kwh)),
        _traded("ex-post sells (metered below position)", _neg(cents(expost.sold_usd)),
                kwh(-expost.sold_kwh)),
    ]
    shadow = sub_total + _sum(transactive)
    credit = oat_total - shadow
    rebate = max(Decimal("0.00"), credit)
    summary = [
        BillLine("summary", "OAT bill", oat_total),
        BillLine("summary", "subscription at OAT", sub_total),
        BillLine("summary", "shadow bill", shadow),
        BillLine("summary", "transactive net credit (OAT - shadow)", credit),
        BillLine("summary", "rebate max(0, OAT - shadow), credited", _neg(rebate)),
        BillLine("summary", "customer pays", oat_total - rebate),
    ]
    return MonthlyBill(
        site=site, month=f"{year:04d}-{month:02d}", tariff_id=tariff.id, start=start, end=end,
        lines=[*oat, *subscribed, *transactive, *summary], oat_usd=oat_total, subscription_usd=sub_total,
        shadow_usd=shadow, net_credit_usd=credit, rebate_usd=rebate,
        metered_kwh=kwh(energy_grid.total(energy_grid.clip(metered, start, end))),
        subscribed_kwh=kwh(energy_grid.total(sub)), settled=settled, price_markets=expost.markets,
        price_uses=price_uses(settled, price_layers))

"""What a demo run achieved, computed from what was stored, not from what was intended.

Pure: takes stored readings and tender prices, returns numbers. The demo prints them.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tendril_transactive.cloud.demo.ledger_summary import SiteMarket


@dataclass(frozen=True)
class PricePoint:
    """A buy tender: the price ($/kWh) from `start` (unix s) for `duration_s`."""

    start: float
    duration_s: int
    buy_usd_per_kwh: float


@dataclass(frozen=True)
class SiteResult:
    site: str
    meter_readings: int
    energy_kwh: float
    cost_usd: float
    relay_on_hours: float
    relay_switches: int


@dataclass
class DemoSummary:
    sim_hours: float
    wall_seconds: float
    messages_ingested: int
    messages_rejected: int
    tenders_issued: int
    commands_sent: int
    commands_acked: int
    commands_refused: int
    relay_switches: int
    firmware_nodes: int
    sites: list[SiteResult] = field(default_factory=list)
    market: list[SiteMarket] = field(default_factory=list)  # read from the ledger
    ledger_ok: bool | None = None  # the ledger's hash chain verified at the end of the run

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DemoSummary:
        """The summary.json of a run back as a DemoSummary (computed bill figures are recomputed)."""
        fields = {f.name for f in dataclasses.fields(SiteMarket)}
        return cls(**{**raw, "sites": [SiteResult(**s) for s in raw.get("sites", [])],
                      "market": [SiteMarket(**{k: v for k, v in m.items() if k in fields})
                                 for m in raw.get("market", [])]})

    def to_json(self) -> str:
        body = asdict(self)
        for entry, site in zip(body["market"], self.market, strict=True):
            entry["shadow_usd"] = round(site.shadow_usd, 4)
            entry["rebate_usd"] = round(site.rebate_usd, 4)
        return json.dumps(body, indent=2)

    def render(self) -> str:
        lines = [
            f"simulated            {self.sim_hours:.1f} h in {self.wall_seconds:.1f} s wall "
            f"({self.sim_hours * 3600 / max(self.wall_seconds, 1e-9):.0f}x real time)",
            f"firmware nodes       {self.firmware_nodes} (MicroPython unix port)",
            f"messages ingested    {self.messages_ingested} ({self.messages_rejected} rejected)",
            f"tenders issued       {self.tenders_issued}",
            f"commands sent        {self.commands_sent}",
            f"commands acked       {self.commands_acked} ({self.commands_refused} refused)",
            f"relay switches       {self.relay_switches}",
            "",
            f"{'site':<10}{'readings':>10}{'energy kWh':>12}{'cost $':>10}{'$/kWh':>8}"
            f"{'pump on h':>12}{'switches':>10}",
        ]
        for s in self.sites:
            per_kwh = s.cost_usd / s.energy_kwh if s.energy_kwh else 0.0
            lines.append(
                f"{s.site:<10}{s.meter_readings:>10}{s.energy_kwh:>12.2f}{s.cost_usd:>10.2f}{per_kwh:>8.3f}"
                f"{s.relay_on_hours:>12.2f}{s.relay_switches:>10}"
            )
        if self.market:
            lines += self._market_lines()
        return "\n".join(lines)

    def _market_lines(self) -> list[str]:
        accepted = sum(m.accepted for m in self.market)
        refused = sum(m.refused for m in self.market)
        verified = {True: "verified", False: "FAILED verification", None: "not verified"}[self.ledger_ok]
        lines = [
            "",
            f"ledger               {verified}; transactions for the run's intervals {accepted} accepted, "
            f"{refused} refused",
            "",
            f"{'site':<10}{'fwd buy kWh':>12}{'fwd sell':>10}{'ex-post':>9}{'settled':>9}"
            f"{'OAT $':>9}{'shadow $':>10}{'rebate $':>10}",
        ]
        for m in self.market:
            lines.append(f"{m.site:<10}{m.forward_buy_kwh:>12.2f}{m.forward_sell_kwh:>10.2f}{m.ex_post_kwh:>9.2f}"
                         f"{m.intervals_settled:>9}{m.oat_usd:>9.2f}{m.shadow_usd:>10.2f}{m.rebate_usd:>10.2f}")
        lines.append("(energy charges over the settled 5-minute intervals; the monthly fixed charge is on both sides)")
        return lines


class _PriceLookup:
    """Bisect over tender starts, built once per price list rather than once per reading."""

    def __init__(self, prices: Sequence[PricePoint]) -> None:
        if not prices:
            raise ValueError("no tender prices to price energy with")
        self._prices = prices
        self._starts = [p.start for p in prices]

    def at(self, t: float) -> float:
        i = bisect.bisect_right(self._starts, t) - 1
        return self._prices[max(i, 0)].buy_usd_per_kwh


def price_at(prices: Sequence[PricePoint], t: float) -> float:
    """The buy price in force at t; outside the tendered range the nearest tender's price."""
    return _PriceLookup(prices).at(t)


def energy_cost(readings: Sequence[tuple[float, float]], prices: Sequence[PricePoint]) -> tuple[float, float]:
    """(kWh, $) from cumulative meter readings (ts, energy_wh), each step priced at its start.

    Readings are sorted by time first: store-and-forward replays may arrive late.
    """
    ordered = sorted(readings)
    if len(ordered) < 2:
        return 0.0, 0.0
    lookup = _PriceLookup(prices)
    kwh = 0.0
    cost = 0.0
    for (t0, e0), (_t1, e1) in itertools.pairwise(ordered):
        step_kwh = max(0.0, e1 - e0) / 1000.0  # a meter reset never bills negative energy
        kwh += step_kwh
        cost += step_kwh * lookup.at(t0)
    return kwh, cost


def relay_activity(readings: Sequence[tuple[float, int]]) -> tuple[float, int]:
    """(hours on, switches) from relay telemetry (ts, relay)."""
    ordered = sorted(readings)
    on_s = 0.0
    switches = 0
    for (t0, r0), (t1, r1) in itertools.pairwise(ordered):
        if r0:
            on_s += t1 - t0
        if r1 != r0:
            switches += 1
    return on_s / 3600.0, switches


def site_result(
    site: str,
    meter: Sequence[tuple[float, float]],
    relay: Sequence[tuple[float, int]],
    prices: Sequence[PricePoint],
) -> SiteResult:
    kwh, cost = energy_cost(meter, prices)
    on_h, switches = relay_activity(relay)
    return SiteResult(site, len(meter), round(kwh, 4), round(cost, 4), round(on_h, 3), switches)

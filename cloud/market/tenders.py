"""Retail tenders from wholesale prices (RATES style), as wire-contract TENDER messages.

    buy  = LMP * (1 + loss) + distribution_adder(t, feeder) + generation_adder(t)
    sell = buy - spread

LMP is $/MWh on the wire from CAISO; tenders are $/kWh. Adders follow the local clock in
America/Los_Angeles (the customer's tariff periods), so DST days have 23 or 25 hourly tenders.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import tendril_wire as wire

from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.cloud.timefmt import local_time

LOCAL_TZ = ZoneInfo("America/Los_Angeles")
MARKET_IDS = ("DAM", "RTM")
PRICE_DECIMALS = 6  # $0.000001/kWh: far below any billing resolution, keeps payloads short


def _by_hour(overnight: float, daytime: float, peak: float) -> tuple[float, ...]:
    """24 hourly values: overnight 21-8 h, daytime 8-16 h, peak 16-21 h (the 4-9 pm TOU window)."""
    return tuple(peak if 16 <= h < 21 else daytime if 8 <= h < 16 else overnight for h in range(24))


@dataclass(frozen=True)
class TenderConfig:
    """Retail price components, all in $/kWh except the dimensionless factors.

    Defaults follow the shape of a California residential time-of-use tariff (SCE TOU-D-4-9PM,
    the OAT of most RATES participants): fixed costs are recovered mostly in the 4-9 pm net-peak
    window, least in the solar-rich daytime. On the bundled March 2024 SP-15 day-ahead prices they
    give buy prices of $0.06-0.42/kWh (mean $0.20), the order of that tariff; the levels are not
    calibrated against a tariff sheet (revenue neutrality against the OAT is the billing's job).
    """

    # Distribution losses between the CAISO node and the meter (CA utilities report ~5-8 %).
    loss_factor: float = 0.06
    # Distribution fixed cost not in CAISO prices, by local hour 0..23.
    distribution_adder_by_hour: tuple[float, ...] = _by_hour(0.11, 0.09, 0.21)
    # Generation capacity (resource adequacy) cost not in CAISO prices, by local hour 0..23.
    generation_adder_by_hour: tuple[float, ...] = _by_hour(0.04, 0.02, 0.14)
    # buy - sell: the utility's margin for taking energy back; keeps a round trip from being free.
    spread: float = 0.02
    # Above this feeder forecast load / limit the feeder's distribution adder rises ...
    congestion_threshold: float = 0.8
    # ... by this fraction of itself per unit of (ratio - threshold) / (1 - threshold): at the
    # default 1.0 the adder doubles when the feeder is forecast at its limit.
    congestion_gain: float = 1.0

    def __post_init__(self) -> None:
        for name in ("distribution_adder_by_hour", "generation_adder_by_hour"):
            values = getattr(self, name)
            if len(values) != 24:
                raise ValueError(f"{name} needs 24 hourly values, got {len(values)}")
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"{name} values must be finite and >= 0")
        if not 0 <= self.loss_factor < 1:
            raise ValueError(f"loss_factor must be in [0, 1), got {self.loss_factor}")
        if not (math.isfinite(self.spread) and self.spread >= 0):
            raise ValueError(f"spread must be finite and >= 0, got {self.spread}")
        if not 0 < self.congestion_threshold < 1:
            raise ValueError(f"congestion_threshold must be in (0, 1), got {self.congestion_threshold}")
        if not (math.isfinite(self.congestion_gain) and self.congestion_gain >= 0):
            raise ValueError(f"congestion_gain must be finite and >= 0, got {self.congestion_gain}")

    def congestion_factor(self, feeder_load_ratio: float) -> float:
        """Multiplier on the distribution adder for a feeder forecast at `feeder_load_ratio` of its limit."""
        if not (math.isfinite(feeder_load_ratio) and feeder_load_ratio >= 0):
            raise ValueError(f"feeder_load_ratio must be finite and >= 0, got {feeder_load_ratio}")
        excess = max(0.0, feeder_load_ratio - self.congestion_threshold) / (1 - self.congestion_threshold)
        return 1 + self.congestion_gain * excess


def local_hour(start_unix: float) -> int:
    return datetime.fromtimestamp(start_unix, LOCAL_TZ).hour


def tender_prices(
    lmp_usd_per_mwh: float, start_unix: float, config: TenderConfig, feeder_load_ratio: float = 0.0
) -> tuple[float, float]:
    """(buy, sell) in $/kWh for an interval starting at `start_unix` on a feeder at the given load ratio."""
    if not math.isfinite(lmp_usd_per_mwh):
        raise ValueError(f"LMP must be finite, got {lmp_usd_per_mwh}")
    hour = local_hour(start_unix)
    energy = lmp_usd_per_mwh / 1000.0 * (1 + config.loss_factor)
    distribution = config.distribution_adder_by_hour[hour] * config.congestion_factor(feeder_load_ratio)
    buy = energy + distribution + config.generation_adder_by_hour[hour]
    return round(buy, PRICE_DECIMALS), round(buy - config.spread, PRICE_DECIMALS)


def tender_id(fields: dict[str, Any]) -> str:
    """Readable prefix plus a digest of the whole offer: the same offer always gets the same id
    (a re-publish deduplicates), any changed term (price, expiry, party) gets a new one."""
    text = "|".join(f"{k}={fields[k]!r}" for k in sorted(fields))
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{fields['marketId']}-{fields['intervalStart']}-{fields['side'][0]}-{digest}"


def build_tenders(
    site: str,
    feeder: str,
    prices: Iterable[PriceInterval],
    market_id: str,
    now: float,
    config: TenderConfig,
    expires_after_s: float,
    party_id: str = "tendril-utility",
    feeder_load_ratio: float = 0.0,
    quantity_kwh: float | None = None,
    expire_by_start: bool = False,
) -> list[dict[str, Any]]:
    """A BUY and a SELL tender per price interval, each validated against the wire contract.

    An offer expires `expires_after_s` after `now`, and never after its interval ends (energy
    cannot be traded for the past); with `expire_by_start`, never after it starts (a forward
    transaction, as the market service offers them). Intervals already over at `now` get no
    tender. `quantity_kwh` caps what may be taken of each tender (absent: unlimited).
    """
    if quantity_kwh is not None and not (math.isfinite(quantity_kwh) and quantity_kwh > 0):
        raise ValueError(f"quantity_kwh must be > 0, got {quantity_kwh}")
    wire.check_id(site, "site")
    if not feeder or not isinstance(feeder, str):
        raise ValueError(f"feeder must be a non-empty string, got {feeder!r}")
    if market_id not in MARKET_IDS:
        raise ValueError(f"market_id must be one of {', '.join(MARKET_IDS)}, got {market_id!r}")
    if not (math.isfinite(expires_after_s) and expires_after_s > 0):
        raise ValueError(f"expires_after_s must be > 0, got {expires_after_s}")
    tenders: list[dict[str, Any]] = []
    for p in prices:
        if p.market != market_id:
            raise ValueError(f"{p.market} price at {local_time(p.start, LOCAL_TZ)} given for a {market_id} tender")
        if p.end <= now:
            continue
        buy, sell = tender_prices(p.lmp_usd_per_mwh, p.start, config, feeder_load_ratio)
        expiration = min(now + expires_after_s, p.start if expire_by_start else p.end)
        for side, price in ((wire.SIDE_BUY, buy), (wire.SIDE_SELL, sell)):
            fields: dict[str, Any] = {
                "v": wire.VERSION,
                "side": side,
                "intervalStart": p.start,
                "durationS": p.duration_s,
                "price": price,
                "expirationTime": expiration,
                "partyId": party_id,
                "counterPartyId": site,
                "marketId": market_id,
                "resourceDesignator": feeder,
            }
            if quantity_kwh is not None:
                fields["quantity"] = quantity_kwh
            fields["tenderId"] = tender_id(fields)
            tenders.append(wire.validate(wire.TENDER, fields))
    return tenders


def live_tenders(tenders: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The tenders that can still be accepted at `now`."""
    return [t for t in tenders if now < t["expirationTime"]]

"""CAISO locational marginal prices: the wholesale basis of every tender.

The bundled slice (data/caiso, see its README) is real SP-15 DAM hourly and RTM 5-minute data for
March 2024. Files are validated row by row, because a silently skipped or misread price row would
mis-price every tender built from it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from tendril_transactive.cloud.timefmt import local_time
from tendril_transactive.edge.resources import DATA_DIR

Market = Literal["DAM", "RTM"]

MARKETS = ("DAM", "RTM", "FMM")
# What a bill says it priced at: the market's step, not its code.
MARKET_LABELS: dict[str, str] = {"DAM": "day-ahead hourly", "RTM": "real-time 5-minute", "FMM": "15-minute"}
REQUIRED_COLUMNS = ("interval_start_utc", "interval_end_utc", "market", "lmp_usd_per_mwh")
DEFAULT_FILES: dict[str, str] = {
    "DAM": "caiso/sp15_dam_hourly_2024-03.csv",
    "RTM": "caiso/sp15_rtm_5min_2024-03.csv",
}
BUNDLED_MONTH = "2024-03"  # the one local month DEFAULT_FILES cover (data/caiso/README.md)
# Real LMPs have reached about -$150 and +$2,000/MWh; anything beyond this is a unit or parse error.
LMP_LIMIT_USD_PER_MWH = 20_000.0


class PriceDataError(ValueError):
    """A price file that cannot be trusted; the message names the file and line."""


@dataclass(frozen=True)
class PriceInterval:
    start: int  # unix seconds, UTC
    duration_s: int
    lmp_usd_per_mwh: float
    market: str
    # Where the price is from (e.g. SP-15; "" when the source does not say), for what a bill prints:
    # provenance, not price, so two intervals with the same time, market and LMP still compare equal.
    node: str = field(default="", compare=False)

    @property
    def end(self) -> int:
        return self.start + self.duration_s


def _parse_utc(text: str) -> int:
    if not text.endswith("Z"):
        raise ValueError(f"timestamp {text!r} is not UTC (no trailing 'Z')")
    stamp = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(stamp.timestamp())


def _parse_row(row: dict[str, str]) -> PriceInterval:
    start = _parse_utc(row["interval_start_utc"])
    end = _parse_utc(row["interval_end_utc"])
    if end <= start:
        raise ValueError(
            f"interval ends ({row['interval_end_utc']}) before it starts ({row['interval_start_utc']})"
        )
    market = row["market"]
    if market not in MARKETS:
        raise ValueError(f"unknown market {market!r} (expected one of {', '.join(MARKETS)})")
    lmp = float(row["lmp_usd_per_mwh"])
    if not math.isfinite(lmp) or abs(lmp) > LMP_LIMIT_USD_PER_MWH:
        raise ValueError(f"implausible LMP {row['lmp_usd_per_mwh']!r} $/MWh")
    return PriceInterval(start, end - start, lmp, market, (row.get("node") or "").strip())


def load_caiso_csv(path: Path | str) -> list[PriceInterval]:
    """Read a CAISO price CSV (schema of data/caiso/README.md), in time order, without overlaps.

    Gaps are allowed (the real data has some); overlaps, disorder, mixed markets and unparsable
    rows are not. Raises PriceDataError naming the file and line.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        if header is None:
            raise PriceDataError(f"{path}: empty file, expected a header row")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise PriceDataError(f"{path}:1: missing column(s) {', '.join(missing)}")
        prices: list[PriceInterval] = []
        for row in reader:
            line = reader.line_num
            if None in row or any(row[c] is None for c in REQUIRED_COLUMNS):
                raise PriceDataError(f"{path}:{line}: expected {len(header)} columns")
            try:
                interval = _parse_row(row)
            except ValueError as exc:
                raise PriceDataError(f"{path}:{line}: {exc}") from None
            if prices:
                prev = prices[-1]
                if interval.market != prev.market:
                    raise PriceDataError(f"{path}:{line}: market {interval.market} in a {prev.market} file")
                if interval.start < prev.end:
                    raise PriceDataError(
                        f"{path}:{line}: interval starting {row['interval_start_utc']} overlaps or precedes "
                        "the previous row"
                    )
            prices.append(interval)
    if not prices:
        raise PriceDataError(f"{path}: no price rows")
    return prices


@lru_cache(maxsize=4)
def _default(market: str) -> tuple[PriceInterval, ...]:
    return tuple(load_caiso_csv(DATA_DIR / DEFAULT_FILES[market]))


def default_prices(market: Market) -> list[PriceInterval]:
    """The bundled March 2024 SP-15 prices for one market (read once, then cached)."""
    if market not in DEFAULT_FILES:
        raise ValueError(f"no bundled prices for market {market!r}; have {', '.join(DEFAULT_FILES)}")
    return list(_default(market))


def prices_between(prices: Sequence[PriceInterval], start: float, end: float) -> list[PriceInterval]:
    """The intervals that start in [start, end), in their original order."""
    if end < start:
        # Prices carry no site, so no site zone: UTC, which is how the price files write time.
        raise ValueError(f"window ends ({local_time(end, UTC)}) before it starts ({local_time(start, UTC)})")
    return [p for p in prices if start <= p.start < end]

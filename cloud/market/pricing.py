"""The distribution adder's one replaceable step: how loaded is a feeder in an interval?

Tenders price distribution as `distribution_adder_by_hour[h] * congestion_factor(ratio)` where
`ratio` = the feeder's forecast load / its limit (cloud.market.tenders). Everything the market
knows about the grid enters through `DistributionPricing.feeder_load_ratio(feeder,
interval_start)`. Today that is a static table from configuration (`--feeder-ratio
feeder-b=0.95`); a power-flow step (e.g. pandapower on a feeder model fed with the sites'
forecast loads) replaces it by implementing the same one method, and nothing else changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Protocol

import tendril_wire as wire


class DistributionPricing(Protocol):
    def feeder_load_ratio(self, feeder: str, interval_start: float) -> float:
        """Forecast load / limit of `feeder` for the interval starting at `interval_start` (>= 0)."""
        ...


class StaticFeederRatios:
    """A fixed ratio per feeder (and one for every feeder not named)."""

    def __init__(self, ratios: Mapping[str, float] | None = None, default: float = 0.0) -> None:
        self.ratios = dict(ratios or {})
        self.default = default
        for feeder, ratio in [*self.ratios.items(), ("(default)", default)]:
            if not (math.isfinite(ratio) and 0 <= ratio < 10):
                raise ValueError(f"feeder load ratio for {feeder} must be in [0, 10), got {ratio}")

    def feeder_load_ratio(self, feeder: str, interval_start: float) -> float:
        return self.ratios.get(feeder, self.default)


def parse_feeder_ratios(items: Iterable[str]) -> dict[str, float]:
    """`["feeder-b=0.95", ...]` -> {"feeder-b": 0.95}; ValueError naming the bad item."""
    out: dict[str, float] = {}
    for item in items:
        feeder, sep, value = item.partition("=")
        try:
            wire.check_id(feeder, "feeder")
            ratio = float(value)
        except (wire.ContractError, ValueError):
            raise ValueError(f"--feeder-ratio takes FEEDER=RATIO like feeder-b=0.95, got {item!r}") from None
        if not sep or not (math.isfinite(ratio) and 0 <= ratio < 10):
            raise ValueError(f"--feeder-ratio takes FEEDER=RATIO with 0 <= RATIO < 10, got {item!r}")
        out[feeder] = ratio
    return out

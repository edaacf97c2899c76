"""Where the market's wholesale prices come from: one small plug, two implementations.

`PriceSource.prices(market, start, end)` returns the LMP intervals that start in [start, end),
in time order. `ReplayPrices` serves the bundled real CAISO SP-15 March 2024 prices (the default:
works offline, and every simulated clock of the demo and tests sits in that month).
`OasisPrices` asks CAISO OASIS for a node's LMPs through `gridstatus` (network; blocking, so the
service calls it from a worker thread). Both return `cloud.sources.prices.PriceInterval`, so
nothing downstream knows which one ran.
"""

from __future__ import annotations

import importlib
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.cloud.sources.prices import (
    LMP_LIMIT_USD_PER_MWH,
    PriceInterval,
    default_prices,
    prices_between,
)
from tendril_transactive.cloud.timefmt import local_time

DAM = "DAM"
RTM = "RTM"
MARKETS = (DAM, RTM)
DEFAULT_NODE = "TH_SP15_GEN-APND"
# gridstatus' market names (gridstatus.Markets values) for our two markets.
GRIDSTATUS_MARKETS = {DAM: "DAY_AHEAD_HOURLY", RTM: "REAL_TIME_5_MIN"}
EXPECTED_DURATION_S = {DAM: 3600, RTM: 300}


class PriceSourceError(RuntimeError):
    """Prices could not be had (network, no data, an implausible row); the message says which."""


class PriceSource(Protocol):
    name: str

    def prices(self, market: str, start: float, end: float) -> list[PriceInterval]:
        """LMP intervals of `market` ("DAM" or "RTM") starting in [start, end), in time order."""
        ...


def _check_market(market: str) -> None:
    if market not in MARKETS:
        raise ValueError(f"market must be one of {', '.join(MARKETS)}, got {market!r}")


class ReplayPrices:
    """The bundled CAISO prices (or any given series) served by their own timestamps."""

    name = "replay"

    def __init__(self, series: dict[str, Sequence[PriceInterval]] | None = None) -> None:
        self._series = {m: list(series[m]) for m in series} if series is not None else None

    def prices(self, market: str, start: float, end: float) -> list[PriceInterval]:
        _check_market(market)
        if self._series is not None:
            return prices_between(self._series.get(market, []), start, end)
        return prices_between(default_prices("DAM" if market == DAM else "RTM"), start, end)


def frame_to_intervals(frame: Any, market: str, node: str) -> list[PriceInterval]:
    """gridstatus' LMP DataFrame (columns Interval Start, Interval End, Location, LMP, ...) ->
    PriceIntervals for one node, validated like the bundled files (finite, plausible, in order,
    no overlaps, the market's own step)."""
    _check_market(market)
    missing = [c for c in ("Interval Start", "Interval End", "Location", "LMP") if c not in frame.columns]
    if missing:
        raise PriceSourceError(f"OASIS {market} frame lacks column(s) {', '.join(missing)}")
    rows = frame[frame["Location"] == node]
    out: list[PriceInterval] = []
    for start_ts, end_ts, lmp in zip(rows["Interval Start"], rows["Interval End"], rows["LMP"], strict=True):
        start, end = int(start_ts.timestamp()), int(end_ts.timestamp())
        value = float(lmp)
        if not math.isfinite(value) or abs(value) > LMP_LIMIT_USD_PER_MWH:
            raise PriceSourceError(f"OASIS {market} {node} at {start_ts}: implausible LMP {lmp!r} $/MWh")
        if end - start != EXPECTED_DURATION_S[market]:
            raise PriceSourceError(f"OASIS {market} {node} at {start_ts}: a {end - start} s interval, "
                                   f"expected {EXPECTED_DURATION_S[market]} s")
        out.append(PriceInterval(start, end - start, value, market))
    out.sort(key=lambda p: p.start)
    for a, b in itertools.pairwise(out):
        if b.start < a.end:
            raise PriceSourceError(f"OASIS {market} {node}: intervals at {local_time(a.start, LOCAL_TZ)} and "
                                   f"{local_time(b.start, LOCAL_TZ)} overlap")
    return out


def _gridstatus_caiso() -> Any:
    # Imported here: pandas and gridstatus cost ~1 s and only this source needs them.
    gridstatus: Any = importlib.import_module("gridstatus")
    return gridstatus.CAISO()


class OasisPrices:
    """Live CAISO OASIS LMPs for one node (e.g. TH_SP15_GEN-APND), through gridstatus.

    DAM -> gridstatus DAY_AHEAD_HOURLY (OASIS PRC_LMP), RTM -> REAL_TIME_5_MIN (PRC_INTVL_LMP).
    Answers are cached per (market, window) so the service's many sites cost one request.
    `caiso` is injectable for tests; by default a gridstatus.CAISO().
    """

    name = "caiso-oasis"

    def __init__(self, node: str = DEFAULT_NODE, caiso: Any = None, sleep_s: int = 0,
                 cache_size: int = 64) -> None:
        if not node or any(ch in node for ch in "&?=/ "):
            raise ValueError(f"--node must be an OASIS node name like {DEFAULT_NODE}, got {node!r}")
        self.node = node
        self._caiso_factory: Callable[[], Any] = (lambda: caiso) if caiso is not None else _gridstatus_caiso
        self._caiso: Any = None
        self._sleep_s = sleep_s  # gridstatus sleeps this long after each request (OASIS rate limit)
        self._cache: dict[tuple[str, float, float], list[PriceInterval]] = {}
        self._cache_size = cache_size

    def prices(self, market: str, start: float, end: float) -> list[PriceInterval]:
        _check_market(market)
        key = (market, start, end)
        cached = self._cache.get(key)
        if cached is not None:
            return list(cached)
        if self._caiso is None:
            self._caiso = self._caiso_factory()
        pd: Any = importlib.import_module("pandas")
        lo = pd.Timestamp(start, unit="s", tz="UTC")
        hi = pd.Timestamp(end, unit="s", tz="UTC")
        try:
            with warnings.catch_warnings():
                # get_lmp is the one gridstatus call that takes a node list; it is marked
                # deprecated in favour of all-node calls, which would fetch ~30 MB per day.
                warnings.simplefilter("ignore", DeprecationWarning)
                frame = self._caiso.get_lmp(date=lo, end=hi, market=GRIDSTATUS_MARKETS[market],
                                            locations=[self.node], sleep=self._sleep_s)
        except PriceSourceError:
            raise
        except Exception as exc:  # gridstatus raises requests, pandas and its own errors alike
            raise PriceSourceError(f"OASIS {market} {self.node} [{lo} .. {hi}): "
                                   f"{exc.__class__.__name__}: {exc}") from exc
        got = [p for p in frame_to_intervals(frame, market, self.node) if start <= p.start < end]
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = got
        return list(got)


def make_source(kind: str, node: str = DEFAULT_NODE) -> PriceSource:
    if kind == "replay":
        return ReplayPrices()
    if kind == "caiso-oasis":
        return OasisPrices(node)
    raise ValueError(f"--prices must be replay or caiso-oasis, got {kind!r}")

"""What the market publishes when: day-ahead and real-time tender batches, and their tenders.

Pure: every function takes `now` and inputs and returns what is due or what to publish.

* Day-ahead (DAM): one batch per local day D, published at `da_hour` local time on the day
  before (default 10:00), BUY and SELL per hour of D, each expiring when its hour starts
  (a forward transaction). A service that starts after 10:00 publishes the next day's batch at
  once, and today's too if it never went out (its hours that already started are left out).
* Real-time (RTM): one batch per 5-minute interval S, opened `rt_lead_s` before S and
  expiring at S. Each site's tenders go out `rt_offset` after the batch opens: a fixed share of
  `rt_spread_s` from a digest of the site id, in whole seconds. Spreading the batch is what keeps
  one agent's answers within seconds of their tenders at a thousand sites: all at once, every
  site waits for the whole round of solves (docs/loop-bench.md, runs l and m); OpenADR 2.0b spreads
  event starts across VENs (randomizeStart) for the same reason. The same site always gets the
  same offset, so a restarted market keeps it.

Every tender is built with the batch's *nominal* publication time as `now`, never the wall
clock's, so building the same batch again (after a restart) gives the same tenders and the
same ids (tenders.tender_id digests the whole offer).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tendril_transactive.cloud.devices.registry import SiteRecord
from tendril_transactive.cloud.market.tenders import LOCAL_TZ, TenderConfig, build_tenders
from tendril_transactive.cloud.sources.prices import PriceInterval

DAM = "DAM"
RTM = "RTM"
RT_STEP_S = 300
HOUR_S = 3600
# A real-time price is not known before its interval; a source without it (live OASIS) is
# forecast by persistence: the latest 5-minute price up to this old, else the day-ahead hour.
RT_PERSISTENCE_S = 3600
PARTY_ID = "tendril-utility"
RT_SPREAD_STEP_S = 1.0  # a site's offset in the spread is a whole number of these


@dataclass(frozen=True)
class MarketConfig:
    da_hour: int = 10  # local hour at which the next day's day-ahead tenders go out
    rt_lead_s: float = 60.0  # real-time tenders go out this long before their interval
    rt_spread_s: float = 0.0  # ... each site's up to this much later (rt_offset); services: DEFAULT_RT_SPREAD_S
    settle_delay_intervals: int = 2  # settle an interval this many 5-minute steps after it ends
    settle_give_up_s: float = 86400.0  # an interval without meter data this long after its end stays unsettled
    da_quantity_kwh: float = 20.0  # most a site may take of one day-ahead tender
    rt_quantity_kwh: float = 2.0  # most a site may take of one real-time tender
    party_id: str = PARTY_ID
    tender: TenderConfig = field(default_factory=TenderConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.da_hour, int) and 0 <= self.da_hour <= 23):
            raise ValueError(f"da_hour must be a local hour 0..23, got {self.da_hour!r}")
        if not (math.isfinite(self.rt_lead_s) and 0 < self.rt_lead_s <= 3600):
            raise ValueError(f"rt_lead_s must be in (0, 3600], got {self.rt_lead_s}")
        if not (math.isfinite(self.rt_spread_s) and 0 <= self.rt_spread_s < self.rt_lead_s):
            raise ValueError(f"rt_spread_s must be in [0, rt_lead_s = {self.rt_lead_s:g}), got {self.rt_spread_s}: "
                             "the last site's tenders must go out before they expire")
        if not (isinstance(self.settle_delay_intervals, int) and 0 <= self.settle_delay_intervals <= 288):
            raise ValueError(f"settle_delay_intervals must be 0..288, got {self.settle_delay_intervals!r}")
        for name in ("da_quantity_kwh", "rt_quantity_kwh", "settle_give_up_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def settle_delay_s(self) -> int:
        return self.settle_delay_intervals * RT_STEP_S


@dataclass(frozen=True, order=True)
class Batch:
    """Tenders for one window of one market; `publish_at` is the `now` they are built with."""

    market: str
    start: int  # DAM: local midnight of the day; RTM: the interval's start (unix s)
    end: int
    publish_at: float


def _local_midnight(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ).timestamp())


def day_batch(day: dt.date, cfg: MarketConfig) -> Batch:
    """The day-ahead batch for local day `day` (23 or 25 hours on DST days)."""
    before = day - dt.timedelta(days=1)
    publish = dt.datetime(before.year, before.month, before.day, cfg.da_hour, tzinfo=LOCAL_TZ)
    return Batch(DAM, _local_midnight(day), _local_midnight(day + dt.timedelta(days=1)),
                 float(publish.timestamp()))


def rt_batch(start: int, cfg: MarketConfig) -> Batch:
    return Batch(RTM, start, start + RT_STEP_S, start - cfg.rt_lead_s)


@functools.lru_cache(maxsize=65536)
def _share(site: str) -> float:
    return int.from_bytes(hashlib.sha256(site.encode()).digest()[:8], "big") / 2.0 ** 64


def rt_offset(site: str, cfg: MarketConfig) -> float:
    """How long after a real-time batch opens this site's tenders go out: in [0, rt_spread_s)."""
    if cfg.rt_spread_s <= 0:
        return 0.0
    return math.floor(_share(site) * cfg.rt_spread_s / RT_SPREAD_STEP_S) * RT_SPREAD_STEP_S


def rt_site_due(batch: Batch, site: str, now: float, cfg: MarketConfig) -> bool:
    """Whether this site's share of an open batch is due at `now` (always for a day-ahead one)."""
    return batch.market != RTM or batch.publish_at + rt_offset(site, cfg) <= now


def due_batches(now: float, cfg: MarketConfig) -> list[Batch]:
    """Every batch whose publication time has come and whose tenders can still be taken,
    real-time first: a real-time tender has minutes to live, the day-ahead batch (a whole day of
    hourly tenders for every site) hours, so the day-ahead work never holds a real-time one back."""
    out = []
    s = (math.floor(now / RT_STEP_S) + 1) * RT_STEP_S  # the next interval start strictly after now
    while s - cfg.rt_lead_s <= now:
        out.append(rt_batch(s, cfg))
        s += RT_STEP_S
    today = dt.datetime.fromtimestamp(now, LOCAL_TZ).date()
    out += [b for b in (day_batch(today, cfg), day_batch(today + dt.timedelta(days=1), cfg))
            if b.publish_at <= now < b.end]
    return out


def next_publication(now: float, cfg: MarketConfig) -> float:
    """The earliest publication time after `now` (to sleep until): a batch opening, or the next
    step of an open real-time batch's spread."""
    s = (math.floor(now / RT_STEP_S) + 1) * RT_STEP_S
    times = []
    while s - cfg.rt_lead_s <= now:
        opened = s - cfg.rt_lead_s
        step = opened + (math.floor((now - opened) / RT_SPREAD_STEP_S) + 1) * RT_SPREAD_STEP_S
        if step < opened + cfg.rt_spread_s:
            times.append(step)
        s += RT_STEP_S
    today = dt.datetime.fromtimestamp(now, LOCAL_TZ).date()
    days = [day_batch(today + dt.timedelta(days=k), cfg).publish_at for k in (1, 2)]
    return min([s - cfg.rt_lead_s, *times, *[d for d in days if d > now]])


def rt_price(start: int, rtm: Sequence[PriceInterval], dam: Sequence[PriceInterval]) -> PriceInterval | None:
    """The LMP a real-time tender for [start, start+300) is priced at: that interval's RTM price
    if known (replay), else the latest RTM price up to RT_PERSISTENCE_S old, else the DAM price of
    the hour. None when there is none of these."""
    for p in rtm:
        if p.start == start:
            return PriceInterval(start, RT_STEP_S, p.lmp_usd_per_mwh, RTM)
    recent = [p for p in rtm if start - RT_PERSISTENCE_S <= p.start < start]
    if recent:
        return PriceInterval(start, RT_STEP_S, max(recent, key=lambda p: p.start).lmp_usd_per_mwh, RTM)
    for p in dam:
        if p.start <= start < p.end:
            return PriceInterval(start, RT_STEP_S, p.lmp_usd_per_mwh, RTM)
    return None


def batch_tenders(batch: Batch, site: SiteRecord, prices: Sequence[PriceInterval],
                  feeder_ratio: Callable[[str, float], float], cfg: MarketConfig,
                  now: float) -> list[dict[str, Any]]:
    """The tenders of `batch` for one site, still open at `now`.

    `prices`: DAM hourly intervals of the day for a DAM batch, the one RTM interval (rt_price)
    for an RTM batch. Each interval gets the site's feeder load ratio from the pricing step.
    """
    if batch.market == DAM:
        quantity, expires_after = cfg.da_quantity_kwh, float(batch.end - batch.publish_at)
    else:
        quantity, expires_after = cfg.rt_quantity_kwh, cfg.rt_lead_s
    out: list[dict[str, Any]] = []
    for p in prices:
        if not batch.start <= p.start < batch.end:
            continue
        out.extend(build_tenders(site.site, site.feeder, [p], batch.market, batch.publish_at, cfg.tender,
                                 expires_after, party_id=cfg.party_id,
                                 feeder_load_ratio=feeder_ratio(site.feeder, p.start),
                                 quantity_kwh=quantity, expire_by_start=True))
    return [t for t in out if t["expirationTime"] > now]

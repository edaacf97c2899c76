"""`MarketService`: the utility side of the transactive loop as a long-running asyncio service.

I/O only; every decision is MarketCore's (core.py). One loop, one MQTT connection:

  start    rebuild the book, known transactionIds + confirms, published batches and settled
           intervals from the ledger; connect (stable client id, persistent session, QoS 1);
           subscribe tendril/v1/+/transaction; republish still-open tenders (same ids, not
           recorded again); `ready` is set
  tick     publish the due day-ahead / real-time batches (ledger first, then MQTT); settle the
           intervals whose close + delay has passed and whose meter data is in the store
  message  answer every transaction with one confirm on tendril/v1/{site}/confirm (ledger
           first, then apply, then publish)

Ledger writes come before state changes and publications, so a crash at any point leaves
either nothing or a durable record that the restart replays; what a crash loses is only a
publication, which the restart's republish or the agent's retry (same transactionId -> same
confirm) makes good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import REGISTRY_FILE, Registry, SiteRecord
from tendril_transactive.cloud.market.core import ACCEPTED, REPLAYED, Decision, MarketCore
from tendril_transactive.cloud.market.meters import MeterReader, MeterReadError
from tendril_transactive.cloud.market.pricing import DistributionPricing, StaticFeederRatios
from tendril_transactive.cloud.market.schedule import (
    DAM,
    RT_STEP_S,
    RTM,
    Batch,
    MarketConfig,
    due_batches,
    next_publication,
    rt_price,
    rt_site_due,
)
from tendril_transactive.cloud.market.sources import PriceSource, PriceSourceError, ReplayPrices
from tendril_transactive.cloud.mqtt.window import PUBLISH_WINDOW, windowed_client
from tendril_transactive.cloud.settings import BrokerSettings
from tendril_transactive.cloud.timefmt import utc_time
from tendril_transactive.edge.clock import Clock, WallClock

log = logging.getLogger("tendril.market")

DEFAULT_CLIENT_ID = "tendril-market"
MAX_BATCH = 500  # transactions answered with one ledger write at most
STATS_FILE = "market-stats.json"
# A day-ahead batch (a day of hourly tenders) goes out this many sites per step, so a real-time
# batch that falls due meanwhile waits for one step, not for every site's day.
DA_CHUNK_SITES = 2


class LedgerLike(Protocol):
    def append_many(self, items: Any, now: float) -> Any: ...

    def records(self, kind: str | None = None, site: str | None = None) -> Any: ...


@dataclass
class MarketStats:
    started_at: float = 0.0
    now: float = 0.0
    sites: int = 0
    tenders_published: int = 0
    tenders_recorded: int = 0
    transactions_accepted: int = 0
    transactions_refused: int = 0
    transactions_replayed: int = 0
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    intervals_settled: int = 0
    intervals_given_up: int = 0
    settle_waiting: int = 0
    price_misses: int = 0
    connects: int = 0
    rebuilt_records: int = 0


def registry_sites(root: Path) -> Callable[[], list[SiteRecord]]:
    """The registry's sites, re-read whenever devices.json changes."""
    state: dict[str, Any] = {"mtime": None, "sites": []}

    def sites() -> list[SiteRecord]:
        path = root / REGISTRY_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != state["mtime"]:
            state["sites"] = Registry(root).sites
            state["mtime"] = mtime
        return list(state["sites"])

    return sites


class MarketService:
    def __init__(
        self,
        sites: Callable[[], Sequence[SiteRecord]],
        broker: BrokerSettings,
        ledger: LedgerLike,
        meters: MeterReader | None = None,
        prices: PriceSource | None = None,
        pricing: DistributionPricing | None = None,
        clock: Clock | None = None,
        config: MarketConfig | None = None,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        state_dir: Path | None = None,
        health_s: float = 30.0,
        max_sleep_s: float = 60.0,
    ) -> None:
        self.sites = sites
        self.broker = broker
        self.ledger = ledger
        self.meters = meters
        self.prices = prices or ReplayPrices()
        self.clock: Clock = clock or WallClock()
        self.config = config or MarketConfig()
        self.core = MarketCore(self.config, pricing or StaticFeederRatios())
        self.client_id = client_id
        self.state_dir = state_dir
        self.health_s = health_s
        self.max_sleep_s = max_sleep_s  # clock seconds between ticks at most (settlement, registry)
        self.ready = asyncio.Event()
        self.stats = MarketStats()
        self._warned: set[tuple[str, int]] = set()
        self._day_ahead: dict[tuple[str, int], asyncio.Task[None]] = {}  # batches going out
        self._background_error: BaseException | None = None
        self._last_health = 0.0
        # One window for every batch: tenders, day-ahead and confirms go out at once (a window per
        # batch let them reach 15 pending, and the demo printed aiomqtt's warning 50 times).
        self._publish_window = asyncio.Semaphore(PUBLISH_WINDOW)

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; reconnects to the broker by itself."""
        now = self.clock.now()
        self.stats.started_at = now
        records = await asyncio.to_thread(lambda: [(r.kind, r.site, r.body) for r in self.ledger.records()])
        rebuilt = self.core.rebuild(records)
        self.stats.rebuilt_records = len(records)
        log.info("market: rebuilt from the ledger: %d tenders, %d transactions, %d refusals, %d settlements",
                 rebuilt.tenders, rebuilt.transactions, rebuilt.refusals, rebuilt.settlements)
        backoff = 0.5
        while not stop.is_set():
            try:
                client = windowed_client(
                    self.broker.host, self.broker.port, identifier=self.client_id,
                    username=self.broker.username, password=self.broker.password,
                    clean_session=False, protocol=aiomqtt.ProtocolVersion.V311, keepalive=30,
                    tls_context=self.broker.tls,  # mqtts:// (cloud.settings.broker_tls)
                )
                # PUBACK a transaction only once its decision is in the ledger and its confirm
                # sent: a kill -9 in between leaves it unacknowledged, and the broker hands it to
                # the restarted market (persistent session). aiomqtt has no switch for it yet; this
                # is the workaround its maintainers point to (empicano/aiomqtt#345).
                client._client.manual_ack_set(True)
                async with client:
                    self.stats.connects += 1
                    backoff = 0.5
                    await self._session(client, stop)
            except aiomqtt.MqttError as exc:
                if stop.is_set():
                    break
                log.warning("market: broker %s:%d: %s; reconnecting in %.1f s", self.broker.host,
                            self.broker.port, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
        self._write_stats()
        log.info("market: stopped (%s)", self._summary())

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        self._background_error = None
        await client.subscribe(wire.site_filter(wire.TRANSACTION), qos=1)
        # What was on offer when we went away goes out again, but after what is due now: a
        # real-time tender due now has seconds to go out, the republished ones hours.
        live = self.core.live_tenders(self.clock.now())
        await self._publish_due(client, self._current_sites())
        await self._publish_all(client, [(wire.tender_topic(t["counterPartyId"]), json.dumps(t)) for t in live])
        if live:
            log.info("market: republished %d open tenders after connecting", len(live))
        self.ready.set()
        receiver = asyncio.create_task(self._receive(client))
        ticker = asyncio.create_task(self._tick_loop(client, stop))
        settler = asyncio.create_task(self._settle_loop(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, pending = await asyncio.wait({receiver, ticker, settler, stopper},
                                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            # a day-ahead batch part-published goes on in the next session from where it stopped
            # (each step writes the ledger and the book without an await in between)
            for day_ahead in list(self._day_ahead.values()):
                day_ahead.cancel()
            self._day_ahead.clear()
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in done:
            task.result()  # re-raise a broker error: run() reconnects

    # ------------------------------------------------------------------------ transactions

    async def _receive(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        async for message in messages:
            batch = [message]
            while len(messages) and len(batch) < MAX_BATCH:  # already waiting: one ledger write for all
                batch.append(await messages.__anext__())
            await self.handle_many(client, [(m.topic.value, _payload(m)) for m in batch])
            for m in batch:
                client._client.ack(m.mid, m.qos)

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        await self.handle_many(client, [(topic, payload)])

    async def handle_many(self, client: aiomqtt.Client, messages: Sequence[tuple[str, bytes]]) -> None:
        """Answer transactions in arrival order with one ledger write for all of them, before any
        confirm is published (bench/loop.py: a write per transaction made the confirms of a
        thousand sites queue behind a thousand commits). Each decision is applied before the next
        is made, since a retry or the same tender may follow in the batch; the state runs ahead of
        the ledger only until the write, and a failed write stops the process."""
        now = self.clock.now()
        decisions: list[Decision] = []
        for topic, payload in messages:
            try:
                site, _, kind = wire.parse_topic(topic)
            except wire.ContractError:
                log.warning("market: ignoring message on %s (not a site transaction topic)", topic[:120])
                continue
            if kind != wire.TRANSACTION:
                continue
            decision = self.core.decide(site, payload, now)
            self.core.apply(decision)
            decisions.append(decision)
        records = [item for d in decisions for item in d.records]
        if records:
            self.ledger.append_many(records, now)  # durable before anything is said
        await self._publish_all(client, [(d.topic, json.dumps(d.confirm)) for d in decisions])
        for decision in decisions:
            self._count(decision)

    def _count(self, decision: Decision) -> None:
        site = decision.site
        c = decision.confirm
        if decision.outcome == ACCEPTED:
            self.stats.transactions_accepted += 1
            log.info("market: confirmed %s %s: %s %g kWh of %s at %.4f $/kWh", site, c["transactionId"],
                     c["side"], c["quantity"], c["tenderId"], c["price"])
        elif decision.outcome == REPLAYED:
            self.stats.transactions_replayed += 1
            log.info("market: %s %s seen before: same confirm again (ok=%s)", site, c["transactionId"], c["ok"])
        else:
            self.stats.transactions_refused += 1
            reasons = self.stats.refusals_by_reason
            reasons[c["reason"]] = reasons.get(c["reason"], 0) + 1
            log.info("market: refused %s %r: %s: %s", site, c["transactionId"], c["reason"], c.get("detail", ""))

    # ------------------------------------------------------------------------ tick

    async def _tick_loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Publication. Its own loop, apart from settlement (whose store reads can take a while),
        and a day-ahead batch goes out in a task of its own, DA_CHUNK_SITES sites at a time, so a
        real-time batch is never held behind either (the full-loop test lost real-time intervals
        to both at 300x)."""
        while not stop.is_set():
            if self._background_error is not None:
                raise self._background_error
            now = self.clock.now()
            await self.clock.sleep_until(min(next_publication(now, self.config), now + self.max_sleep_s))
            await self._publish_due(client, self._current_sites())
            self._health()

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self.clock.now()
            await self.clock.sleep_until(min(self._next_settle(now), now + self.max_sleep_s))
            await self._settle_due({s.site: s for s in self._current_sites()})

    def _current_sites(self) -> list[SiteRecord]:
        sites = list(self.sites())
        self.stats.sites = len(sites)
        return sites

    def _next_settle(self, now: float) -> float:
        """When the oldest waiting interval becomes due (or in a step when all are due and waiting
        for meter data)."""
        if not self.core.pending_settle:
            return now + self.max_sleep_s
        first = min(start for _, start in self.core.pending_settle) + RT_STEP_S + self.config.settle_delay_s
        return max(first, now + RT_STEP_S / 5)

    async def _publish_due(self, client: aiomqtt.Client, sites: Sequence[SiteRecord]) -> None:
        now = self.clock.now()
        for batch, all_waiting in self.core.due(due_batches(now, self.config), sites):
            waiting = [site for site in all_waiting if rt_site_due(batch, site.site, now, self.config)]
            if not waiting:
                continue  # a real-time batch whose next sites come later in its spread
            if batch.market == DAM:
                key = (batch.market, batch.start)
                if key not in self._day_ahead:
                    task = asyncio.create_task(self._publish_day_ahead(client, batch, waiting))
                    self._day_ahead[key] = task
                    task.add_done_callback(functools.partial(self._day_ahead_done, key))
                continue
            prices = await self._batch_prices(batch)
            if prices is not None:
                await self._publish_batch(client, batch, waiting, prices, rest=len(all_waiting) - len(waiting))

    async def _publish_day_ahead(self, client: aiomqtt.Client, batch: Batch, waiting: Sequence[SiteRecord]) -> None:
        prices = await self._batch_prices(batch)
        if prices is None:
            return
        for i in range(0, len(waiting), DA_CHUNK_SITES):
            await self._publish_batch(client, batch, waiting[i:i + DA_CHUNK_SITES], prices)
            await asyncio.sleep(0)  # a real-time batch due meanwhile goes first

    def _day_ahead_done(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._day_ahead.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            self._background_error = task.exception()  # e.g. the ledger: stop, as in the loop

    async def _publish_batch(self, client: aiomqtt.Client, batch: Batch, waiting: Sequence[SiteRecord],
                             prices: list[Any], rest: int = 0) -> None:
        """`rest`: sites of a real-time batch still to come in its spread (logged at debug till 0)."""
        now = self.clock.now()
        # One ledger write for the batch's tenders of every site, then every publication at
        # once (bench/loop.py: a write and a PUBACK wait per site held the last site's tenders
        # back by seconds at a thousand sites).
        offers = [(site, *self.core.plan_offers(batch, site, prices, now)) for site in waiting]
        items = [item for _, _, fresh in offers for item in fresh]
        if items:
            self.ledger.append_many(items, now)
        for site, tenders, _ in offers:
            self.core.apply_offers(batch, site.site, tenders)
        await self._publish_all(client, [(wire.tender_topic(site.site), json.dumps(tender))
                                   for site, tenders, _ in offers for tender in tenders])
        self.stats.tenders_published += sum(len(tenders) for _, tenders, _ in offers)
        self.stats.tenders_recorded += len(items)
        log.log(logging.DEBUG if rest else logging.INFO, "market: published %s tenders for %s to %d site(s)%s",
                batch.market, _window(batch), len(waiting), f", {rest} later in the spread" if rest else "")

    async def _batch_prices(self, batch: Batch) -> list[Any] | None:
        try:
            if batch.market == DAM:
                got = await asyncio.to_thread(self.prices.prices, DAM, batch.start, batch.end)
                found = got or None
            else:
                rtm = await asyncio.to_thread(self.prices.prices, RTM, batch.start - 3600, batch.end)
                dam = await asyncio.to_thread(self.prices.prices, DAM, batch.start - 3600, batch.end)
                one = rt_price(batch.start, rtm, dam)
                found = [one] if one is not None else None
        except (PriceSourceError, ValueError, OSError) as exc:
            found, why = None, str(exc)
        else:
            why = f"{self.prices.name} has no {batch.market} price for it"
        if found is None and (batch.market, batch.start) not in self._warned:
            self._warned.add((batch.market, batch.start))
            self.stats.price_misses += 1
            log.warning("market: no %s tenders for %s: %s", batch.market, _window(batch), why)
        return found

    async def _settle_due(self, sites: dict[str, SiteRecord]) -> None:
        if self.meters is None:
            return
        now = self.clock.now()
        ready, given_up = self.core.due_settlements(now)
        for site, start in given_up:
            self.stats.intervals_given_up += 1
            log.warning("market: %s interval %s left unsettled: no complete meter data %.0f s after it",
                        site, utc_time(start), self.config.settle_give_up_s)
        waiting = 0
        for name, starts in ready.items():
            record = sites.get(name)
            if record is None:
                continue  # removed from the registry: its intervals wait in case it comes back
            lo, hi = starts[0] - 3 * RT_STEP_S, starts[-1] + RT_STEP_S + self.config.settle_delay_s + RT_STEP_S
            try:
                if self.meters.blocking:
                    readings = await asyncio.to_thread(self.meters.readings, name, lo, hi)
                else:
                    readings = self.meters.readings(name, lo, hi)
            except MeterReadError as exc:
                log.warning("market: meter data for %s unreadable now: %s", name, exc)
                continue
            items, done = [], []
            for start in starts:
                item = self.core.plan_settlement(record, start, readings)
                if item is None:
                    waiting += 1
                    continue
                items.append(item)
                done.append(start)
            if items:
                self.ledger.append_many(items, now)
                for start in done:
                    self.core.apply_settled(name, start)
                self.stats.intervals_settled += len(items)
                net = sum(body["amountUsd"] for _, _, body in items)
                log.info("market: settled %d interval(s) of %s up to %s: %+.4f $", len(items), name,
                         utc_time(done[-1]), net)
        self.stats.settle_waiting = waiting

    async def _publish_all(self, client: aiomqtt.Client, messages: Sequence[tuple[str, str]]) -> None:
        """Publish at QoS 1 in order, PUBLISH_WINDOW awaiting their PUBACK at a time (shared by every
        batch): not one round trip per message (cloud.mqtt.window)."""
        window = self._publish_window

        async def one(topic: str, payload: str) -> None:
            async with window:
                await client.publish(topic, payload, qos=1)

        await asyncio.gather(*(one(topic, payload) for topic, payload in messages))

    # ------------------------------------------------------------------------ health

    def _summary(self) -> str:
        s = self.stats
        return (f"{s.sites} sites, {s.tenders_published} tenders published ({s.tenders_recorded} recorded), "
                f"{s.transactions_accepted} accepted, {s.transactions_refused} refused, "
                f"{s.transactions_replayed} replayed, {s.intervals_settled} intervals settled, "
                f"{s.settle_waiting} waiting for meter data")

    def _health(self) -> None:
        self.stats.now = self.clock.now()
        if time.monotonic() - self._last_health < self.health_s:
            return
        self._last_health = time.monotonic()
        log.info("market: health at %s: %s", utc_time(self.stats.now), self._summary())
        self._write_stats()

    def _write_stats(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATS_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self.stats), indent=2) + "\n")
        os.replace(tmp, self.state_dir / STATS_FILE)


def _payload(message: aiomqtt.Message) -> bytes:
    return message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()


def _window(batch: Batch) -> str:
    return f"{utc_time(batch.start)}..{utc_time(batch.end)}"

"""`tendril demo`: the whole loop on embedded defaults, faster than real time.

Per site: a simulated house (edge.site) drives a real firmware meter node and is driven by
a real firmware relay node (both MicroPython unix-port processes); the cloud side prices
CAISO LMPs into tenders, schedules each relay with Pyomo + HiGHS, dispatches signed,
expiring commands and ingests everything the devices say. One SimClock paces all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiomqtt
import tendril_wire as wire

from cloud.agent.dispatch import Dispatcher
from cloud.demo.broker import EmbeddedBroker, embedded_broker
from cloud.demo.fleet import DemoSite, make_sites
from cloud.demo.market import demo_market_lines
from cloud.demo.report import write_report
from cloud.demo.summary import DemoSummary, PricePoint, site_result
from cloud.ingest.ingestor import Ingestor
from cloud.ingest.known_devices import KnownDevices
from cloud.market.tenders import TenderConfig, build_tenders, tender_prices
from cloud.mqtt.codec import V311
from cloud.optimizer.relay import schedule_relay
from cloud.settings import parse_broker_url
from cloud.sources.prices import PriceInterval, default_prices, prices_between
from cloud.store.sinks import EmbeddedStore, InfluxSink, Sink
from edge.clock import SimClock

log = logging.getLogger("tendril.demo")
LOCAL = ZoneInfo("America/Los_Angeles")
HOUR = 3600
RT_STEP = 300
STARTUP_S = 2.5  # wall seconds for broker, ingestion and firmware to boot and subscribe
DA_TENDER_VALID_S = 24 * HOUR
COMMAND_GRACE_S = 600.0
OnMessage = Callable[[str, str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class DemoConfig:
    sites: int = 3
    hours: float = 24.0
    speed: float = 1200.0
    start: str = "2024-03-15"  # local date; the bundled CAISO slice covers March 2024
    out: Path = Path("tendril-demo")
    broker: str | None = None  # mqtt://host:port; None = embedded amqtt
    influx_url: str | None = None
    influx_token: str = ""
    influx_org: str = "tendril"
    influx_bucket: str = "tendril"
    pump_kw: float = 1.5
    pump_hours: int = 6
    telemetry_s: int = 60
    progress: bool = True

    def sim_start(self) -> float:
        day = datetime.strptime(self.start, "%Y-%m-%d").replace(tzinfo=LOCAL)
        return day.timestamp()


@dataclass
class Counters:
    tenders: int = 0
    commands: int = 0
    plant_errors: int = 0
    solve_s: list[float] = field(default_factory=list)


def _bundled_prices(market: Literal["DAM", "RTM"], start: float, end: float) -> list[PriceInterval]:
    found = prices_between(default_prices(market), start, end)
    if not found:
        raise ValueError(f"no {market} prices in the bundled data for this window (March 2024 only)")
    return found


async def _publish(client: aiomqtt.Client, topic: str, payload: bytes) -> None:
    await client.publish(topic, payload, qos=1)


async def _tender_loop(
    client: aiomqtt.Client, clock: SimClock, sites: list[DemoSite], rt: list[PriceInterval],
    tconf: TenderConfig, end: float, counters: Counters,
) -> None:
    """Every 5 minutes of simulated time, each site gets its real-time buy and sell tenders."""
    for interval in rt:
        if interval.start >= end:
            break
        await clock.sleep_until(interval.start - 10)  # a tender precedes the interval it prices
        for site in sites:
            for tender in build_tenders(site.site, site.feeder, [interval], "RTM", clock.now(), tconf, RT_STEP,
                                        feeder_load_ratio=site.feeder_load_ratio):
                await _publish(client, wire.tender_topic(site.site), wire.encode(wire.TENDER, tender))
                counters.tenders += 1


async def _dispatch_loop(
    client: aiomqtt.Client, clock: SimClock, sites: list[DemoSite], dispatcher: Dispatcher,
    start: float, end: float, counters: Counters,
) -> None:
    """At each hour boundary each relay is told its scheduled state, valid for that hour."""
    hour = start
    while hour < end:
        await clock.sleep_until(hour)
        index = int((hour - start) // HOUR)
        for site in sites:
            relay = site.schedule[index] if index < len(site.schedule) else 0
            out = dispatcher.command(site.site, site.relay_device, relay, hour + HOUR, clock.now())
            await _publish(client, out.topic, out.payload)
            counters.commands += 1
        hour += HOUR


async def _plant_loop(clock: SimClock, sites: list[DemoSite], end: float, step_s: float, counters: Counters) -> None:
    """The houses' physics: relay pins in, meter power out, every `step_s` simulated seconds."""
    while clock.now() < end:
        now = clock.now()
        for site in sites:
            try:
                site.plant.step(now)
            except OSError as exc:
                counters.plant_errors += 1
                log.warning("plant step for %s failed: %s", site.site, exc)
        await clock.sleep(step_s)


async def _progress_loop(
    clock: SimClock, start: float, end: float, ingestor: Ingestor, dispatcher: Dispatcher, bar_enabled: bool
) -> None:
    """A progress bar on a terminal; otherwise (CI, pipes) a line every 10 % of the run."""
    from tqdm import tqdm

    total_min = int((end - start) // 60)
    next_line = 0.1
    with tqdm(total=total_min, unit="sim-min", disable=not bar_enabled, dynamic_ncols=True) as bar:
        while True:
            done = min(total_min, int((clock.now() - start) // 60))
            bar.update(done - bar.n)
            sim = datetime.fromtimestamp(min(clock.now(), end), LOCAL).strftime("%m-%d %H:%M")
            bar.set_postfix(ingested=ingestor.stats.written, acked=dispatcher.stats.acked_ok, sim=sim)
            if not bar_enabled and done >= next_line * total_min:
                print(f"  {next_line:4.0%}  sim {sim}  ingested {ingestor.stats.written}  "
                      f"commands acked {dispatcher.stats.acked_ok}", flush=True)
                next_line += 0.1
            if done >= total_min:
                return
            await asyncio.sleep(0.25)


def _plan(sites: list[DemoSite], da: list[PriceInterval], tconf: TenderConfig, cfg: DemoConfig,
          counters: Counters) -> None:
    """Day-ahead: price each site's hourly tenders, then schedule its pump with Pyomo + HiGHS."""
    for site in sites:
        buys = [tender_prices(p.lmp_usd_per_mwh, p.start, tconf, site.feeder_load_ratio)[0] for p in da]
        t0 = time.perf_counter()
        hours_needed = min(cfg.pump_hours, len(buys))
        # Two starts a day keeps the pump from short-cycling across cheap hours.
        sched = schedule_relay(buys, HOUR, cfg.pump_kw, hours_needed, max_starts=2)
        counters.solve_s.append(time.perf_counter() - t0)
        site.schedule = list(sched.on)
        site.da_buy = buys


@dataclass
class Services:
    """The cloud side's moving parts for one run, torn down in reverse order."""

    host: str
    port: int
    sink: Sink
    store: EmbeddedStore | None
    broker: EmbeddedBroker | None
    ingestor: Ingestor
    ingest_task: asyncio.Task[None]
    stop: asyncio.Event

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ingest_task, timeout=15)
        await self.sink.close()
        if self.broker is not None:
            await self.broker.stop()


async def _start_services(cfg: DemoConfig, out: Path, on_message: OnMessage, clock: SimClock,
                         devices: Iterable[tuple[str, str]]) -> Services:
    broker = None
    if cfg.broker:
        host, port = parse_broker_url(cfg.broker)
    else:
        broker = embedded_broker()
        await broker.start()
        host, port = broker.host, broker.port
    store = None
    sink: Sink
    if cfg.influx_url:
        sink = InfluxSink(cfg.influx_url, cfg.influx_token, cfg.influx_org, cfg.influx_bucket)
    else:
        store = EmbeddedStore(out / "telemetry.lp")
        sink = store
    # amqtt neither speaks MQTT 5 nor refuses it cleanly (no CONNACK), so the embedded broker
    # gets 3.1.1 up front; an external broker is offered 5 with fallback.
    protocol = V311 if broker is not None else None
    # Only this run's devices are accepted: anything else on the broker is a dead letter.
    ingestor = Ingestor(host, port, sink, clock=clock, on_message=on_message, protocol=protocol,
                        devices=KnownDevices(devices), health_interval_s=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(ingestor.run(stop))
    try:
        await asyncio.wait_for(ingestor.ready.wait(), timeout=30)
    except TimeoutError:
        stop.set()
        raise ValueError(f"ingestion could not subscribe at mqtt://{host}:{port} within 30 s") from None
    return Services(host, port, sink, store, broker, ingestor, task, stop)


async def _wait_online(online: set[tuple[str, str]], expected: set[tuple[str, str]], sites: list[DemoSite],
                       timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not expected <= online:
        if time.monotonic() > deadline:
            missing = sorted(expected - online)
            logs = "; ".join(p.log_text()[-300:] for s in sites for p in s.processes if not p.alive)
            raise ValueError(f"firmware nodes not online after {timeout_s:.0f} s: {missing} {logs}")
        await asyncio.sleep(0.02)


async def _publish_day_ahead(client: aiomqtt.Client, sites: list[DemoSite], da: list[PriceInterval],
                             tconf: TenderConfig, now: float, counters: Counters) -> None:
    """The hourly day-ahead tenders each site's plan was made against, valid until their hour starts."""
    for site in sites:
        for tender in build_tenders(site.site, site.feeder, da, "DAM", now, tconf, DA_TENDER_VALID_S,
                                    feeder_load_ratio=site.feeder_load_ratio):
            await _publish(client, wire.tender_topic(site.site), wire.encode(wire.TENDER, tender))
            counters.tenders += 1


async def run_demo(cfg: DemoConfig) -> DemoSummary:
    start = cfg.sim_start()
    end = start + cfg.hours * HOUR
    da = _bundled_prices("DAM", start, end)
    rt = _bundled_prices("RTM", start, end)
    tconf = TenderConfig()
    out = cfg.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    sites = make_sites(cfg.sites, out, start, cfg.pump_kw * 1000.0)
    # One key per device, made for this run only: no key is ever in the repository.
    keys = {(s.site, d): secrets.token_bytes(32) for s in sites for d in (s.meter_device, s.relay_device)}
    # Each hourly command stays valid COMMAND_GRACE_S past its hour, so a late successor (a busy
    # machine at 1200x loses whole simulated minutes) never lets the relay lapse to its safe
    # default and then refuse the next ON for its minimum off time.
    dispatcher = Dispatcher(keys, grace_s=COMMAND_GRACE_S)
    counters = Counters()
    _plan(sites, da, tconf, cfg, counters)

    online: set[tuple[str, str]] = set()

    def on_message(site: str, device: str, kind: str, msg: dict[str, Any]) -> None:
        if kind == wire.ACK:
            dispatcher.on_ack(site, device, msg)
        elif kind == wire.STATUS:
            (online.add if msg["state"] == wire.ONLINE else online.discard)((site, device))

    # Simulated time reaches `start` only STARTUP_S after now, so the cloud listens and every
    # node is connected and subscribed before the first tender or command; what the nodes
    # report earlier is stamped before `start` and left out of the summary.
    clock = SimClock(sim_origin=start, speed=cfg.speed, real_origin=time.time() + STARTUP_S)
    services = await _start_services(cfg, out, on_message, clock, keys)
    wall0 = time.monotonic()
    try:
        for site in sites:
            site.start_firmware(services.host, services.port, keys, clock.env_value(), cfg.telemetry_s)
        plant = asyncio.create_task(_plant_loop(clock, sites, end, 10.0, counters))
        await _wait_online(online, set(keys), sites, timeout_s=30)
        async with aiomqtt.Client(services.host, services.port,
                                  identifier=f"tendril-cloud-{secrets.token_hex(3)}") as client:
            await _publish_day_ahead(client, sites, da, tconf, clock.now(), counters)
            tasks = [
                plant,
                asyncio.create_task(_tender_loop(client, clock, sites, rt, tconf, end, counters)),
                asyncio.create_task(_dispatch_loop(client, clock, sites, dispatcher, start, end, counters)),
                asyncio.create_task(_progress_loop(clock, start, end, services.ingestor, dispatcher,
                                                   cfg.progress)),
            ]
            await clock.sleep_until(end)
            await asyncio.sleep(max(1.0, 3 * cfg.telemetry_s / cfg.speed))  # the last telemetry and acks
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        for site in sites:
            site.stop_firmware()
        await asyncio.sleep(0.5)  # the offline statuses
        await services.close()

    summary = _summarise(cfg, services, dispatcher, counters, sites, rt, tconf, start, end,
                         time.monotonic() - wall0)
    (out / "summary.json").write_text(summary.to_json())
    if services.store is not None:
        # Prices, tenders, schedules and bills go to the same store, so the report and the
        # dashboards read one source.
        services.store.add_lines(demo_market_lines(sites, da, rt, tconf, services.store, start, end))
        await services.store.close()
        write_report(out, services.store, summary, start=start, end=end)
    return summary


def _summarise(cfg: DemoConfig, services: Services, dispatcher: Dispatcher, counters: Counters,
               sites: list[DemoSite], rt: list[PriceInterval], tconf: TenderConfig, start: float,
               end: float, wall_s: float) -> DemoSummary:
    stats = services.ingestor.stats
    summary = DemoSummary(
        sim_hours=cfg.hours,
        wall_seconds=round(wall_s, 2),
        messages_ingested=stats.written,
        messages_rejected=sum(stats.rejected.values()),
        tenders_issued=counters.tenders,
        commands_sent=dispatcher.stats.sent,
        commands_acked=dispatcher.stats.acked_ok,
        commands_refused=sum(dispatcher.stats.refused.values()),
        relay_switches=0,
        firmware_nodes=sum(len(s.processes) for s in sites),
    )
    store = services.store
    if store is None:  # an external store: the per-site table is for its own dashboards
        return summary
    lo, hi = int(start * 1e9), int(end * 1e9)
    for site in sites:
        prices = [PricePoint(p.start, p.duration_s,
                             tender_prices(p.lmp_usd_per_mwh, p.start, tconf, site.feeder_load_ratio)[0])
                  for p in rt]
        meter = [(pt.ts_ns / 1e9, float(pt.fields["energy_wh"]))
                 for pt in store.points("meter", site=site.site) if lo <= pt.ts_ns <= hi]
        relay = [(pt.ts_ns / 1e9, int(pt.fields["relay"]))
                 for pt in store.points("relay", site=site.site) if lo <= pt.ts_ns <= hi]
        summary.sites.append(site_result(site.site, meter, relay, prices))
    summary.relay_switches = sum(s.relay_switches for s in summary.sites)
    return summary


def format_window(cfg: DemoConfig) -> str:
    s = datetime.fromtimestamp(cfg.sim_start(), LOCAL)
    e = s + timedelta(hours=cfg.hours)
    return f"{s:%Y-%m-%d %H:%M} -> {e:%Y-%m-%d %H:%M} America/Los_Angeles"

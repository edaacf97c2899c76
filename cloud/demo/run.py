"""`tendril demo`: the whole loop on embedded defaults, faster than real time.

The demo keeps no loop of its own: it composes the services an operator deploys, in one process
on one simulated clock, around a registered fleet of simulated houses:

    firmware nodes (MicroPython unix port: meter + pump, heat-pump and EV relays per site)
        <-> MQTT broker (embedded amqtt, or --broker)
    tendril ingest  (cloud.ingest)  telemetry -> store (embedded, or --influx-url)
    tendril market  (cloud.market)  CAISO replay -> tenders; transactions -> confirms; ledger;
                                    ex-post settlement from the stored meters
    tendril agent   (cloud.agent)   tenders -> Pyomo plan -> transactions + signed commands

Only the houses' physics (edge.house) is the demo's own: it stands where the real loads would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import tendril_wire as wire

from tendril_transactive.cloud.agent.core import AgentOptions
from tendril_transactive.cloud.agent.service import AgentService, ServiceOptions
from tendril_transactive.cloud.billing.tariff import default_tariff
from tendril_transactive.cloud.demo.broker import EmbeddedBroker, embedded_broker, write_password_file
from tendril_transactive.cloud.demo.fleet import DemoSite, make_sites
from tendril_transactive.cloud.demo.ledger_summary import fleet_market
from tendril_transactive.cloud.demo.market import demo_market_lines
from tendril_transactive.cloud.demo.progress import Progress
from tendril_transactive.cloud.demo.report import write_report
from tendril_transactive.cloud.demo.summary import DemoSummary, PricePoint, site_result
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.cloud.ingest.ingestor import Ingestor
from tendril_transactive.cloud.ingest.known_devices import KnownDevices
from tendril_transactive.cloud.ledger.chain import Ledger
from tendril_transactive.cloud.market.meters import EmbeddedMeterReader
from tendril_transactive.cloud.market.pricing import StaticFeederRatios
from tendril_transactive.cloud.market.schedule import MarketConfig
from tendril_transactive.cloud.market.service import MarketService
from tendril_transactive.cloud.market.tenders import TenderConfig, tender_prices
from tendril_transactive.cloud.mqtt.codec import V311
from tendril_transactive.cloud.settings import DEFAULT_RT_SPREAD_S, BrokerSettings, parse_broker_url
from tendril_transactive.cloud.sources.prices import default_prices, prices_between
from tendril_transactive.cloud.store.sinks import EmbeddedStore, InfluxSink, Sink
from tendril_transactive.edge.clock import SimClock

log = logging.getLogger("tendril.demo")
LOCAL = ZoneInfo("America/Los_Angeles")
HOUR = 3600
STARTUP_S = 3.0  # wall seconds for broker, services and firmware to boot and subscribe
SERVICE_USERS = ("ingest", "market", "agent")


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
    telemetry_s: int = 60
    progress: bool = True

    def sim_start(self) -> float:
        day = datetime.strptime(self.start, "%Y-%m-%d").replace(tzinfo=LOCAL)
        return day.timestamp()


def _check_prices(start: float, end: float) -> None:
    for market in ("DAM", "RTM"):
        if not prices_between(default_prices(market), start, end):
            raise ValueError(f"no {market} prices in the bundled data for this window (March 2024 only)")


@dataclass
class Run:
    """The run's moving parts, torn down in reverse order."""

    cfg: DemoConfig
    out: Path
    clock: SimClock
    registry: Registry
    sites: list[DemoSite]
    sink: Sink | None = None
    store: EmbeddedStore | None = None
    broker: EmbeddedBroker | None = None
    broker_settings: BrokerSettings | None = None
    ingestor: Ingestor | None = None
    market: MarketService | None = None
    agent: AgentService | None = None
    ledger: Ledger | None = None
    online: set[tuple[str, str]] = field(default_factory=set)
    passwords: dict[str, str] = field(default_factory=dict)  # service role -> this run's password
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def user(self, role: str) -> str | None:
        return f"tendril-{role}" if role in self.passwords else None

    def as_user(self, role: str) -> BrokerSettings:
        assert self.broker_settings is not None
        b = self.broker_settings
        return BrokerSettings(b.host, b.port, self.user(role), self.passwords.get(role))

    def on_message(self, site: str, device: str, kind: str, msg: dict[str, Any]) -> None:
        if kind == wire.STATUS:
            (self.online.add if msg["state"] == wire.ONLINE else self.online.discard)((site, device))

    async def start_service(self, name: str, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
                            ready: asyncio.Event, timeout_s: float = 30.0) -> None:
        task: asyncio.Task[None] = asyncio.create_task(run(self.stop), name=name)
        self.tasks.append(task)
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if task in done and task.exception() is not None:
                raise ValueError(f"{name} failed to start: {task.exception()}")
            raise ValueError(f"{name} was not ready within {timeout_s:.0f} s")


async def _start(run: Run) -> None:
    cfg = run.cfg
    if cfg.broker:
        host, port = parse_broker_url(cfg.broker)
        run.passwords = {}  # the operator's broker: its own accounts (see --broker's help)
    else:
        # Every client of the embedded broker logs in: devices with their registry passwords,
        # the services with passwords drawn for this run.
        run.passwords = {name: secrets.token_urlsafe(18) for name in SERVICE_USERS}
        users = {f"tendril-{role}": pw for role, pw in run.passwords.items()}
        users.update({d.username: run.registry.secrets_for(d.site, d.device).mqtt_password
                      for d in run.registry.devices})
        run.broker = embedded_broker(write_password_file(run.out / "broker" / "passwd", users))
        await run.broker.start()
        host, port = run.broker.host, run.broker.port
    run.broker_settings = BrokerSettings(host, port)
    if cfg.influx_url:
        run.sink = InfluxSink(cfg.influx_url, cfg.influx_token, cfg.influx_org, cfg.influx_bucket)
        run.store = EmbeddedStore(run.out / "telemetry.lp")  # the market settles from this copy
    else:
        run.store = EmbeddedStore(run.out / "telemetry.lp")
        run.sink = run.store
    # amqtt neither speaks MQTT 5 nor refuses it cleanly (no CONNACK), so the embedded broker
    # gets 3.1.1 up front; an external broker is offered 5 with fallback.
    protocol = V311 if run.broker is not None else None
    devices = [(d.site, d.device) for d in run.registry.devices]
    run.ingestor = Ingestor(host, port, run.sink, clock=run.clock, on_message=run.on_message, protocol=protocol,
                            devices=KnownDevices(devices), health_interval_s=2.0, username=run.user("ingest"),
                            password=run.passwords.get("ingest"))
    await run.start_service("ingest", run.ingestor.run, run.ingestor.ready)

    run.ledger = Ledger(f"sqlite:///{run.out / 'ledger.db'}")
    ratios = {s.feeder: s.feeder_load_ratio for s in run.sites}
    # Real-time tenders go out almost a whole interval ahead: at 1200x, 290 simulated seconds are
    # 0.24 s of wall time for the agent to plan and answer, on a machine running every firmware node.
    market_cfg = MarketConfig(rt_lead_s=290.0, rt_spread_s=DEFAULT_RT_SPREAD_S, settle_delay_intervals=2)
    run.market = MarketService(lambda: run.registry.sites, run.as_user("market"), run.ledger,
                               meters=EmbeddedMeterReader(run.store), pricing=StaticFeederRatios(ratios),
                               clock=run.clock, config=market_cfg, client_id="tendril-demo-market",
                               state_dir=run.out / "market", max_sleep_s=1.0)

    agent_opts = ServiceOptions(worker_id="demo", state_dir=run.out / "agent",
                                agent=AgentOptions(time_limit_s=2.0, tx_resend_s=60.0, cmd_retry_s=240.0,
                                                   command_grace_s=600.0))
    run.agent = AgentService.from_registry(run.registry.root, run.as_user("agent"), run.clock, options=agent_opts)


async def _wait_online(run: Run, timeout_s: float) -> None:
    expected = {(s.site, d) for s in run.sites for d in s.devices}
    deadline = time.monotonic() + timeout_s
    while not expected <= run.online:
        if time.monotonic() > deadline:
            missing = sorted(expected - run.online)
            logs = "; ".join(p.log_text()[-300:] for s in run.sites for p in s.processes if not p.alive)
            raise ValueError(f"firmware nodes not online after {timeout_s:.0f} s: {missing} {logs}")
        await asyncio.sleep(0.02)


async def _plant_loop(run: Run, end: float, step_s: float) -> None:
    """The houses' physics: relay pins in, meter power out, every `step_s` simulated seconds."""
    while run.clock.now() < end:
        now = run.clock.now()
        for site in run.sites:
            try:
                site.house.step(now)
            except OSError as exc:
                log.warning("house step for %s failed: %s", site.site, exc)
        await run.clock.sleep(step_s)


def _sim_label(t: float) -> str:
    return datetime.fromtimestamp(t, LOCAL).strftime("%m-%d %H:%M")


async def _progress_loop(run: Run, progress: Progress, start: float, end: float) -> None:
    """Live counts until the run stops: through the drain too, where the bar's counts still move."""
    assert run.ingestor is not None and run.agent is not None
    while not run.stop.is_set():
        now = run.clock.now()
        progress.update(int((now - start) // 60), _sim_label(min(now, end)), run.ingestor.stats.written,
                        run.agent.stats.confirmed, run.agent.dispatcher.stats.acked_ok)
        await asyncio.sleep(0.25)


async def run_demo(cfg: DemoConfig) -> DemoSummary:
    start = cfg.sim_start()
    end = start + cfg.hours * HOUR
    _check_prices(start, end)
    out = cfg.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # A registry of this run only: fresh keys and passwords (0600 files), no secret in the repository.
    registry = Registry(out / "registry")
    sites = make_sites(cfg.sites, out, start, registry)
    # Simulated time reaches `start` only STARTUP_S after now, so every service listens and every
    # node is connected before the first tender; what nodes report earlier is left out of the summary.
    clock = SimClock(sim_origin=start, speed=cfg.speed, real_origin=time.time() + STARTUP_S)
    run = Run(cfg, out, clock, registry, sites)
    wall0 = time.monotonic()
    with Progress(int((end - start) // 60), bar=cfg.progress) as progress:
        try:
            await _start(run)
            assert run.broker_settings is not None and run.market is not None and run.agent is not None
            for site in sites:
                site.start_firmware(run.broker_settings.host, run.broker_settings.port, registry,
                                    clock.env_value(), cfg.telemetry_s, credentials=run.broker is not None)
            run.tasks.append(asyncio.create_task(_plant_loop(run, end, 10.0)))
            await _wait_online(run, timeout_s=30)
            await run.start_service("agent", run.agent.run, run.agent.ready)
            await run.start_service("market", run.market.run, run.market.ready)
            run.tasks.append(asyncio.create_task(_progress_loop(run, progress, start, end)))
            await clock.sleep_until(end)
            # the last telemetry, acks, confirms and the settlement of the last intervals
            await clock.sleep(3 * 300 + 3 * cfg.telemetry_s)
        finally:
            for site in sites:
                site.stop_firmware()
            await asyncio.sleep(0.5)  # the offline statuses
            run.stop.set()
            for task in reversed(run.tasks):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=15)
            if run.sink is not None and run.sink is not run.store:
                await run.sink.close()
            if run.broker is not None:
                await run.broker.stop()

        summary = _summarise(run, start, end, time.monotonic() - wall0)
        assert run.agent is not None
        progress.finish(_sim_label(end), summary, run.agent.stats.confirmed)
    (out / "summary.json").write_text(summary.to_json())
    if run.store is not None:
        # Prices, tenders and bills go to the same store, so the report and the dashboards read one source.
        tconf = TenderConfig()
        da = prices_between(default_prices("DAM"), start, end)
        rt = prices_between(default_prices("RTM"), start, end)
        run.store.add_lines(demo_market_lines(sites, da, rt, tconf, run.store, start, end))
        await run.store.close()
        write_report(out, run.store, summary, start=start, end=end)
    if run.ledger is not None:
        run.ledger.engine.dispose()
    return summary


def _summarise(run: Run, start: float, end: float, wall_s: float) -> DemoSummary:
    assert run.ingestor is not None and run.agent is not None and run.market is not None
    stats = run.ingestor.stats
    dispatch = run.agent.dispatcher.stats
    summary = DemoSummary(
        sim_hours=run.cfg.hours,
        wall_seconds=round(wall_s, 2),
        messages_ingested=stats.written,
        messages_rejected=sum(stats.rejected.values()),
        tenders_issued=run.market.stats.tenders_published,
        commands_sent=dispatch.sent,
        commands_acked=dispatch.acked_ok,
        commands_refused=sum(dispatch.refused.values()),
        relay_switches=0,
        firmware_nodes=sum(len(s.processes) for s in run.sites),
    )
    if run.ledger is not None:
        records = [(r.kind, r.site, r.body) for r in run.ledger.records()]
        subs = {s.site: run.registry.site(s.site).subscription_kwh_by_hour for s in run.sites}
        summary.market = fleet_market(records, default_tariff(), subs, (start, end))
        summary.ledger_ok = run.ledger.verify().ok
    store = run.store
    if store is None:
        return summary
    lo, hi = int(start * 1e9), int(end * 1e9)
    tconf = TenderConfig()
    rt = prices_between(default_prices("RTM"), start, end)
    for site in run.sites:
        prices = [PricePoint(p.start, p.duration_s,
                             tender_prices(p.lmp_usd_per_mwh, p.start, tconf, site.feeder_load_ratio)[0])
                  for p in rt]
        meter = [(pt.ts_ns / 1e9, float(pt.fields["energy_wh"]))
                 for pt in store.points("meter", site=site.site) if lo <= pt.ts_ns <= hi]
        relay = [(pt.ts_ns / 1e9, int(pt.fields["relay"]))  # the pool pump: the summary's relay column
                 for pt in store.points("relay", site=site.site)
                 if lo <= pt.ts_ns <= hi and pt.tags.get("device") == "pump"]
        summary.sites.append(site_result(site.site, meter, relay, prices))
    summary.relay_switches = sum(s.relay_switches for s in summary.sites)
    return summary


def format_window(cfg: DemoConfig) -> str:
    s = datetime.fromtimestamp(cfg.sim_start(), LOCAL)
    e = s + timedelta(hours=cfg.hours)
    return f"{s:%Y-%m-%d %H:%M} -> {e:%Y-%m-%d %H:%M} America/Los_Angeles"

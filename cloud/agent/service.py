"""`AgentService`: the agent as a long-running MQTT service (one worker).

Subscribes (QoS 1, persistent session under a stable client id) to every site's tender and
confirm topics, every device's ack topic and the workers' presence topic, and on a second
connection (cloud.agent.intake, QoS 0) to every device's telemetry and status; acts only for the
sites it owns (cloud.agent.ownership over the live workers); publishes transactions on the
site's transaction topic and signed commands on the devices' cmd topics.

I/O only: decisions are cloud.agent.core's, solves the Planner's (run in a thread so acks and
tenders keep flowing meanwhile), command signing and retries cloud.agent.dispatch's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import tendril_wire as wire

from tendril_transactive.cloud.agent.book import Rejected
from tendril_transactive.cloud.agent.config import SiteConfig
from tendril_transactive.cloud.agent.core import AgentOptions, Decision, Outdoor, SharedOutdoor, SiteAgent
from tendril_transactive.cloud.agent.dispatch import DeviceKey, Dispatcher
from tendril_transactive.cloud.agent.intake import DeviceIntake
from tendril_transactive.cloud.agent.ownership import owned
from tendril_transactive.cloud.agent.planner import InProcessPlanner, Job, Planner, PoolPlanner
from tendril_transactive.cloud.agent.store import StateStore
from tendril_transactive.cloud.mqtt.message import Received
from tendril_transactive.cloud.mqtt.window import PUBLISH_WINDOW, windowed_client
from tendril_transactive.cloud.settings import BrokerSettings
from tendril_transactive.edge.clock import Clock

log = logging.getLogger("tendril.agent")

DEAD_LETTER_PAYLOAD_BYTES = 1024
RECONNECT_MAX_S = 10.0
STUCK_AFTER_S = 60.0  # wall seconds without a decision while tenders wait: report where it waits
PLAN_CHUNK = 20  # real-time jobs per solver call: answers go out chunk by chunk
PRUNE_EVERY_S = 60.0  # clock seconds between passes that drop expired tenders and old trades
FLUSH_PER_TICK = 100  # state files written per tick at most (tick_s 0.1 s: 1,000 sites a second)
SUBSCRIBE_BATCH = 100  # filters per SUBSCRIBE packet (a broker may limit a packet's size)


@dataclass(frozen=True)
class ServiceOptions:
    worker_id: str = "w0"
    client_id: str | None = None  # default session_client_id(...): stable, so the session persists
    state_dir: Path | None = None
    agent: AgentOptions = field(default_factory=AgentOptions)
    tick_s: float = 0.1  # real seconds between housekeeping passes (retries, intervals without tender)
    progress_s: float = 10.0  # real seconds between progress log lines
    stats_file: Path | None = None  # rewritten with the counters every progress interval
    presence_settle_s: float = 0.5  # real seconds to collect the other workers' presence at start
    solver_processes: int = 0  # > 0: a PoolPlanner of that many processes instead of a thread

    def __post_init__(self) -> None:
        wire.check_id(self.worker_id, "worker")


@dataclass
class ServiceStats:
    tenders: int = 0
    tenders_answered: int = 0  # real-time intervals decided from a tender (plan or last plan)
    no_tender: int = 0  # intervals run subscription-only
    solve_failures: int = 0
    transactions_sent: int = 0
    transactions_resent: int = 0
    confirmed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    commands_sent: int = 0
    commands_retried: int = 0
    command_errors: int = 0
    connects: int = 0
    ownership_changes: int = 0


def session_client_id(username: str | None, password: str | None, worker: str) -> str:
    """The worker's MQTT client id: stable across restarts (its persistent session holds the
    tenders and confirms that arrive while it is down) and, with a password, not guessable.

    The broker cannot bind an agent user to one client id (its workers, up to --workers N and any
    --worker-id, each need their own), and a client that connects with another's id takes over
    its session. So the id carries a tag only a holder of this user's password can compute: a
    third-party agent or Home Assistant login that knows the name pattern cannot knock a worker
    off (tests/integration/test_mosquitto_acl.py tries it). Without a password (a development
    broker) the id is the plain name.
    """
    base = f"{username or 'tendril-agent'}-{worker}"
    if not password:
        return base
    tag = hashlib.sha256(f"tendril-agent-client-id\0{username}\0{worker}\0{password}".encode()).hexdigest()
    return f"{base}-{tag[:20]}"


def _failed(code: object) -> bool:
    """A SUBACK return code (3.1.1: an int) or reason code (5: .value) at or above 0x80 is a refusal."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


def _notes(site: str, notes: tuple[str, ...] | list[str], seen: dict[tuple[str, str], float], now: float) -> None:
    """Log a site's degradation notes, each kind at most once an hour (they repeat every interval)."""
    for note in notes:
        key = (site, note.split(":")[0])
        if now - seen.get(key, -1e18) >= 3600:
            seen[key] = now
            log.warning("%s: %s", site, note)


class AgentService:
    def __init__(self, sites: Mapping[str, SiteConfig], keys: Mapping[DeviceKey, bytes], broker: BrokerSettings,
                 clock: Clock, planner: Planner | None = None, options: ServiceOptions | None = None,
                 outdoor: Outdoor | None = None) -> None:
        """`sites`: every site any worker may serve (this one serves its share); `keys`: HMAC
        command key per (site, relay device); `planner`: default an InProcessPlanner with the
        agent's time limit; `outdoor`: weather forecast (default the bundled TMY3 year)."""
        self.sites = dict(sites)
        self.broker = broker
        self.clock = clock
        self.options = options or ServiceOptions()
        if planner is None and self.options.solver_processes > 0:
            planner = PoolPlanner([c.spec for c in self.sites.values()], self.options.solver_processes,
                                  self.options.agent.time_limit_s)
        self.planner: Planner = planner or InProcessPlanner(
            {s: c.spec for s, c in self.sites.items()}, self.options.agent.time_limit_s)
        if outdoor is None:
            from tendril_transactive.cloud.sources.weather import load_weather
            outdoor = load_weather()
        self.outdoor = SharedOutdoor(outdoor)
        limits = {(c.site, d): lim for c in self.sites.values() for d, lim in c.limits.items()}
        self.dispatcher = Dispatcher(keys, limits=limits)
        self.store = StateStore(self.options.state_dir)
        self.me = self.options.worker_id
        self.live: set[str] = set()
        self.agents: dict[str, SiteAgent] = {}
        self.stats = ServiceStats()
        self.ready = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._ready_rt: dict[str, float] = {}  # site -> interval start with both RT tenders in
        self._planning: set[str] = set()
        self._progress_mark: tuple[int, int] = (0, 0)
        self._progress_at = time.monotonic()
        self._stuck_reported = False
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._seen_notes: dict[tuple[str, str], float] = {}
        self._silent_reported: set[DeviceKey] = set()
        self._publish_window = asyncio.Semaphore(PUBLISH_WINDOW)
        self._journaled: set[str] = set()  # sites whose transaction journal may hold entries
        self._dirty: set[str] = set()  # sites whose state file is behind (written every tick)
        self._pruned_at = -1e18
        # One thread for every solve: HiGHS keeps per-thread scheduler state, and the event loop
        # keeps serving acks and tenders while a round is solved.
        self._solver_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tendril-plan")
        b = self.broker
        self.client_id = self.options.client_id or session_client_id(b.username, b.password, self.me)
        self.intake = DeviceIntake(b, self.client_id, self.sites, lambda site: site in self.agents, self._on_reading)

    @classmethod
    def from_registry(cls, root: Path, broker: BrokerSettings, clock: Clock, planner: Planner | None = None,
                      options: ServiceOptions | None = None, outdoor: Outdoor | None = None) -> AgentService:
        """Sites and command keys from a registry folder; ConfigError/RegistryError naming what is wrong."""
        from tendril_transactive.cloud.agent.config import site_config
        from tendril_transactive.cloud.devices.registry import Registry

        reg = Registry(root)
        sites = {r.site: site_config(r, reg.site_devices(r.site)) for r in reg.sites}
        keys = {(d.site, d.device): reg.secrets_for(d.site, d.device).key
                for d in reg.devices if d.type == wire.DEVICE_RELAY}
        return cls(sites, keys, broker, clock, planner, options, outdoor)

    @property
    def owned(self) -> set[str]:
        return set(self.agents)

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; reconnects after broker outages."""
        delay = 0.5
        intake = asyncio.create_task(self.intake.run(stop))
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = 0.5
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                log.warning("worker %s: broker connection lost (%s); reconnecting in %.1f s", self.me, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        with contextlib.suppress(asyncio.CancelledError):
            await intake
        for site in list(self.agents):
            self._write_state(site)
        # The solver thread first (what is queued is dropped, a solve under way ends within its
        # time limit), then the planner: closing a PoolPlanner under a thread that waits on its
        # pipes left that thread waiting out the job's whole budget, and the interpreter joins
        # it at exit, so a SIGTERM sometimes took 20 s.
        self.planner.cancel()
        await asyncio.to_thread(self._solver_thread.shutdown, True, cancel_futures=True)
        self.planner.close()
        self._write_stats()

    async def _session(self, stop: asyncio.Event) -> None:
        b = self.broker
        presence = wire.agent_topic(self.me)
        client_id = self.client_id
        will = aiomqtt.Will(presence, b"", qos=1, retain=True)  # kill -9: the broker clears us at once
        async with windowed_client(b.host, b.port, username=b.username, password=b.password, identifier=client_id,
                                   clean_session=False, will=will, keepalive=15, tls_context=b.tls) as client:
            self._client = client
            self.stats.connects += 1
            await self._subscribe(client)
            await client.publish(presence, self._presence(), qos=1, retain=True)
            reader = asyncio.create_task(self._read(client))
            await asyncio.sleep(self.options.presence_settle_s)  # the retained presences arrive first
            self.live.add(self.me)
            self._rebalance()
            log.info("worker %s connected to mqtt://%s:%d as %s; %d live workers, owning %d of %d sites",
                     self.me, b.host, b.port, client_id, len(self.live), len(self.agents), len(self.sites))
            self.ready.set()
            tasks = [reader, asyncio.create_task(self._plan_loop()), asyncio.create_task(self._tick_loop()),
                     asyncio.create_task(self._progress_loop())]
            stopper = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                for task in [*tasks, stopper]:
                    task.cancel()
                for task in [*tasks, stopper]:
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task
            if stop.is_set():
                await client.publish(presence, b"", qos=1, retain=True)  # a clean stop clears itself
                log.info("worker %s stopped; presence cleared", self.me)
            self._client = None

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Per site, not `+`: the broker grants an agent user its own sites' topics only
        (cloud.devices.mosquitto), and the dynamic-security plugin refuses a wildcard filter over
        all sites with a SUBACK failure, not an error, so every refusal is checked and logged.
        Telemetry and status come on the intake's connection (cloud.agent.intake)."""
        filters = [(wire.agent_filter(), 1)]
        for site in sorted(self.sites):
            filters += [(wire.site_topic(site, wire.TENDER), 1), (wire.site_topic(site, wire.CONFIRM), 1),
                        (wire.device_filter(wire.ACK, site), 1)]
        refused = []
        for i in range(0, len(filters), SUBSCRIBE_BATCH):
            batch = filters[i:i + SUBSCRIBE_BATCH]
            granted = await client.subscribe(batch)
            refused += [f for (f, _), code in zip(batch, granted, strict=False) if _failed(code)]
        if refused:
            log.error("worker %s: the broker refused %d subscription(s), e.g. %s: this user may not serve those sites",
                      self.me, len(refused), ", ".join(refused[:3]))

    def _presence(self) -> bytes:
        return json.dumps({"worker": self.me, "pid": os.getpid(), "since": self.clock.now()}).encode()

    # ------------------------------------------------------------------ ownership

    def _rebalance(self) -> None:
        if self.me not in self.live:
            return  # not settled yet
        want = owned(self.sites, self.live, self.me)
        now = self.clock.now()
        gained, lost = want - set(self.agents), set(self.agents) - want
        for site in sorted(lost):
            self._write_state(site)
            del self.agents[site]
            self._ready_rt.pop(site, None)
            forget = getattr(self.planner, "forget", None)
            if forget is not None:
                forget(site)
        for site in sorted(gained):
            agent = SiteAgent(self.sites[site], self.options.agent, self.outdoor)
            data = self.store.load(site)
            if data is not None:
                try:
                    agent.load_json(data, now)
                    for device, seq in data.get("seq", {}).items():
                        self.dispatcher.learn_seq(site, device, int(seq))
                except (ValueError, TypeError, KeyError) as exc:
                    log.error("%s: agent state not usable (%s); starting afresh", site, exc)
                    agent = SiteAgent(self.sites[site], self.options.agent, self.outdoor)
            journal = self.store.load_sent(site)
            if journal:
                adopted = agent.book.adopt_sent(journal)
                if adopted:
                    log.info("%s: %d transaction(s) sent by the last owner after its last state write, "
                             "taken from its journal", site, adopted)
                self._journaled.add(site)
                self._save(site)
            self.agents[site] = agent
        if gained or lost:
            self.stats.ownership_changes += 1
            log.info("worker %s: live workers %s; owns %d sites (+%s -%s)", self.me, sorted(self.live),
                     len(self.agents), sorted(gained), sorted(lost))
            self._write_stats()

    def _on_presence(self, worker: str, payload: bytes) -> None:
        if payload:
            self.live.add(worker)
        else:
            self.live.discard(worker)
            if worker == self.me and self._client is not None:
                # an old session's will (e.g. after a takeover of our client id): we are alive
                asyncio.get_running_loop().create_task(
                    self._publish(wire.agent_topic(self.me), self._presence(), retain=True))
                self.live.add(worker)
        self._rebalance()

    # ------------------------------------------------------------------ receiving

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
            await self._handle(str(message.topic), payload)

    async def _handle(self, topic: str, payload: bytes) -> None:
        now = self.clock.now()
        prefix = wire.agent_filter()[:-1]
        if topic.startswith(prefix):
            self._on_presence(topic[len(prefix):], payload)
            return
        try:
            site, device, kind = wire.parse_topic(topic)
        except wire.ContractError:
            return  # not ours to judge: only subscribed filters arrive here
        if kind in (wire.TENDER, wire.CONFIRM):
            if site in self.agents:
                await self._site_message(self.agents[site], kind, topic, payload, now)
            elif site not in self.sites and self.me in self.live and \
                    owned([site], self.live, self.me):  # exactly one worker reports a stranger
                await self._dead_letter("unknown_site", f"site {site} is not in the registry", topic, payload, now)
            return
        agent = self.agents.get(site)
        if agent is None:
            return
        try:
            msg = wire.decode(kind, payload)
        except wire.ContractError:
            return  # ingestion dead-letters device messages; the agent just does not use them
        if kind == wire.ACK:
            out = self.dispatcher.on_ack(site, device, msg)
            if out is not None and not msg["ok"] and msg["reason"] != wire.REFUSE_REPLAYED:
                log.warning("%s/%s refused command %s: %s", site, device, msg["id"], msg["reason"])

    def _on_reading(self, r: Received) -> None:
        agent = self.agents.get(r.site)
        if agent is not None:
            agent.observe(r.device, r.kind, r.msg, self.clock.now())

    async def _site_message(self, agent: SiteAgent, kind: str, topic: str, payload: bytes, now: float) -> None:
        try:
            msg = wire.decode(kind, payload)
            if kind == wire.TENDER:
                self.stats.tenders += 1
                start = agent.on_tender(msg, now)
                if start is not None:
                    self._ready_rt[agent.site] = start
                    self._wake.set()
                elif agent.da_dirty:
                    self._wake.set()
                return
            outcome = agent.on_confirm(msg)
        except wire.ContractError as exc:
            await self._dead_letter(exc.reason, exc.detail, topic, payload, now)
            return
        except Rejected as exc:
            await self._dead_letter(exc.reason, exc.detail, topic, payload, now)
            return
        if outcome == "accepted":
            self.stats.confirmed += 1
        elif outcome == "refused":
            self.stats.refused[msg["reason"]] += 1
            log.warning("%s: transaction %s refused: %s %s", agent.site, msg["transactionId"], msg["reason"],
                        msg.get("detail", ""))
        self._save(agent.site)

    async def _dead_letter(self, reason: str, detail: str, topic: str, payload: bytes, now: float) -> None:
        self.stats.dead_letters[reason] += 1
        log.warning("dead letter %s on %s: %s", reason, topic, detail[:120])
        body = json.dumps({"reason": reason, "detail": detail, "topic": topic, "size": len(payload),
                           "payload": payload[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
                           "received": now}).encode()
        await self._publish(wire.dead_letter_topic(reason), body, qos=0)

    # ------------------------------------------------------------------ sending

    async def _publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        client = self._client
        if client is None:
            return
        async with self._publish_window:  # a round's sites publish concurrently, a few at a time
            self._in_flight += 1
            try:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(topic, payload, qos=qos, retain=retain)
            finally:
                self._in_flight -= 1

    async def _send_transactions(self, site: str, txs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> None:
        agent = self.agents.get(site)
        if txs and agent is not None:
            # write-ahead, before the first await: a kill -9 after this leaves the next owner
            # knowing the tender is taken (store.py)
            try:
                self.store.append_sent(site, agent.book.journal([tx["transactionId"] for tx in txs]))
                self._journaled.add(site)
            except OSError as exc:
                log.error("%s: could not journal transactions: %s", site, exc)
        for tx in txs:
            await self._publish(wire.site_topic(site, wire.TRANSACTION), wire.encode(wire.TRANSACTION, tx))
            self.stats.transactions_sent += 1

    async def _execute(self, agent: SiteAgent, d: Decision, now: float) -> None:
        _notes(agent.site, d.notes, self._seen_notes, now)
        await self._send_transactions(agent.site, d.transactions)
        for device, relay in d.relays.items():
            try:
                # seq from the clock: above anything an earlier owner of this site sent (docs/agent.md)
                out = self.dispatcher.command(agent.site, device, relay, d.valid_until, now, seq_floor=int(now * 1000))
            except (KeyError, ValueError) as exc:
                self.stats.command_errors += 1
                log.error("%s/%s: no command sent: %s", agent.site, device, exc)
                continue
            agent.settle(device, int(out.cmd["relay"]))
            await self._publish(out.topic, out.payload)
            self.stats.commands_sent += 1
        self._save(agent.site)

    def _save(self, site: str) -> None:
        """Mark the site's state for writing at the next tick (tick_s; FLUSH_PER_TICK sites a tick):
        several changes in one tick (an interval's decision, its confirm, a resend) make one write,
        where each used to make one (bench/loop.py: the state writes were the agent's largest
        cost). What a kill -9 can lose is the changes not yet written (at most about a second's at
        1,000 sites), which the wire gives back: the same transactionId is re-derived and replayed
        to the same confirm, and the command seq comes from the clock."""
        self._dirty.add(site)

    def _flush(self) -> None:
        """Write up to FLUSH_PER_TICK of the sites whose state is behind, the rest next tick: a
        round marks every site dirty at once, and writing 1,000 files in one go held the event
        loop (and the round's answers) for a second (py-spy at 1,000 sites, docs/loop-bench.md)."""
        for _ in range(min(FLUSH_PER_TICK, len(self._dirty))):
            self._write_state(self._dirty.pop())

    def _write_state(self, site: str) -> None:
        self._dirty.discard(site)
        agent = self.agents.get(site)
        if agent is None:
            return
        text = agent.state_text({"seq": {d: self.dispatcher.last_seq(site, d) for d in agent.cfg.relays}})
        try:
            self.store.save_text(site, text)
            if site in self._journaled:
                self._journaled.discard(site)
                self.store.clear_sent(site)  # the state file now holds what the journal held
        except OSError as exc:
            log.error("%s: could not save agent state: %s", site, exc)

    # ------------------------------------------------------------------ loops

    async def _plan_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._plan_round()

    async def _solve(self, jobs: list[Job]) -> dict[tuple[str, str], Any]:
        if not jobs:
            return {}
        results = await asyncio.get_running_loop().run_in_executor(self._solver_thread, self.planner.plan, jobs)
        return {(r.site, r.mode): r for r in results}

    async def _plan_round(self) -> None:
        """Real-time first (its tenders live minutes), then day-ahead (hours). bench/loop.py at
        1,000 sites: a day-ahead batch re-planned first, its trades published one PUBACK after
        another, held every real-time tender until it expired, and the round looked stalled."""
        await self._rt_round()
        await self._da_round()

    async def _da_round(self) -> None:
        """Day-ahead re-plans in chunks, each chunk's trades published concurrently; a real-time
        interval that becomes ready meanwhile goes first (the rest of the sites stay dirty)."""
        waiting = [a for a in self.agents.values() if a.da_dirty]
        for i in range(0, len(waiting), PLAN_CHUNK):
            if self._ready_rt:
                self._wake.set()
                return
            now = self.clock.now()
            jobs = [j for j in (a.da_job(now) for a in waiting[i:i + PLAN_CHUNK]) if j is not None]
            sends = []
            for (site, _), result in (await self._solve(jobs)).items():
                agent = self.agents.get(site)
                if agent is None:
                    continue
                txs, note = agent.apply_da(self.clock.now(), result)
                if note:
                    _notes(site, [note], self._seen_notes, now)
                sends.append(asyncio.create_task(self._send_transactions(site, txs)))
                self._save(site)
            await asyncio.gather(*sends)

    async def _rt_round(self) -> None:
        """Answer the sites whose real-time tenders are in, in chunks of PLAN_CHUNK, pipelined: a
        chunk's jobs are built and queued for the solver while the chunk before is solved, and
        its answers go out (without waiting for each PUBACK in turn) while the next is solved. So
        the first sites are answered after one chunk, and the solver never waits for the event
        loop between chunks (bench/loop.py, tender -> confirm; docs/loop-bench.md)."""
        t0 = time.perf_counter()
        timing = {"built": 0.0, "awaited": 0.0, "solver": 0.0}
        ready, self._ready_rt = self._ready_rt, {}
        sites = [site for site, start in ready.items()
                 if (agent := self.agents.get(site)) is not None and start not in agent.decided]
        self._planning = set(sites)
        notes: dict[str, list[str]] = {}
        chunks = [sites[i:i + PLAN_CHUNK] for i in range(0, len(sites), PLAN_CHUNK)]
        queued: list[tuple[asyncio.Future[dict[tuple[str, str], Any]], list[Job]]] = []

        def submit(chunk: list[str]) -> None:
            t = time.perf_counter()
            now, jobs = self.clock.now(), []
            for site in chunk:
                agent = self.agents.get(site)
                if agent is not None:
                    job, notes[site] = agent.rt_job(now, ready[site])
                    jobs.append(job)
            queued.append((asyncio.ensure_future(self._solve(jobs)), jobs))
            timing["built"] += time.perf_counter() - t

        sends: list[asyncio.Task[None]] = []
        try:
            if chunks:
                submit(chunks[0])
            for k in range(len(chunks)):
                future, jobs = queued.pop(0)
                if k + 1 < len(chunks):
                    submit(chunks[k + 1])  # the solver's next chunk, queued before this one is done
                t1 = time.perf_counter()
                results = await future
                timing["awaited"] += time.perf_counter() - t1
                timing["solver"] += sum(r.wall_s for r in results.values())
                for job in jobs:
                    agent = self.agents.get(job.site)
                    if agent is None:
                        continue
                    result = results.get((job.site, "rt"))
                    if result is None or result.schedule is None:
                        self.stats.solve_failures += 1
                    d = agent.decide(self.clock.now(), ready[job.site], result, notes[job.site])
                    self.stats.tenders_answered += 1
                    sends.append(asyncio.create_task(self._execute(agent, d, self.clock.now())))
            await asyncio.gather(*sends)
        finally:
            self._planning = set()
            for future, _ in queued:  # cancelled mid-round (stop): nothing more for the solver
                future.cancel()
        if sites:  # where a round's time goes (docs/loop-bench.md)
            log.info("worker %s: real-time round of %d sites in %.2f s: jobs built %.2f s, solves awaited %.2f s "
                     "(%.2f s inside the solvers)", self.me, len(sites), time.perf_counter() - t0, timing["built"],
                     timing["awaited"], timing["solver"])

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            now = self.clock.now()
            for site, agent in list(self.agents.items()):
                if site in self._planning or site in self._ready_rt:
                    continue
                start = agent.due_without_tender(now)
                if start is not None:
                    self.stats.no_tender += 1
                    await self._execute(agent, agent.decide_without_tender(now, start), now)
                resend = agent.book.resend(now, self.options.agent.tx_resend_s)
                if resend:
                    self.stats.transactions_resent += len(resend)
                    for tx in resend:
                        await self._publish(wire.site_topic(site, wire.TRANSACTION), wire.encode(wire.TRANSACTION, tx))
                    self._save(site)
            if now - self._pruned_at >= PRUNE_EVERY_S:  # walks every tender: not every tick
                self._pruned_at = now
                for agent in self.agents.values():
                    agent.book.prune(now)
            for out in self.dispatcher.retries(now, self.options.agent.cmd_retry_s):
                if out.site in self.agents:
                    await self._publish(out.topic, out.payload)
                    self.stats.commands_retried += 1
            for dev in self.dispatcher.silent - self._silent_reported:
                log.error("%s/%s: relay silent: no ack after %d sends of a command (%s)", dev[0], dev[1],
                          self.dispatcher._max_attempts, self.dispatcher.flagged.get(dev[0], ""))
            self._silent_reported = set(self.dispatcher.silent)
            self._flush()

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.progress_s)
            log.info("worker %s: %s", self.me, self.progress_line())
            self._write_stats()
            self._report_stuck()

    def _report_stuck(self) -> None:
        """A round (or the tick loop) that has not moved for STUCK_AFTER_S while tenders wait is
        logged once with where every task waits: bench/loop.py at 1,000 sites has seen rounds
        stop for good, with the solver idle and the connection up, and nothing said where."""
        mark = (self.stats.tenders_answered, self.stats.no_tender)
        now = time.monotonic()
        if mark != self._progress_mark or not self._ready_rt:
            self._progress_mark, self._progress_at, self._stuck_reported = mark, now, False
            return
        if self._stuck_reported or now - self._progress_at < STUCK_AFTER_S:
            return
        self._stuck_reported = True
        where = []
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=6)
            trail = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            where.append(f"{task.get_name()}: {trail or 'not started'}")
        log.error("worker %s: no real-time round and no subscription-only decision for %.0f s while %d sites "
                  "wait; publications in flight %d; tasks: %s", self.me, now - self._progress_at,
                  len(self._ready_rt), self._in_flight, " | ".join(where))

    def progress_line(self) -> str:
        s, d = self.stats, self.dispatcher.stats
        return (f"sites owned {len(self.agents)}; tenders {s.tenders}, answered {s.tenders_answered}, "
                f"no tender {s.no_tender}, solve failures {s.solve_failures}; transactions sent "
                f"{s.transactions_sent} (resent {s.transactions_resent}), confirmed {s.confirmed}, "
                f"refused {sum(s.refused.values())}; commands sent {d.sent}, acked {d.acked_ok}, refused "
                f"{sum(d.refused.values())}, retried {d.retried}, given up {d.given_up}, silent relays "
                f"{len(self.dispatcher.silent)}; dead letters {sum(s.dead_letters.values())}")

    def stats_json(self) -> dict[str, Any]:
        s, d = self.stats, self.dispatcher.stats
        return {"worker": self.me, "pid": os.getpid(), "written_at": time.time(), "owned": sorted(self.agents),
                "live": sorted(self.live), "tenders": s.tenders, "tenders_answered": s.tenders_answered,
                "no_tender": s.no_tender, "solve_failures": s.solve_failures,
                "transactions_sent": s.transactions_sent, "transactions_resent": s.transactions_resent,
                "confirmed": s.confirmed, "refused": dict(s.refused), "dead_letters": dict(s.dead_letters),
                "commands_sent": d.sent, "commands_acked": d.acked_ok, "commands_refused": dict(d.refused),
                "commands_retried": d.retried, "commands_given_up": d.given_up,
                "silent_relays": sorted(f"{a}/{b}" for a, b in self.dispatcher.silent),
                "readings": self.intake.stats.readings, "readings_malformed": self.intake.stats.malformed,
                "readings_connects": self.intake.stats.connects, "readings_subscribed": self.intake.ready.is_set()}

    def _write_stats(self) -> None:
        path = self.options.stats_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.stats_json()))
        os.replace(tmp, path)

"""Issue 12, "Full loop" and "Restart": the transactive loop as an operator runs it.

Real Mosquitto on the registry-generated dynamic-security config (every client logs in with its
own user; rights per role), real VictoriaMetrics and PostgreSQL. `tendril ingest`, `tendril
market` and `tendril agent --workers 2` run as separate processes with their own broker users
(secrets/_services.json), on one simulated clock (TENDRIL_CLOCK). 10 registered sites, each a
meter and pump, heat-pump and EV relays on MicroPython unix-port firmware behind a simulated
house (cloud.demo.fleet / edge.house), for 24 simulated hours.

Mid-day the market and one agent worker are killed with SIGKILL: the market is restarted by the
test, the worker by the `--workers 2` supervisor. Everything is counted by id from what crossed
the wire (an observer user added to the generated config, read-only on tendril/#) and from what
was stored (ledger, VictoriaMetrics), never from the services' own word alone.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil  # type: ignore[import-untyped]
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud import command
from tendril_transactive.cloud.cli.main import main as tendril
from tendril_transactive.cloud.demo.fleet import DemoSite, make_sites
from tendril_transactive.cloud.devices.mosquitto import password_hash
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.cloud.ledger.chain import Ledger
from tendril_transactive.cloud.market.schedule import MarketConfig, rt_offset
from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.cloud.settings import DEFAULT_RT_SPREAD_S
from tendril_transactive.edge.clock import SimClock
from tendril_transactive.hil.servers import (
    LOOPBACK,
    Postgres,
    VictoriaMetrics,
    find_binary,
    free_port,
    start_mosquitto_generated,
)

pytestmark = [pytest.mark.integration, pytest.mark.firmware, pytest.mark.slow]

SITES = 10
HOURS = 24
# 300x: a 5-minute interval is one wall second, 24 h are 4.8 minutes. Telemetry every simulated
# minute keeps 40 nodes at ~200 messages per wall second.
SPEED = 300.0
TELEMETRY_S = 60
START = dt.datetime(2024, 3, 15, tzinfo=LOCAL_TZ).timestamp()  # the bundled CAISO replay covers March 2024
END = START + HOURS * 3600
KILL_AT = START + 12 * 3600  # mid-day: kill -9 market and one agent worker once this interval is tendered
STARTUP_S = 40.0  # wall seconds until simulated START: broker, 40 nodes, services up and subscribed
RT_LEAD_S = 290.0  # tenders go out 290 s (~1 wall second) before their interval
RT_SPREAD_S = DEFAULT_RT_SPREAD_S  # ... each site's up to 20 s later (the market's default spread)
STEP = 300
TX_REASONS = {wire.TX_REFUSE_UNKNOWN, wire.TX_REFUSE_WRONG_PARTY, wire.TX_REFUSE_EXPIRED, wire.TX_REFUSE_OVER_QUANTITY,
              wire.TX_REFUSE_BAD_QUANTITY, wire.TX_REFUSE_MALFORMED, wire.TX_REFUSE_CONFLICT}
OBSERVER = "full-loop-observer"


# ---------------------------------------------------------------- the wire, as an observer sees it


@dataclass
class Seen:
    t: float  # simulated time it was received
    topic: str
    body: dict[str, Any]


@dataclass
class Observer:
    """Read-only on tendril/#: every tender, transaction, confirm, command, ack, status, presence."""

    port: int
    password: str
    clock: SimClock
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_kind: dict[str, list[Seen]] = field(default_factory=lambda: defaultdict(list))

    def start(self) -> None:
        connected = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=OBSERVER, protocol=paho.MQTTv311)
        self.c.username_pw_set(OBSERVER, self.password)
        self.c.on_connect = lambda *_a: connected.set()
        self.c.on_message = self._on_message
        self.c.connect(LOOPBACK, self.port)
        self.c.loop_start()
        assert connected.wait(15), "observer could not connect"
        for flt in (wire.site_filter(wire.TENDER), wire.site_filter(wire.TRANSACTION), wire.site_filter(wire.CONFIRM),
                    wire.device_filter(wire.CMD), wire.device_filter(wire.ACK), wire.device_filter(wire.STATUS),
                    wire.agent_filter(), wire.dead_letter_topic("#")):
            self.c.subscribe(flt, qos=1)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        now = self.clock.now()
        if m.topic.startswith(wire.agent_filter()[:-1]):
            kind, body = "presence", ({"worker": m.topic.rsplit("/", 1)[1], "up": bool(m.payload)})
        elif m.topic.startswith(wire.dead_letter_topic("")):
            kind, body = "dead", json.loads(m.payload)
        else:
            _, _, kind = wire.parse_topic(m.topic)
            body = json.loads(m.payload)
        with self.lock:
            self.by_kind[kind].append(Seen(now, m.topic, body))

    def get(self, kind: str) -> list[Seen]:
        with self.lock:
            return list(self.by_kind[kind])

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    base: Path
    registry: Registry
    sites: list[DemoSite]
    clock: SimClock
    observer: Observer
    victoria: VictoriaMetrics
    ledger_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kill_t: float = 0.0
    back_t: float = 0.0  # the restarted market's first tender on the wire (simulated time)
    last_slot: float = 0.0  # the latest publication time (interval - lead + offset) the killed market met
    victim: str = ""
    victim_sites: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _add_observer(conf: Path, password: str) -> None:
    """A read-only client for the test, added to the generated dynamic-security file (rights of
    the product's own users are untouched). Written in place: owner and 0640 mode stay."""
    path = conf / "dynamic-security.json"
    doc = json.loads(path.read_text())
    salt, digest = password_hash(password)
    import base64

    doc["clients"].append({"username": OBSERVER, "password": base64.b64encode(digest).decode(),
                           "salt": base64.b64encode(salt).decode(), "iterations": 101, "clientid": OBSERVER,
                           "roles": [{"rolename": "observer", "priority": 0}]})
    doc["roles"].append({"rolename": "observer", "acls": [
        {"acltype": a, "topic": "tendril/#", "priority": 0, "allow": True}
        for a in ("publishClientReceive", "subscribePattern")]})
    with path.open("w") as fh:
        json.dump(doc, fh)


def _services(root: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((root / "secrets" / "_services.json").read_text())
    return data


def _start(run: Run, name: str, argv: list[str], password: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TENDRIL_CLOCK": run.clock.env_value(), "TENDRIL_MQTT_PASSWORD": password}
    with (run.base / f"{name}.log").open("ab") as fh:
        proc = subprocess.Popen(command.argv(*argv), stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    run.procs[name] = proc
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{proc.args} ignored SIGTERM for 30 s") from None


def _unanswered(run: Run) -> tuple[list[str], list[str]]:
    """Transactions seen on the wire without a confirm, and commands without an ack."""
    confirmed = {m.body["transactionId"] for m in run.observer.get(wire.CONFIRM)}
    acked = {m.body["id"] for m in run.observer.get(wire.ACK)}
    txs = sorted({m.body["transactionId"] for m in run.observer.get(wire.TRANSACTION)} - confirmed)
    cmds = sorted({m.body["id"] for m in run.observer.get(wire.CMD)} - acked)
    return txs[:5], cmds[:5]


def _wait(cond: Callable[[], Any], what: Callable[[], str], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting: {what()}")


def _agent_stats(run: Run, worker: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run.base / f"agent-{worker}.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def _houses(run: Run, stop: threading.Event) -> None:
    """The houses' physics: relay pins in, meter power out, every ~15 simulated seconds."""
    while not stop.is_set():
        now = run.clock.now()
        for site in run.sites:
            site.house.step(now)
        stop.wait(0.05)


def _cpu_of(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        total = sum(p.cpu_times()[:2])
        for child in p.children(recursive=True):
            total += sum(child.cpu_times()[:2])
        return float(total)
    except psutil.NoSuchProcess:
        return 0.0


@pytest.fixture(scope="module")
def full_run(micropython: str) -> Iterator[Run]:
    from tendril_transactive.hil.servers import start_postgres, start_victoria_metrics

    find_binary("mosquitto", "mosquitto")
    # Outside pytest's 0700 tmp folder: the broker drops to user mosquitto and must reach its files.
    base = Path(tempfile.mkdtemp(prefix="tendril-loop-"))
    base.chmod(0o711)
    (base / "vm").mkdir()
    (base / "pg").mkdir()
    victoria = start_victoria_metrics(base / "vm")
    postgres: Postgres = start_postgres(base / "pg")
    stop_houses = threading.Event()
    run: Run | None = None
    broker = None
    try:
        registry = Registry(base / "registry")
        sites = make_sites(SITES, base / "run", START, registry)
        port = free_port()
        assert tendril(["device", "--registry", str(registry.root), "mosquitto-config", "--out", str(base / "conf"),
                        "--tls-port", "0", "--plain-listener", "--port", str(port),
                        "--persistence-dir", str(base / "data")]) == 0  # fmt: skip
        secrets = _services(registry.root)
        observer_pw = "observer-" + os.urandom(8).hex()
        _add_observer(base / "conf", observer_pw)
        broker = start_mosquitto_generated(base / "conf" / "mosquitto.conf", port, base)
        clock = SimClock(sim_origin=START, speed=SPEED, real_origin=time.time() + STARTUP_S)
        observer = Observer(port, observer_pw, clock)
        observer.start()
        run = Run(base, registry, sites, clock, observer, victoria, postgres.url)
        wall0 = time.monotonic()
        for site in sites:
            site.start_firmware(LOOPBACK, port, registry, clock.env_value(), TELEMETRY_S, credentials=True)
        houses = threading.Thread(target=_houses, args=(run, stop_houses), daemon=True)
        houses.start()
        broker_url = f"mqtt://{LOOPBACK}:{port}"
        reg = ["--registry", str(registry.root), "--broker", broker_url]
        _start(run, "ingest", ["ingest", *reg, "--username", "tendril-ingest", "--influx-url", victoria.url,
                               "--state-dir", str(base / "ingest"), "--stats-file", str(base / "ingest.json"),
                               "--no-fsync"], secrets["ingest"])
        _start(run, "agent", ["agent", *reg, "--username", "tendril-agent", "--workers", "2",
                              "--state-dir", str(base / "agent"), "--stats-file", str(base / "agent-{worker}.json"),
                              "--progress-s", "1", "--time-limit-s", "1", "--tx-resend-s", "60",
                              "--cmd-retry-s", "240", "--command-grace-s", "600"], secrets["agent:tendril-agent"])
        expected = {(s.site, d) for s in sites for d in s.devices}

        def online() -> set[tuple[str, str]]:
            state: dict[tuple[str, str], bool] = {}
            for m in observer.get(wire.STATUS):
                site, device, _ = wire.parse_topic(m.topic)
                state[(site, device)] = m.body.get("state") == wire.ONLINE
            return {k for k, v in state.items() if v}

        _wait(lambda: expected <= online(), lambda: f"nodes not online: {sorted(expected - online())}", 60)
        online_s = time.monotonic() - wall0
        _wait(lambda: all(_agent_stats(run, w).get("live") == ["w0", "w1"] for w in ("w0", "w1")),
              lambda: run.log("agent"), 60)
        print(f"\nstartup: 40 nodes online after {online_s:.1f} s, agent workers after "
              f"{time.monotonic() - wall0:.1f} s (wall)")
        market_argv = ["market", *reg, "--username", "tendril-market", "--ledger", postgres.url,
                       "--influx-url", victoria.url, "--rt-lead-s", str(RT_LEAD_S), "--rt-spread-s", str(RT_SPREAD_S),
                       "--feeder-ratio", "feeder-b=0.95", "--default-feeder-ratio", "0.55",
                       "--state-dir", str(base / "market"), "--health-s", "2"]
        _start(run, "market", market_argv, secrets["market"])
        assert clock.now() < START - RT_LEAD_S - 600, "startup ran into the day: raise STARTUP_S"

        # ---- mid-day: once the interval KILL_AT is tendered to every site, kill -9 market + one worker
        def tendered(start: float) -> bool:
            got = {m.body["counterPartyId"] for m in observer.get(wire.TENDER)
                   if m.body["marketId"] == "RTM" and m.body["intervalStart"] == start}
            return len(got) == SITES

        _wait(lambda: tendered(KILL_AT), lambda: run.log("market"), (KILL_AT - clock.now()) / SPEED + 30)
        stats = _agent_stats(run, "w0")
        run.victim, run.victim_sites = "w0", list(stats["owned"])
        assert run.victim_sites, "w0 owns no site to move"
        run.kill_t = clock.now()
        os.kill(int(stats["pid"]), signal.SIGKILL)
        market = run.procs["market"]
        market.send_signal(signal.SIGKILL)
        market.wait(10)
        run.cpu["market (first run)"] = 0.0  # gone with its process; the restarted one is measured
        _start(run, "market", market_argv, secrets["market"])
        seen = len(observer.get(wire.TENDER))
        run.last_slot = max(_slot(m.body) for m in observer.get(wire.TENDER)[:seen] if m.body["marketId"] == "RTM")
        # back = its first real-time tender: before that it rebuilds from the ledger and republishes
        # the open day-ahead tenders, and an interval whose window closed meanwhile had no market
        run.back_t = _wait(lambda: next((m.t for m in observer.get(wire.TENDER)[seen:]
                                         if m.body["marketId"] == "RTM"), 0.0),
                           lambda: run.log("market"), 60)

        # ---- to the end of the day, and until its last intervals are settled
        def all_settled() -> bool:
            # every (site, interval) with real-time tenders in the ledger, not a count from the
            # outage's timing: a tender the restarted market got out just before it expired is in
            # the ledger (and settled) though the observer's clock put it inside the outage
            with Ledger(postgres.url) as ledger:
                done = {(r.site, int(r.body["intervalStart"])) for r in ledger.records("settlement")
                        if "intervalStart" in r.body}
                rt = {(r.site, int(r.body["intervalStart"])) for r in ledger.records("tender")
                      if r.body["marketId"] == "RTM" and START <= r.body["intervalStart"] < END}
            return rt <= done

        _wait(lambda: clock.now() > END, lambda: "end of day", (END - clock.now()) / SPEED + 60)
        def unsettled() -> str:
            with Ledger(postgres.url) as ledger:
                done = {(r.site, int(r.body["intervalStart"])) for r in ledger.records("settlement")
                        if "intervalStart" in r.body}
                rt = {(r.site, int(r.body["intervalStart"])) for r in ledger.records("tender")
                      if r.body["marketId"] == "RTM"}
            outage = _outage(run)
            want = {(s.site, int(START + STEP * k)) for s in run.sites for k in range(HOURS * 12)} - outage
            missing = sorted(want - done)
            untendered = sorted(m for m in missing if m not in rt)
            when = sorted({dt.datetime.fromtimestamp(t, LOCAL_TZ).strftime("%H:%M") for _, t in missing})
            return (f"{len(missing)} intervals unsettled ({len(untendered)} never tendered); outage {len(outage)} "
                    f"intervals; kill at {run.kill_t:.0f}, back at {run.back_t:.0f}; local times {when[:40]}\n"
                    + run.log("market"))

        _wait(all_settled, unsettled, 60)
        run.wall_s = time.monotonic() - wall0
        for site in sites:
            for node in site.processes:
                run.cpu[f"firmware {site.site}/{node.config.device}"] = _cpu_of(node.pid or 0)
        for name, proc in run.procs.items():
            run.cpu[name] = _cpu_of(proc.pid)
        for name, server in (("mosquitto", broker), ("victoria-metrics", victoria), ("postgres", postgres)):
            if server.proc is not None:
                run.cpu[name] = _cpu_of(server.proc.pid)
        # ---- hold still: the checks read the ledger and the wire at different moments, so nothing
        # may move under them (a CI run read a transaction sent after its ledger read, and a next-day
        # tender published between the two). The agents stop first, the market answers what they
        # sent and the devices ack what they were told, then the market stops.
        _stop(run.procs["agent"])
        _wait(lambda: _unanswered(run) == ([], []),
              lambda: f"unanswered after the agents stopped (transactions, commands): {_unanswered(run)}", 30)
        _stop(run.procs["market"])
        yield run
    finally:
        stop_houses.set()
        if run is not None:
            for proc in run.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in run.procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for site in run.sites:
                site.stop_firmware()
            run.observer.stop()
        if broker is not None:
            broker.stop()
        victoria.stop()
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- what the run shows


SPREAD = MarketConfig(rt_lead_s=RT_LEAD_S, rt_spread_s=RT_SPREAD_S)


def _slot(tender: dict[str, Any]) -> float:
    """When the market is to publish this real-time tender: its interval - lead + the site's offset."""
    return float(tender["intervalStart"]) - RT_LEAD_S + rt_offset(tender["counterPartyId"], SPREAD)


def _outage(run: Run) -> set[tuple[str, int]]:
    """(site, interval) whose whole publication window [S - lead + the site's offset in the spread,
    S) came after the last slot the killed market published and ended before its restarted self's
    first tender: nobody could have published them. The start is the last slot met, not the kill's
    clock time: at 300x a tick late under load is a whole spread, and a slot due a moment before
    the kill but not yet out is the kill's, not a missed publication; a slot skipped before it
    still counts as missing. At 300x a restart of ~2 wall seconds is ~600 simulated seconds."""
    return {(s.site, int(START + STEP * k)) for s in run.sites for k in range(HOURS * 12)
            if run.last_slot < _slot({"intervalStart": START + STEP * k, "counterPartyId": s.site})
            and START + STEP * k <= run.back_t}


def _records(run: Run, kind: str) -> list[Any]:
    with Ledger(run.ledger_url) as ledger:
        return list(ledger.records(kind))


def test_report_cpu_and_wall(full_run: Run) -> None:
    """Not a timing assertion: what 10 sites x 4 firmware nodes and the services cost on this machine."""
    run = full_run
    fw = sum(v for k, v in run.cpu.items() if k.startswith("firmware"))
    services = {k: round(v, 1) for k, v in run.cpu.items() if not k.startswith("firmware")}
    print(f"\nfull loop: {run.wall_s:.0f} s wall for {HOURS} h at {SPEED:g}x; CPU s: firmware (40 nodes) "
          f"{fw:.1f}, {services}; total {sum(run.cpu.values()):.1f} s = "
          f"{sum(run.cpu.values()) / run.wall_s:.2f} cores")
    assert fw > 0 and all(p.alive for s in run.sites for p in s.processes), "a firmware node died"


def test_every_real_time_tender_was_published(full_run: Run) -> None:
    run = full_run
    tenders = [r.body for r in _records(run, "tender")]
    ids = [t["tenderId"] for t in tenders]
    assert len(ids) == len(set(ids)), "a tender was recorded twice"
    rt = {(t["counterPartyId"], t["intervalStart"], t["side"]) for t in tenders if t["marketId"] == "RTM"}
    want = {(s.site, int(START + STEP * k), side) for s in run.sites for k in range(HOURS * 12)
            for side in (wire.SIDE_BUY, wire.SIDE_SELL)}
    outage = _outage(run)
    missing = sorted(want - rt)
    print(f"\nmarket down {run.back_t - run.kill_t:.0f} s (simulated): {len(outage)} site interval(s) not tendered")
    assert run.kill_t - run.last_slot < STEP, "the killed market had stopped publishing an interval before"
    assert len({start for _, start in outage}) <= 2 + (run.back_t - run.kill_t) // STEP
    unexplained = [m for m in missing if m[:2] not in outage]
    assert not unexplained, f"{len(unexplained)} real-time tenders never published, e.g. {unexplained[:5]}"
    # ... and went out on the wire, each id always with the same terms (also across the restart)
    wire_copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in run.observer.get(wire.TENDER):
        wire_copies[m.body["tenderId"]].append(m.body)
    assert set(wire_copies) == set(ids), "tenders on the wire and in the ledger differ"
    by_id = {t["tenderId"]: t for t in tenders}
    for tid, copies in wire_copies.items():
        assert all(c == by_id[tid] for c in copies), f"tender id {tid} reused with other terms"


def test_every_transaction_was_confirmed_or_refused_with_a_reason(full_run: Run) -> None:
    run = full_run
    accepted = [r.body for r in _records(run, "transaction")]
    refused = [r.body for r in _records(run, "refusal")]
    acc_ids = [b["transaction_id"] for b in accepted]
    ref_ids = [b["transactionId"] for b in refused]
    assert len(acc_ids) == len(set(acc_ids)), "a transaction was recorded twice"
    assert len(ref_ids) == len(set(ref_ids)), "a refusal was recorded twice"
    assert not set(acc_ids) & set(ref_ids), "a transaction both accepted and refused"
    assert all(b["reason"] in TX_REASONS for b in refused), Counter(b["reason"] for b in refused)
    sent = {m.body["transactionId"] for m in run.observer.get(wire.TRANSACTION)}
    confirms: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in run.observer.get(wire.CONFIRM):
        confirms[m.body["transactionId"]].append(m.body)
    assert sent, "no transaction was sent"
    assert sent == set(acc_ids) | set(ref_ids), f"lost: {sorted(sent - set(acc_ids) - set(ref_ids))[:5]}"
    for txid in sent:
        answers = confirms.get(txid, [])
        assert answers, f"{txid} got no confirm"
        assert all(a == answers[0] for a in answers), f"{txid} got different confirms: {answers}"
        assert answers[0]["ok"] == (txid in set(acc_ids))
    # the agents' own counters (the killed worker's last stats file included) agree it heard them
    workers = [_agent_stats(run, w) for w in ("w0", "w1")]
    heard = sum(w.get("confirmed", 0) + sum(w.get("refused", {}).values()) for w in workers)
    reasons = Counter(b["reason"] for b in refused)
    print(f"\ntransactions: {len(sent)} sent, {len(acc_ids)} accepted, refused {dict(reasons)}; "
          f"agents' stats: {heard} confirms heard")


def test_every_command_was_acked_or_refused(full_run: Run) -> None:
    run = full_run
    cmds: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    for m in run.observer.get(wire.CMD):
        if m.body["issued"] >= END:
            continue  # the day is over: the agent keeps commanding, the test stopped watching
        site, device, _ = wire.parse_topic(m.topic)
        cmds[m.body["id"]].append((site, device, m.body))
    acks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in run.observer.get(wire.ACK):
        acks[m.body["id"]].append(m.body)
    assert cmds, "no command was sent"
    keys = set()
    for cid, copies in cmds.items():
        assert all(c == copies[0] for c in copies), f"command id {cid} re-sent with other content"
        site, device, body = copies[0]
        keys.add((site, device, body["seq"]))
        assert acks.get(cid), f"command {cid} to {site}/{device} was never acknowledged"
    assert len(keys) == len(cmds), "two command ids with one (device, seq)"
    first = Counter("ok" if a[0]["ok"] else a[0]["reason"] for a in acks.values() if a)
    # the stored acks (VictoriaMetrics keeps numbers, not the id string): one per command, by seq
    stored: set[tuple[str, str, int]] = set()
    for series in run.victoria.export('{__name__="command_ack_seq"}'):
        metric = series["metric"]
        assert isinstance(metric, dict)
        values = series["values"]
        assert isinstance(values, list)
        for value in values:
            stored.add((str(metric["site"]), str(metric["device"]), int(value)))
    assert keys <= stored, f"{len(keys - stored)} commands without a stored ack, e.g. {sorted(keys - stored)[:3]}"
    workers = [_agent_stats(run, w) for w in ("w0", "w1")]
    print(f"\ncommands: {len(cmds)} ids, first answers {dict(first)}, stored acks {len(stored)}; "
          f"given up (agents' stats) {sum(w.get('commands_given_up', 0) for w in workers)}")


def _register(series: list[tuple[float, float]], t: float) -> float:
    times = [p[0] for p in series]
    i = bisect.bisect_right(times, t)
    assert i > 0, f"no reading at or before {t}"
    t0, e0 = series[i - 1]
    if t0 == t:
        return e0
    assert i < len(series), f"no reading after {t}"
    t1, e1 = series[i]
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0)


def test_each_bill_from_the_ledger_equals_a_recomputation_from_the_meters_and_tenders(full_run: Run) -> None:
    """The market's bill = its settlements + the accepted transactions of the day. Recomputed here
    from the meter points exported from VictoriaMetrics, the registry's subscription, the ledger's
    transactions (the contract) and the ledger's real-time tenders (the prices)."""
    run = full_run
    tenders = {(t["counterPartyId"], t["intervalStart"], t["side"]): t
               for t in (r.body for r in _records(run, "tender")) if t["marketId"] == "RTM"}
    txs = [r.body for r in _records(run, "transaction")]
    settlements = [r.body for r in _records(run, "settlement") if START <= r.body["intervalStart"] < END]
    lines = []
    for site in run.sites:
        record = run.registry.site(site.site)
        meter: list[tuple[float, float]] = []
        for series in run.victoria.export(f'{{__name__="meter_energy_wh",site="{site.site}"}}',
                                          START - 3600, END + 3600):
            meter += [(ts / 1000.0, float(v)) for ts, v in zip(series["timestamps"], series["values"], strict=True)]  # type: ignore[call-overload]
        meter.sort()
        mine = [b for b in settlements if b["site"] == site.site]
        starts = [b["intervalStart"] for b in mine]
        # every interval with real-time tenders is settled exactly once (none without: no price);
        # the publication test checks that only the outage went untendered
        tendered = [s for s in (int(START + STEP * k) for k in range(HOURS * 12))
                    if (site.site, s, wire.SIDE_BUY) in tenders]
        assert sorted(starts) == tendered, f"{site.site}: not every tendered interval settled exactly once"
        site_txs = [t for t in txs if t["site"] == site.site]
        ours = 0.0
        for s in tendered:
            metered = (_register(meter, s + STEP) - _register(meter, s)) / 1000.0
            hour = dt.datetime.fromtimestamp(s, LOCAL_TZ).hour
            position = record.subscription_kwh_by_hour[hour] / 12
            for t in site_txs:
                lo, hi = max(t["interval_start"], s), min(t["interval_start"] + t["duration_s"], s + STEP)
                if lo < hi:
                    sign = 1 if t["side"] == wire.SIDE_BUY else -1
                    position += sign * t["quantity_kwh"] * (hi - lo) / t["duration_s"]
            deviation = metered - position
            price = tenders[(site.site, s, wire.SIDE_BUY if deviation > 0 else wire.SIDE_SELL)]["price"]
            ours += deviation * price
        in_day = [t for t in site_txs if START <= t["interval_start"] < END]
        forward = sum((1 if t["side"] == wire.SIDE_BUY else -1) * t["quantity_kwh"] * t["price_usd_per_kwh"]
                      for t in in_day)
        ours += forward
        market = sum(b["amountUsd"] for b in mine) + forward
        lines.append(f"{site.site}: ledger {market:.4f} $, recomputed {ours:.4f} $ ({len(in_day)} forward txs)")
        assert abs(market - ours) < 0.005, f"{site.site}: ledger bill {market:.4f} $ != recomputed {ours:.4f} $"
    print("\n" + "\n".join(lines))


def test_ledger_verify_passes(full_run: Run) -> None:
    verify = subprocess.run(command.argv("ledger", "verify", "--url", full_run.ledger_url),
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout + verify.stderr


def test_restart_lost_nothing_and_the_dead_workers_sites_moved_within_one_interval(full_run: Run) -> None:
    run = full_run
    assert run.kill_t and run.victim_sites
    victim = set(run.victim_sites)
    # the market came back from the ledger: second incarnation rebuilt and republished
    text = (run.base / "market.log").read_text()
    assert text.count("rebuilt from the ledger") == 2, text[-2000:]
    # the first transaction or command for the dead worker's sites after the kill
    answers = sorted(m.t for kind in (wire.TRANSACTION, wire.CMD) for m in run.observer.get(kind)
                     if m.t > run.kill_t and wire.parse_topic(m.topic)[0] in victim)
    assert answers, "the dead worker's sites were never answered again"
    # ... came before the supervisor's restarted worker announced itself, so from the survivor
    back = [m.t for m in run.observer.get("presence") if m.body["worker"] == run.victim and m.body["up"]
            and m.t > run.kill_t]
    took = answers[0] - run.kill_t
    print(f"\nrestart: {run.victim} killed at {dt.datetime.fromtimestamp(run.kill_t, LOCAL_TZ):%H:%M:%S}; its "
          f"{len(victim)} sites answered {took:.0f} s later (sim); restarted worker back after "
          f"{(back[0] - run.kill_t) if back else float('nan'):.0f} s")
    # "within one interval": the first interval that starts after the kill is answered (a
    # transaction or a command for it) before it is over; the market died too, so without a
    # tender the survivor answers it subscription-only, at its start
    first_interval = (int(run.kill_t) // STEP + 1) * STEP
    assert answers[0] < first_interval + STEP, (
        f"the dead worker's sites waited {took:.0f} s: the interval from "
        f"{dt.datetime.fromtimestamp(first_interval, LOCAL_TZ):%H:%M} went unanswered")
    assert not back or answers[0] < back[0], "answered only by the restarted worker"
    assert back, "the supervisor did not restart the killed worker"

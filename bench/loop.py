"""Transactive-loop benchmark: `tendril market` and `tendril agent` as processes, N sites.

    python bench/loop.py [--sites 1000] [--intervals 3] [--speed 10] [--rt-lead-s 240]
                         [--rt-spread-wall-s 20] [--telemetry-s 10] [--profile-agent FILE]

Starts its own Mosquitto (hil/servers.py), registers N sites (a meter and a pump relay each,
pump 4 h/day) in a registry of its own, runs one process of lightweight simulated devices for
all of them (bench/loop_devices.py: telemetry every --telemetry-s simulated seconds; relays
verify each command's signature and ack it) and `tendril market` (SQLite ledger, bundled CAISO
replay prices) and `tendril agent` (one worker) as separate processes, all on one simulated
clock ($TENDRIL_CLOCK, --speed x real time, starting 2024-03-14 10:01 local, so the day-ahead
tenders of today and tomorrow go out at once and the model builds fall into the warm-up).

An observer (this process, its own MQTT connection) timestamps on one wall clock the arrival of
every real-time tender, confirm, command and ack. After a warm-up (until every site has had a
real-time interval confirmed and its command acked, then one more interval) it measures
--intervals real-time intervals and prints:
  * tender published -> confirm received, p50/p99 (per site and interval, from the tender the
    transaction took), and tender -> pump command acked, p50/p99;
  * CPU seconds (user + system, from /proc) per site per real-time interval of the agent, the
    market, the devices and Mosquitto over exactly those intervals of simulated time, and from
    the agent's (and agent + market's) figure the sites two cores serve in one 5-minute interval;
each as a ratio to its target (p99 tender -> confirm < 2 s at 1,000 sites; >= 10,000 sites per
interval on two cores) and, for the latencies, to a reference measured first on the same broker:
the same burst (2 messages per site, as the market's tenders) echoed by Mosquitto's own C
clients (`mosquitto_sub | mosquitto_pub -l`), observed the same way.
No assertion on time anywhere: the verdict lines say PASS or MISS. Speed, lead and telemetry
are in simulated seconds, so CPU per interval does not depend on --speed; the latencies are
wall time. Bounded: about 1 minute for --sites 5, several for --sites 1000 (model builds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "firmware" / "lib")]  # runnable from a clean clone

import paho.mqtt.client as mqtt  # noqa: E402
import tendril_wire as wire  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tendril_transactive.cloud import command  # noqa: E402
from tendril_transactive.cloud.devices.registry import Registry, SiteRecord  # noqa: E402
from tendril_transactive.cloud.settings import DEFAULT_RT_SPREAD_S  # noqa: E402
from tendril_transactive.edge.clock import SimClock  # noqa: E402
from tendril_transactive.hil import servers  # noqa: E402

LOCAL = ZoneInfo("America/Los_Angeles")
T0 = datetime(2024, 3, 14, 10, 1, tzinfo=LOCAL).timestamp()  # in the bundled CAISO replay month
STEP_S = 300
CMD_LIFE_S = STEP_S + 60 + 30  # a command expires at interval end + agent grace 60 s + dispatcher grace 30 s
TARGET_P99_S = 2.0
TARGET_SITES = 10_000
CORES = 2
PUMP = "pump"
TICK = os.sysconf("SC_CLK_TCK")


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def child_env(clock: SimClock) -> dict[str, str]:
    env = dict(os.environ, TENDRIL_CLOCK=clock.env_value())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "firmware" / "lib"), env.get("PYTHONPATH", "")])
    return env


def _stat(path: Path) -> list[str]:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    """The process and its live descendants (`tendril agent --workers N` is a supervisor of N)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process tree, with the children it has waited for."""
    return sum(sum(int(x) for x in fields[11:15]) / TICK
               for p in tree(pid) if (fields := _stat(Path(f"/proc/{p}/stat"))))


def _is_agent_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"agent" in argv and any(a.endswith(b"cloud.cli") or a.endswith(b"tendril") for a in argv)


def thread_split(pid: int) -> tuple[float, float]:
    """(event loops, solving) CPU seconds of an agent's process tree: the main threads of the
    agent's own processes vs everything else (its solver threads, and with --solver-processes the
    fork server and its solver processes, whose main threads solve)."""
    main = other = 0.0
    for proc in tree(pid):
        worker = _is_agent_worker(proc)
        for task in Path(f"/proc/{proc}/task").glob("*"):
            fields = _stat(task / "stat")
            if not fields:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            if worker and task.name == str(proc):
                main += cpu
            else:
                other += cpu
    return main, other


def merged_stats(paths: list[Path]) -> dict[str, Any]:
    """The agent workers' stats files as one: numbers and per-reason counters summed."""
    out: dict[str, Any] = {}
    for path in paths:
        for key, value in read_json(path).items():
            if isinstance(value, bool) or not isinstance(value, int | float | dict):
                continue
            if isinstance(value, dict):
                acc = out.setdefault(key, {})
                for k, v in value.items():
                    acc[k] = acc.get(k, 0) + v
            else:
                out[key] = out.get(key, 0) + value
    return out


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------ registry


def make_registry(root: Path, sites: int) -> list[str]:
    reg = Registry(root)
    save = reg._save
    reg._save = lambda: None  # type: ignore[method-assign]  # one write at the end, not one per device
    names = [f"site-{i:05d}" for i in range(sites)]
    for name in names:
        reg.set_site(SiteRecord(name, feeder="feeder-a", settings={"pump": {"hours_per_day": 4}}))
        reg.add(name, "meter", wire.DEVICE_METER)
        reg.add(name, PUMP, wire.DEVICE_RELAY, PUMP, 1500.0)
    save()
    return names


# ------------------------------------------------------------------ observer


@dataclass
class Observer:
    """Arrival times (time.perf_counter) of what crosses the broker, on one MQTT connection."""

    port: int
    rt_tender: dict[tuple[str, int], float] = field(default_factory=dict)  # (site, start) -> first RT tender
    tender_slot: dict[str, tuple[str, int]] = field(default_factory=dict)  # RT tenderId -> (site, start)
    confirms: list[tuple[str, str, bool, str, float]] = field(default_factory=list)  # site, tenderId, ok, reason, t
    cmds: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # cmd id -> site, device, interval start
    acks: list[tuple[str, str, str, bool, str, float]] = field(default_factory=list)  # site, dev, id, ok, reason, t
    ref: dict[str, dict[bytes, float]] = field(default_factory=lambda: {"req": {}, "resp": {}})
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribed = threading.Semaphore(0)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-loop-observer")
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.release()
        self.client.connect(servers.LOOPBACK, self.port, keepalive=30)
        self.client.loop_start()
        for flt in (wire.site_filter(wire.TENDER), wire.site_filter(wire.CONFIRM), wire.device_filter(wire.CMD),
                    wire.device_filter(wire.ACK), "bench/ref/+"):
            self.client.subscribe(flt, qos=1)
            if not self.subscribed.acquire(timeout=10):
                raise RuntimeError(f"observer: no SUBACK for {flt}")

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        if m.topic.startswith("bench/ref/"):
            self.ref[m.topic.rsplit("/", 1)[1]].setdefault(bytes(m.payload), t)
            return
        site, device, kind = wire.parse_topic(m.topic)
        msg = json.loads(m.payload)
        with self.lock:
            self.counts[kind] += 1
            if kind == wire.TENDER:
                if msg["marketId"] == "RTM":
                    slot = (site, int(msg["intervalStart"]))
                    self.rt_tender.setdefault(slot, t)
                    self.tender_slot[msg["tenderId"]] = slot
            elif kind == wire.CONFIRM:
                self.confirms.append((site, msg["tenderId"], bool(msg["ok"]), msg["reason"], t))
            elif kind == wire.CMD:
                start = round((float(msg["expires"]) - CMD_LIFE_S) / STEP_S) * STEP_S
                self.cmds[msg["id"]] = (site, device, start)
            elif kind == wire.ACK:
                self.acks.append((site, device, msg["id"], bool(msg["ok"]), msg["reason"], t))

    def answered(self, start: int) -> tuple[set[str], set[str]]:
        """Sites with a confirm, and sites with an ok pump ack, for real-time interval `start`."""
        with self.lock:
            confirmed = {self.tender_slot[tid][0] for _, tid, _, _, _ in self.confirms
                         if self.tender_slot.get(tid, ("", -1))[1] == start}
            acked = {site for site, dev, cid, ok, _, _ in self.acks
                     if ok and dev == PUMP and self.cmds.get(cid, ("", "", -1))[2] == start}
        return confirmed, acked

    def latencies(self, starts: set[int]) -> tuple[list[float], list[float], Counter[str]]:
        """(tender -> confirm, tender -> pump ack) in seconds per (site, interval) of `starts`;
        outcome counts of those intervals' confirms and acks."""
        out: Counter[str] = Counter()
        confirm_t: dict[tuple[str, int], float] = {}
        ack_t: dict[tuple[str, int], float] = {}
        with self.lock:
            for _site, tid, ok, reason, t in self.confirms:
                slot = self.tender_slot.get(tid)
                if slot is None or slot[1] not in starts:
                    continue
                out[f"confirm {'ok' if ok else reason}"] += 1
                confirm_t.setdefault(slot, t)
            for site, dev, cid, ok, reason, t in self.acks:
                cmd = self.cmds.get(cid)
                if dev != PUMP or cmd is None or cmd[2] not in starts:
                    continue
                out[f"ack {'ok' if ok else reason}"] += 1
                if ok:
                    ack_t.setdefault((site, cmd[2]), t)
            slots = [s for s in self.rt_tender if s[1] in starts]
            to_confirm = [confirm_t[s] - self.rt_tender[s] for s in slots if s in confirm_t]
            to_ack = [ack_t[s] - self.rt_tender[s] for s in slots if s in ack_t]
            out["tender slots"] = len(slots)
        return to_confirm, to_ack, out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def reference(obs: Observer, port: int, count: int) -> list[float]:
    """Round trips of `count` messages published in one burst, echoed by Mosquitto's C clients."""
    echo = subprocess.Popen(
        f"mosquitto_sub -h {servers.LOOPBACK} -p {port} -q 1 -t bench/ref/req | "
        f"mosquitto_pub -h {servers.LOOPBACK} -p {port} -q 1 -l -t bench/ref/resp",
        shell=True, start_new_session=True)  # fmt: skip
    try:
        time.sleep(1.0)  # mosquitto_sub has no "subscribed" signal
        for i in range(count):
            obs.client.publish("bench/ref/req", f"r{i:06d}".encode(), qos=1)
        deadline = time.monotonic() + 60
        while len(obs.ref["resp"]) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(echo.pid, signal.SIGTERM)
        echo.wait(timeout=10)
    req, resp = obs.ref["req"], obs.ref["resp"]
    return [resp[k] - req[k] for k in resp if k in req]


# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def spawn(name: str, argv: list[str], env: dict[str, str], tmp: Path) -> Proc:
    log = tmp / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Proc(name, proc, log)


def wait_until(cond: Any, what: str, procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode} while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s\n" + "\n".join(p.tail(8) for p in procs))
        time.sleep(0.1)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------ the run


@dataclass
class Result:
    sites: int
    intervals: int
    to_confirm: list[float]
    to_ack: list[float]
    ref: list[float]
    cpu: dict[str, float]  # process -> CPU s over the measured intervals
    window_real_s: float
    counts: Counter[str]
    warmup_real_s: float
    warmup_cpu: dict[str, float]
    agent_stats: dict[str, Any]
    devices_stats: dict[str, Any]


def run(args: argparse.Namespace, tmp: Path) -> Result:
    note(f"registering {args.sites} sites ...")
    names = make_registry(tmp / "registry", args.sites)
    (tmp / "mosquitto").mkdir()
    broker = servers.start_mosquitto(tmp / "mosquitto", max_queued_messages=0, max_inflight_messages=1000)
    procs: list[Proc] = []
    obs = Observer(broker.port)
    try:
        note(f"reference: {2 * args.sites} messages echoed by mosquitto_sub | mosquitto_pub -l ...")
        ref = reference(obs, broker.port, 2 * args.sites)
        clock = SimClock(sim_origin=T0, speed=args.speed, real_origin=time.time() + 3.0)
        env = child_env(clock)
        py = [sys.executable]
        devices = spawn("devices", [*py, str(ROOT / "bench" / "loop_devices.py"), "--registry", str(tmp / "registry"),
                                    "--broker-port", str(broker.port), "--stats-file", str(tmp / "devices.json"),
                                    "--telemetry-s", repr(args.telemetry_s)], env, tmp)  # fmt: skip
        procs.append(devices)
        wait_until(lambda: "ready" in devices.log.read_text(), "devices subscribed", procs, 120)
        workers = ["--worker-id", "w0"] if args.agent_workers == 1 else ["--workers", str(args.agent_workers)]
        stats_files = [tmp / f"agent-w{i}.json" for i in range(args.agent_workers)]

        def owned() -> bool:
            sets = [set(read_json(f).get("owned", [])) for f in stats_files]
            return sum(len(x) for x in sets) == args.sites and set().union(*sets) == set(names)

        prof = ["-m", "cProfile", "-o", str(args.profile_agent)] if args.profile_agent else []
        agent = spawn("agent", [*py, *prof, "-m", command.MODULE, "agent", "--registry", str(tmp / "registry"),
                                "--broker", broker.url, *workers, "--state-dir", str(tmp / "agent"),
                                "--stats-file", str(tmp / "agent-{worker}.json"), "--progress-s", "5",
                                "--solver-processes", str(args.agent_solver_processes)], env, tmp)
        procs.append(agent)
        wait_until(owned, "the agent workers owning every site once", procs, 300)
        market = spawn("market", [*py, "-m", command.MODULE, "market", "--registry", str(tmp / "registry"),
                                  "--broker", broker.url, "--ledger", f"sqlite:///{tmp / 'ledger.db'}",
                                  "--rt-lead-s", repr(args.rt_lead_s), "--rt-spread-s", repr(spread_sim(args)),
                                  "--state-dir", str(tmp / "market"),
                                  "--health-s", "5"], env, tmp)  # fmt: skip
        procs.append(market)
        pids = {"agent": agent.proc.pid, "market": market.proc.pid, "devices": devices.proc.pid,
                "mosquitto": broker.proc.pid if broker.proc else 0}

        # ---- warm-up: every site answered (confirm and ack) for one interval, then one interval more
        warm_start_real = time.monotonic()
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        all_sites = set(names)

        seen_c: set[str] = set()
        seen_a: set[str] = set()
        checked: set[int] = set()

        def warmed() -> bool:
            """Every site has had a real-time interval's command acked (and some site a confirm)."""
            now = clock.now()
            for start in range(int(T0) // STEP_S * STEP_S, int(now) // STEP_S * STEP_S + STEP_S, STEP_S):
                if start in checked:
                    continue
                confirmed, acked = obs.answered(start)
                seen_c.update(confirmed)
                seen_a.update(acked)
                if start < now - 2 * STEP_S:
                    checked.add(start)  # answers for it are over
            # commands, not confirms: a site whose plan needs no real-time trade sends no transaction
            return seen_a >= all_sites and bool(seen_c)

        note("warm-up: model builds, day-ahead plans, first real-time rounds ...")
        try:
            wait_until(warmed, "every site answered once (warm-up)", procs, args.warmup_timeout_s)
        except TimeoutError:
            note(f"warm-up: after {args.warmup_timeout_s:.0f} s, {len(seen_c)} of {args.sites} sites had a confirm "
                 f"and {len(seen_a)} an acked command; measuring anyway")
        # the first measured interval: one more after the warm-up, and its tenders not out yet
        first = (int(clock.now() + args.rt_lead_s + 2 * args.speed) // STEP_S + 2) * STEP_S
        starts = {first + k * STEP_S for k in range(args.intervals)}
        # the window covers the intervals' publications: from the first batch's to the one after the last
        win_sim = (first - args.rt_lead_s, first - args.rt_lead_s + args.intervals * STEP_S)
        win_real = [clock.real_origin + (s - clock.sim_origin) / clock.speed for s in win_sim]
        while time.time() < win_real[0]:
            time.sleep(min(0.05, max(0.0, win_real[0] - time.time())))
        warmup_real = time.monotonic() - warm_start_real
        warmup_cpu = {k: cpu_s(p) - cpu0[k] for k, p in pids.items()}
        c0 = {k: cpu_s(p) for k, p in pids.items()}
        split0 = thread_split(pids["agent"])
        note(f"measuring {args.intervals} real-time interval(s) from {datetime.fromtimestamp(first, LOCAL):%H:%M} "
             f"local ({(win_real[1] - win_real[0]):.0f} s real) ...")
        while time.time() < win_real[1]:
            for p in procs:
                if p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")
            time.sleep(min(0.05, max(0.0, win_real[1] - time.time())))
        cpu = {k: cpu_s(p) - c0[k] for k, p in pids.items()}
        split1 = thread_split(pids["agent"])
        cpu["agent: event loop"], cpu["agent: solving"] = (b - a for a, b in zip(split0, split1, strict=True))
        # late answers of the last interval still count for latency (nothing else runs meanwhile)
        last = max(starts)
        deadline = time.monotonic() + STEP_S / args.speed
        while time.monotonic() < deadline and obs.answered(last)[1] < all_sites:
            time.sleep(0.1)
        to_confirm, to_ack, counts = obs.latencies(starts)
        for p in (market, agent, devices):
            p.stop()
        return Result(args.sites, args.intervals, to_confirm, to_ack, ref, cpu, win_real[1] - win_real[0], counts,
                      warmup_real, warmup_cpu, merged_stats(stats_files), read_json(tmp / "devices.json"))
    finally:
        for p in reversed(procs):
            p.stop()
        obs.close()
        broker.stop()


# ------------------------------------------------------------------ report


def report(r: Result, args: argparse.Namespace) -> list[str]:
    n, k = r.sites, r.intervals
    per = {name: c / (n * k) for name, c in r.cpu.items()}
    agent_sites = CORES * STEP_S / per["agent"] if per["agent"] else float("inf")
    both = per["agent"] + per["market"]
    both_sites = CORES * STEP_S / both if both else float("inf")
    ref50, ref99 = quantile(r.ref, 0.5), quantile(r.ref, 0.99)
    c50, c99 = quantile(r.to_confirm, 0.5), quantile(r.to_confirm, 0.99)
    a50, a99 = quantile(r.to_ack, 0.5), quantile(r.to_ack, 0.99)
    lines = [
        f"Loop benchmark: {n:,} sites (meter + pump relay each), {k} real-time interval(s) measured, clock x"
        f"{args.speed:g}, tenders {args.rt_lead_s:g} s (simulated) ahead, spread over {args.rt_spread_wall_s:g} wall s "
        f"({spread_sim(args):g} simulated), telemetry every {args.telemetry_s:g} s "
        f"(simulated); agent workers {args.agent_workers}, solver processes {args.agent_solver_processes}; "
        f"Mosquitto, market, agent, devices and this observer "
        f"share {os.cpu_count()} cores",
        "",
        f"{'latency (wall s)':52} {'n':>6} {'p50':>8} {'p99':>8} {'p99/target':>10} {'p99/ref':>8}",
        f"{'reference: same burst echoed by C clients':52} {len(r.ref):6d} {ref50:8.3f} {ref99:8.3f} {'':>10} "
        f"{'1.00':>8}",
        f"{'tender published -> confirm received':52} {len(r.to_confirm):6d} {c50:8.3f} {c99:8.3f} "
        f"{c99 / TARGET_P99_S:10.2f} {c99 / ref99:8.1f}",
        f"{'tender published -> pump command acked':52} {len(r.to_ack):6d} {a50:8.3f} {a99:8.3f} {'':>10} "
        f"{a99 / ref99:8.1f}",
        "",
        f"{'CPU over the measured intervals':52} {'CPU s':>8} {'busy':>6} {'ms/site/interval':>17}",
    ]
    for name in ("agent", "agent: event loop", "agent: solving", "market", "devices", "mosquitto"):
        lines.append(f"{name:52} {r.cpu[name]:8.2f} {r.cpu[name] / r.window_real_s:6.0%} {1000 * per[name]:17.3f}")
    lines += [
        "",
        f"{'sites served by two cores in one 5-minute interval':52} {'sites':>8} {'/target':>8}",
        f"{'  agent alone (2 workers, one per core)':52} {agent_sites:8,.0f} {agent_sites / TARGET_SITES:8.2f}",
        f"{'  agent + market on the same two cores':52} {both_sites:8,.0f} {both_sites / TARGET_SITES:8.2f}",
        "",
        f"warm-up (not counted): {r.warmup_real_s:.0f} s real; agent {r.warmup_cpu['agent']:.1f} CPU s "
        f"({1000 * r.warmup_cpu['agent'] / n:.0f} ms/site: model builds, day-ahead plans, first rounds), market "
        f"{r.warmup_cpu['market']:.1f} CPU s",
        "measured intervals: " + ", ".join(f"{key} {v}" for key, v in sorted(r.counts.items())),
        "agent: " + ", ".join(f"{key} {r.agent_stats.get(key)}" for key in (
            "tenders_answered", "no_tender", "solve_failures", "confirmed", "refused", "commands_acked",
            "commands_retried", "dead_letters")),
        "devices: " + ", ".join(f"{key} {v}" for key, v in sorted(r.devices_stats.items())),
        "",
        f"{'PASS' if c99 < TARGET_P99_S else 'MISS'}  p99 tender -> confirm < {TARGET_P99_S:g} s at {n:,} sites: "
        f"{c99:.3f} s",
        f"{'PASS' if agent_sites >= TARGET_SITES else 'MISS'}  >= {TARGET_SITES:,} sites per interval on two "
        f"cores (agent): {agent_sites:,.0f}",
        f"{'PASS' if len(r.to_confirm) == n * k else 'MISS'}  every site's tender confirmed in every measured "
        f"interval: {len(r.to_confirm)} of {n * k}",
        f"{'PASS' if len(r.to_ack) == n * k else 'MISS'}  every site's pump command acked in every measured "
        f"interval: {len(r.to_ack)} of {n * k}",
    ]
    return lines


def spread_sim(args: argparse.Namespace) -> float:
    return float(args.rt_spread_wall_s * args.speed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--intervals", type=int, default=3, help="real-time intervals measured after the warm-up")
    parser.add_argument("--speed", type=float, default=10.0, help="simulated seconds per real second")
    parser.add_argument("--rt-lead-s", type=float, default=240.0,
                        help="the market publishes real-time tenders this long (simulated s) before the interval")
    parser.add_argument("--rt-spread-wall-s", type=float, default=None,
                        help="the market spreads each real-time batch over this many wall seconds (its --rt-spread-s "
                             "is this times --speed; default: `tendril market`'s 20 s on a real clock, at most half "
                             "of --rt-lead-s; 0: at once)")
    parser.add_argument("--telemetry-s", type=float, default=10.0, help="simulated s between a device's reports")
    parser.add_argument("--warmup-timeout-s", type=float, default=900.0, help="wall seconds for the warm-up")
    parser.add_argument("--agent-workers", type=int, default=1,
                        help="tendril agent --workers N (1: one worker process, --worker-id w0)")
    parser.add_argument("--agent-solver-processes", type=int, default=0, metavar="N",
                        help="tendril agent --solver-processes N (0: solves in a thread of each worker)")
    parser.add_argument("--profile-agent", type=Path, metavar="FILE",
                        help="run the agent under cProfile (whole run) and write its stats here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, ledger)")
    args = parser.parse_args()
    if args.sites < 1 or args.intervals < 1 or args.agent_workers < 1 or not 0 < args.rt_lead_s < STEP_S:
        parser.error("--sites, --intervals and --agent-workers must be >= 1 and --rt-lead-s in (0, 300)")
    if not args.speed > 0:
        parser.error(f"--speed must be > 0, got {args.speed:g}")
    if args.rt_spread_wall_s is None:
        args.rt_spread_wall_s = min(DEFAULT_RT_SPREAD_S, args.rt_lead_s / 2 / args.speed)
    if not 0 <= spread_sim(args) < args.rt_lead_s:
        parser.error(f"--rt-spread-wall-s x --speed must be in [0, --rt-lead-s): {spread_sim(args):g} simulated s")
    if args.profile_agent and args.agent_workers > 1:
        parser.error("--profile-agent profiles one worker: leave out --agent-workers")
    for binary in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
            print(f"bench/loop.py: {binary} not found (apt-get install mosquitto mosquitto-clients)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="tendril-bench-loop-"))
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))  # stop the services and broker on the way out
    try:
        result = run(args, tmp)
    finally:
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(report(result, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

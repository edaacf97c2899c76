"""Ingestion benchmark: Tendril's MQTT -> VictoriaMetrics path against the broker's own limit.

    python bench/ingest.py [--messages 130000] [--repeat 7] [--rate 10000] [--paced-seconds 5]

Starts its own Mosquitto and VictoriaMetrics (hil/servers.py) and measures, in one run:
  (a)  the raw drain rate of the broker with its own C clients: 4 x `mosquitto_pub -l`
       (32,500 lines each; at most 65,000 per process work at QoS >= 1) into one counting
       `mosquitto_sub -C`, QoS 1, MQTT 5 (the fastest C setup measured here); best of 2
  (a') the same drain fed by this bench's publisher instead (the one (b) uses, since
       mosquitto_pub sends one topic per process and (b) needs 1,000 device topics)
  (b)  `tendril ingest --workers 1` and `--workers 2` into VictoriaMetrics, 1,000 devices,
       150-250-byte telemetry: the drain rate (publish start -> last write acknowledged), its
       ratio to (a), CPU seconds per 10,000 messages of all worker processes (user + system),
       the load split, and then p50/p99 latency publish -> write acknowledged at an offered
       10,000 msg/s; points read back from VictoriaMetrics must equal points sent.
Both deployments run side by side (each with its own broker); after a warm-up of --warmup
messages each (not counted: one-time costs per process), their --repeat max-rate rounds
interleave (1,2 / 2,1 / ...), so load from elsewhere on the shared machine falls on both alike.
Per worker count the table shows the median CPU s/10k of the rounds (each round is printed
too) and the best rate. Targets (issue 8): one worker >= 0.5 x (a); p99 <= 250 ms at 10,000
msg/s; CPU s/10k within 15 % between 1 and 2 workers; even split. Bounded: about 4 minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# runnable from a clean clone, whether or not the project is installed
sys.path[:0] = [str(ROOT), str(ROOT / "firmware" / "lib"), str(ROOT / "bench")]

import tendril_wire as wire  # noqa: E402
from ingest_load import Device, Publisher, devices, payload, throughput_messages  # noqa: E402

from tendril_transactive.cloud import command  # noqa: E402
from tendril_transactive.cloud.devices.registry import Registry  # noqa: E402
from tendril_transactive.cloud.ingest.health import LagHistogram  # noqa: E402
from tendril_transactive.hil import servers  # noqa: E402

PUB_LINES = 65_000  # mosquitto_pub -l at QoS >= 1 stops after 65,535 lines (message-id wrap)
C_PUBLISHERS = 4  # more parallel C publishers drain the broker faster than 2 (measured)
TIMEOUT_S = 120.0
READ_BACK_WAIT_S = 15.0
RAW_REPEAT = 2  # the raw drain is a rate: the best of 2, interference only slows it
SEED = 8


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "firmware" / "lib"), env.get("PYTHONPATH", "")])
    return env


# ------------------------------------------------------------------ (a) raw drain


@dataclass
class Row:
    name: str
    messages: int
    seconds: float
    cpu_s: float | None = None  # of the consumer(s)
    p50_ms: float | None = None
    p99_ms: float | None = None
    read_back: int | None = None
    sent: int | None = None  # compared with read_back; default: messages
    split: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_10k(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / self.messages * 10_000


def _wait_rusage(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for the child; its CPU seconds (user + system)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = 0
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.005)
    proc.kill()
    raise TimeoutError(f"{proc.args!r} did not finish within {timeout} s")


def raw_drain(port: int, payloads: list[bytes], tmp: Path, feeders: list[str] | None) -> Row:
    """mosquitto_sub counting at QoS 1, fed by mosquitto_pub -l (feeders None) or our publisher."""
    site = "raw-c" if feeders is None else "raw-py"
    total = len(payloads)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-V", "mqttv5", "-h", servers.LOOPBACK, "-p", str(port), "-q", "1", "-C", str(total),
         "-t", wire.device_filter(wire.TELEMETRY, site=site)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # mosquitto_sub has no "subscribed" signal; a late one would miss messages and time out
    start = time.perf_counter()
    if feeders is None:
        pubs = []
        per = min(PUB_LINES, -(-total // C_PUBLISHERS))
        for k in range(0, total, per):
            lines = tmp / f"lines-{k}.txt"
            lines.write_bytes(b"".join(p + b"\n" for p in payloads[k : k + per]))
            pubs.append((lines, wire.device_topic(site, f"pub-{k // per}", wire.TELEMETRY)))
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                ["mosquitto_pub", "-V", "mqttv5", "-h", servers.LOOPBACK, "-p", str(port), "-q", "1", "-l",
                 "-t", topic],
                stdin=lines.open("rb"),
            )
            for lines, topic in pubs
        ]
    else:
        topics = [wire.device_topic(site, name, wire.TELEMETRY) for name in feeders]
        asyncio.run(_publish_all(port, [(topics[i % len(topics)], p) for i, p in enumerate(payloads)]))
        procs = []
    cpu = _wait_rusage(sub, TIMEOUT_S)
    seconds = time.perf_counter() - start
    for proc in procs:
        proc.wait(timeout=TIMEOUT_S)
    name = f"(a)  raw: {len(procs)} x mosquitto_pub -l -> mosquitto_sub" if feeders is None else (
        "(a') raw: bench publisher -> mosquitto_sub")
    return Row(name, total, seconds, cpu_s=cpu)


async def _publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = Publisher(servers.LOOPBACK, port, f"bench-pub-{time.monotonic_ns()}")
    packets = [pub.packet(t, b, i) for i, (t, b) in enumerate(messages)]
    await pub.connect()
    try:
        await pub.publish_all(packets)
    finally:
        await pub.close()


# ------------------------------------------------------------------ (b) Tendril


@dataclass
class Snapshot:
    """One worker's --stats-file."""

    received: int
    written: int
    cpu_first: float
    cpu_last: float
    cpu_now: float
    last_written_at: float
    lag: LagHistogram

    @classmethod
    def read(cls, path: Path) -> Snapshot | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        lag = data.get("lag")
        return cls(
            int(data["received"]), int(data["written"]),
            float(data["cpu_at_first_received"] or 0.0), float(data["cpu_at_last_written"] or 0.0),
            float(data["cpu_now"]), float(data["last_written_at"] or 0.0),
            LagHistogram.from_json(lag if isinstance(lag, dict) else {}),
        )  # fmt: skip


def wait_written(paths: list[Path], target: int, what: str, ingest_log: Path) -> list[Snapshot]:
    deadline = time.monotonic() + TIMEOUT_S
    written = 0
    while time.monotonic() < deadline:
        snaps = [Snapshot.read(p) for p in paths]
        ready = [s for s in snaps if s is not None]
        written = sum(s.written for s in ready)
        if len(ready) == len(paths) and written >= target:
            return ready
        time.sleep(0.05)
    tail = "\n".join(ingest_log.read_text(errors="replace").splitlines()[-20:])
    raise TimeoutError(f"{what}: {written} of {target} written after {TIMEOUT_S} s\n{tail}")


def lag_between(before: list[Snapshot], after: list[Snapshot]) -> LagHistogram:
    hist = LagHistogram()
    for b, a in zip(before, after, strict=True):
        hist.merge(a.lag)
        hist.counts = [x - y for x, y in zip(hist.counts, b.lag.counts, strict=True)]
        hist.total -= b.lag.total
    return hist


def count_points(vm: servers.VictoriaMetrics, start: float, end: float, expected: int) -> int:
    """Samples of every message's `seq` field with timestamps in [start, end]: one per message.

    Counted again for up to READ_BACK_WAIT_S while short: right after a write, VictoriaMetrics may
    not list every series of a day it has not seen before yet (seen once here, 85,001 of 930,000
    short). Points that are really missing stay missing, and the table says so."""
    deadline = time.monotonic() + READ_BACK_WAIT_S
    tries = 0
    while True:
        series = vm.export('{__name__=~"(meter|relay)_seq"}', start=start, end=end)
        got = sum(len(values) for s in series if isinstance(values := s["values"], list))
        if got >= expected or time.monotonic() > deadline:
            if got != expected or tries:
                note(f"read back {got:,} of {expected:,} points in [{start:.0f}, {end:.0f}] after {tries + 1} counts")
            return got
        tries += 1
        time.sleep(1.0)


def _start_ingest(workers: int, broker: servers.Mosquitto, vm: servers.VictoriaMetrics, registry: Path,
                  tmp: Path, run: int) -> tuple[subprocess.Popen[bytes], list[Path], Path]:
    stats_paths = [tmp / f"stats-{run}-{i}.json" for i in range(workers)]
    ingest_log = tmp / f"ingest-{run}.log"
    proc = subprocess.Popen(
        command.argv("ingest", "--max-age", "0", "--broker", broker.url, "--influx-url", vm.url,
         "--registry", str(registry), "--state-dir", str(tmp / f"state-{run}"), "--workers", str(workers),
         "--stats-file", str(tmp / f"stats-{run}-{{worker}}.json"), "--stats-interval", "0.2",
         "--health-interval", "1"),
        stdout=ingest_log.open("wb"), stderr=subprocess.STDOUT, env=child_env(), start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while ingest_log.read_text(errors="replace").count("subscribed on") < workers:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"tendril ingest did not subscribe:\n{ingest_log.read_text()}")
        time.sleep(0.05)
    return proc, stats_paths, ingest_log


class Deployment:
    """One `tendril ingest --workers N` with a broker of its own, kept running for all its phases."""

    def __init__(self, workers: int, vm: servers.VictoriaMetrics, registry: Path, tmp: Path, run: int) -> None:
        self.workers, self.vm, self.run = workers, vm, run
        self.label = f"(b{workers}) Tendril, {workers} worker{'s' * (workers > 1)}"
        workdir = tmp / f"mosquitto-{run}"
        workdir.mkdir()
        self.broker = servers.start_mosquitto(workdir, max_queued_messages=0)  # fresh: no sessions of earlier runs
        self.written = 0  # messages written by this deployment so far
        self.phases = 0
        try:
            self.proc, self.stats_paths, self.log = _start_ingest(workers, self.broker, vm, registry, tmp, run)
        except BaseException:
            self.broker.stop()
            raise

    def max_rate(self, fleet: list[Device], count: int, what: str = "max rate") -> Row:
        """Publish `count` messages as fast as the broker takes them; CPU and split of this phase."""
        base_ts = 1_704_067_200 + (self.run * 10 + self.phases) * 30 * 86400  # a month of its own per phase
        messages = throughput_messages(fleet, count, base_ts, SEED + self.run * 10 + self.phases)
        self.phases += 1
        pub = Publisher(servers.LOOPBACK, self.broker.port, f"bench-pub-{time.monotonic_ns()}")
        packets = [pub.packet(t, b, i) for i, (t, b) in enumerate(messages)]  # before the CPU window opens
        before = wait_written(self.stats_paths, self.written, "idle before a max-rate phase", self.log)
        note(f"{self.label}: {count:,} messages as fast as the broker takes them ({what}) ...")
        start = time.time()
        asyncio.run(_publish_packets(pub, packets))
        self.written += count
        after = wait_written(self.stats_paths, self.written, "max-rate phase", self.log)
        end = max(s.last_written_at for s in after)
        row = Row(f"{self.label}, {what}", count, end - start,
                  cpu_s=sum(a.cpu_last - (b.cpu_now if b.received else a.cpu_first)
                            for a, b in zip(after, before, strict=True)),
                  split=[a.received - b.received for a, b in zip(after, before, strict=True)])  # fmt: skip
        row.read_back = count_points(self.vm, base_ts - 1, base_ts + 10 * (count // len(fleet) + 2), count)
        return row

    def paced(self, fleet: list[Device], args: argparse.Namespace, first_seq: int) -> Row:
        """p50/p99 publish -> write ack at the offered rate."""
        paced = int(args.rate * args.paced_seconds)
        note(f"{self.label}: {paced:,} messages at {args.rate:,.0f} msg/s ...")
        rng = random.Random(SEED + 100 + self.run)

        def make(i: int, now: float) -> tuple[str, bytes]:
            dev = fleet[i % len(fleet)]
            return dev.topic, payload(dev, first_seq + i // len(fleet), now, rng)

        before = wait_written(self.stats_paths, self.written, "idle before the paced phase", self.log)
        time.sleep(1.5)  # the read-back window starts 1 s early: keep clear of the other deployment's points
        paced_start = time.time()
        asyncio.run(_publish_paced(self.broker.port, make, paced, args.rate))
        self.written += paced
        after = wait_written(self.stats_paths, self.written, "paced phase", self.log)
        paced_end = time.time()
        lag = lag_between(before, after)
        row = Row(
            f"{self.label}, {args.rate:,.0f} msg/s offered", paced, paced_end - paced_start,
            cpu_s=sum(a.cpu_last - b.cpu_now for a, b in zip(after, before, strict=True)),
            p50_ms=lag.quantile(0.5), p99_ms=lag.quantile(0.99),
            split=[a.received - b.received for a, b in zip(after, before, strict=True)],
        )  # fmt: skip
        row.read_back = count_points(self.vm, paced_start - 1, paced_end + 1, paced)
        return row

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.broker.stop()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(label: str, rows: list[Row], warmup: Row) -> Row:
    """The max-rate rounds of one worker count as one row: median CPU, best rate, every point."""
    cpu = _median([r.cpu_s or 0.0 for r in rows])
    best = min(rows, key=lambda r: r.seconds)
    out = Row(f"{label}, max rate, {len(rows)} rounds", best.messages, best.seconds,
              cpu_s=cpu, split=[sum(parts) for parts in zip(*(r.split for r in rows), strict=True)])  # fmt: skip
    out.read_back = sum(r.read_back or 0 for r in [*rows, warmup])
    out.sent = sum(r.messages for r in [*rows, warmup])
    return out


def run_tendril(vm: servers.VictoriaMetrics, registry: Path, fleet: list[Device], tmp: Path,
                args: argparse.Namespace) -> tuple[Row, Row, Row, Row, list[str]]:
    """1 and 2 workers, both running throughout; their max-rate rounds interleave (1,2 then 2,1 ...)
    so that whatever else the shared machine does falls on both alike."""
    one = Deployment(1, vm, registry, tmp, run=1)
    try:
        two = Deployment(2, vm, registry, tmp, run=2)
        try:
            # Not counted: each worker process's first messages pay one-time costs (the store's
            # connection, a dedup ring and a topic decision per device), N times for N workers.
            warm = {d: d.max_rate(fleet, args.warmup, "warm-up, not counted") for d in (one, two)}
            rounds: dict[Deployment, list[Row]] = {one: [], two: []}
            for k in range(args.repeat):
                for d in (one, two) if k % 2 == 0 else (two, one):
                    rounds[d].append(d.max_rate(fleet, args.messages, f"round {k + 1} of {args.repeat}"))
            per_round = [f"  {d.label}, CPU s/10k per round: "
                         + ", ".join(f"{r.cpu_per_10k or 0.0:.3f}" for r in rounds[d]) for d in (one, two)]  # fmt: skip
            ratios = [(b.cpu_s or 0.0) / (a.cpu_s or 1.0) for a, b in zip(rounds[one], rounds[two], strict=True)]
            per_round.append(f"  2 workers / 1 worker, round by round: {', '.join(f'{x:.2f}' for x in ratios)} "
                             f"(median {_median(ratios):.2f})")  # fmt: skip
            b1, b2 = summarize(one.label, rounds[one], warm[one]), summarize(two.label, rounds[two], warm[two])
            first_seq = (args.warmup + args.repeat * args.messages) // len(fleet) + 10
            p1 = one.paced(fleet, args, first_seq)
            p2 = two.paced(fleet, args, first_seq)
            return b1, p1, b2, p2, per_round
        finally:
            two.stop()
    finally:
        one.stop()


async def _publish_packets(pub: Publisher, packets: list[bytes]) -> None:
    await pub.connect()
    try:
        await pub.publish_all(packets)
    finally:
        await pub.close()


async def _publish_paced(port: int, make: Callable[[int, float], tuple[str, bytes]], count: int, rate: float) -> None:
    pub = Publisher(servers.LOOPBACK, port, f"bench-paced-{time.monotonic_ns()}")
    await pub.connect()
    try:
        await pub.publish_paced(make, count, rate)
    finally:
        await pub.close()


# ------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(rows: list[Row], raw: Row) -> list[str]:
    lines = [
        f"{'':56} {'msg/s':>8} {'x (a)':>6} {'CPU s/10k':>9} {'p50 ms':>7} {'p99 ms':>7} {'read back':>10}  split",
    ]
    for row in rows:
        split = "/".join(f"{100 * n / max(sum(row.split), 1):.0f}" for n in row.split) if len(row.split) > 1 else ""
        back = "-" if row.read_back is None else f"{row.read_back:,}/{row.sent or row.messages:,}"
        lines.append(
            f"{row.name:56} {row.rate:8,.0f} {row.rate / raw.rate:6.2f} {_fmt(row.cpu_per_10k, '9.3f')} "
            f"{_fmt(row.p50_ms, '7.0f')} {_fmt(row.p99_ms, '7.0f')} {back:>10}  {split}"
        )
    return lines


def verdicts(raw: Row, b1: Row, b2: Row, p1: Row, p2: Row) -> list[str]:
    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    cpu1, cpu2 = b1.cpu_per_10k or 0.0, b2.cpu_per_10k or 0.0
    spread = abs(cpu2 - cpu1) / cpu1 if cpu1 else float("inf")
    shares = [n / max(sum(b2.split), 1) for n in b2.split]
    every = all(r.read_back == (r.sent or r.messages) for r in (b1, b2, p1, p2))
    worst_p99 = max(p1.p99_ms or float("inf"), p2.p99_ms or float("inf"))
    return [
        f"{mark(b1.rate >= 0.5 * raw.rate)}  one worker >= 0.5 x raw drain: {b1.rate / raw.rate:.2f} x",
        f"{mark(worst_p99 <= 250)}  p99 publish -> write ack <= 250 ms at the offered rate: {worst_p99:.0f} ms",
        f"{mark(spread <= 0.15)}  CPU s/10k msgs, 2 workers vs 1: {cpu2:.3f} vs {cpu1:.3f} "
        f"({100 * spread:.0f} % apart)",
        f"{mark(all(abs(x - 0.5) <= 0.05 for x in shares))}  even split over 2 workers: "
        + "/".join(f"{100 * x:.1f} %" for x in shares),
        f"{mark(every)}  points read back equal points sent, every run",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2 * PUB_LINES, help="messages per max-rate run")
    parser.add_argument("--rate", type=float, default=10_000.0, help="offered rate of the latency runs (msg/s)")
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="length of the latency runs")
    parser.add_argument("--repeat", type=int, default=7,
                        help="interleaved max-rate rounds per worker count (median CPU, best rate; raw: best of 2)")
    parser.add_argument("--warmup", type=int, default=20_000, help="messages per worker count before the rounds")
    args = parser.parse_args()
    for binary in ("mosquitto", "mosquitto_pub", "mosquitto_sub", "victoria-metrics"):
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
            print(f"bench/ingest.py: {binary} not found (apt-get install mosquitto mosquitto-clients "
                  "victoria-metrics)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="tendril-bench-ingest-"))
    fleet = devices()
    registry = tmp / "registry"
    note(f"registering {len(fleet)} devices ...")
    reg = Registry(registry)
    for dev in fleet:
        reg.add(dev.site, dev.device, dev.type)
    (tmp / "vm").mkdir()
    vm = servers.start_victoria_metrics(tmp / "vm")
    try:
        raw_payloads = [b for _, b in throughput_messages(fleet, args.messages, 1_700_000_000, SEED)]
        (tmp / "mq-raw").mkdir()
        broker = servers.start_mosquitto(tmp / "mq-raw", max_queued_messages=0)
        try:
            # A rate: the best of RAW_REPEAT, since interference on a shared machine only slows it.
            note(f"(a) raw drain: {len(raw_payloads):,} messages, C clients ...")
            raw = max((raw_drain(broker.port, raw_payloads, tmp, None) for _ in range(RAW_REPEAT)),
                      key=lambda r: r.rate)  # fmt: skip
            note("(a') raw drain, bench publisher ...")
            raw_py = max((raw_drain(broker.port, raw_payloads, tmp, [d.device + "-" + d.site for d in fleet[:8]])
                          for _ in range(RAW_REPEAT)), key=lambda r: r.rate)  # fmt: skip
        finally:
            broker.stop()
        b1, p1, b2, p2, per_round = run_tendril(vm, registry, fleet, tmp, args)
    finally:
        vm.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = [len(b) for b in raw_payloads]
    print(f"Ingestion benchmark: {len(fleet):,} devices, payloads {min(sizes)}-{max(sizes)} bytes "
          f"(mean {sum(sizes) / len(sizes):.0f}), QoS 1; Mosquitto, VictoriaMetrics, publishers and "
          f"ingestion share {os.cpu_count()} cores")
    print("\n".join(report([raw, raw_py, b1, p1, b2, p2], raw)))
    print("CPU s/10k: the consumer's CPU (mosquitto_sub, or all ingestion workers); split: messages per worker (%)")
    print("Max-rate rows of (b): the median CPU s/10k and the best rate of their rounds, which alternate between\n"
          "1 and 2 workers after a warm-up that is not counted; read back covers the warm-up and every round.")
    print("\n".join(per_round))
    print("At an offered rate below capacity each process idles between reads, and CPU per message rises (cold\n"
          "caches, fixed per-wakeup costs), more so for 2 workers at half the rate each: the 15 % comparison is\n"
          "made at full load.")
    print("\n".join(verdicts(raw, b1, b2, p1, p2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

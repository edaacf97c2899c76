"""What TLS costs, cleartext and TLS side by side in one run (issue 13):

    python bench/tls.py [--messages 20000] [--repeat 3] [--rtt 1000] [--heap-seconds 25]

(a) Ingest: `tendril ingest` (one worker, embedded store, 1,000 devices, 150-250-byte
    telemetry) reading from Mosquitto over mqtt:// and over mqtts://, each with a broker of its
    own, rounds alternating; per round the drain rate (publish start -> last write) and the
    worker's CPU seconds per 10,000 messages; the table shows the medians and TLS / plain.
    The publisher speaks cleartext in both, so only ingestion's hop differs.
(b) Firmware (MicroPython unix port, tendril_fw's MQTT client, firmware/tools/tls_rtt.py): QoS 1
    publish -> PUBACK round trip, connect time, and the GC heap a session and the context hold.
(c) Firmware heap at 48wK: a precompiled relay (as deployed) under `-X heapsize=48wK` for
    --heap-seconds, cleartext and TLS; the lowest `free_heap` its state records report, and
    whether it hit MemoryError. Bounded: about 2 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "firmware" / "lib"), str(ROOT / "bench")]

import paho.mqtt.client as paho  # noqa: E402
import tendril_wire as wire  # noqa: E402
from ingest import Row, _median, _publish_packets, child_env, note, wait_written  # noqa: E402
from ingest_load import Publisher, devices, throughput_messages  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tendril_transactive.cloud import command  # noqa: E402
from tendril_transactive.edge.clock import SimClock  # noqa: E402
from tendril_transactive.edge.firmware_process import (  # noqa: E402
    FirmwareConfig,
    FirmwareProcess,
    find_micropython,
    micropython_path,
)
from tendril_transactive.hil import servers  # noqa: E402

SEED = 13


class Ingest:
    """One `tendril ingest` on a broker of its own, over `tls` or not."""

    def __init__(self, tls: bool, tmp: Path) -> None:
        self.tls, self.label = tls, "TLS  " if tls else "plain"
        work = tmp / self.label.strip()
        work.mkdir()
        self.broker = servers.start_mosquitto(work, max_queued_messages=0, tls=tls)
        url = self.broker.tls_url if tls else self.broker.url
        self.stats = [work / "stats-0.json"]
        self.log = work / "ingest.log"
        argv = command.argv("ingest", "--max-age", "0", "--broker", url, "--accept-any-device",
                "--store-file", str(work / "store.lp"), "--state-dir", str(work / "state"), "--no-fsync",
                "--stats-file", str(self.stats[0]), "--stats-interval", "0.2", "--health-interval", "0")
        if tls:
            argv += ["--ca-file", str(self.broker.ca_file)]
        self.proc = subprocess.Popen(argv, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=child_env(),
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while "subscribed on" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"ingest ({self.label}) did not subscribe:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.written = 0
        self.rounds = 0

    def round(self, fleet: list[object], count: int) -> Row:
        base_ts = 1_704_067_200 + self.rounds * 30 * 86400  # fresh timestamps: no duplicates
        messages = throughput_messages(fleet, count, base_ts, SEED + self.rounds)  # type: ignore[arg-type]
        self.rounds += 1
        pub = Publisher(servers.LOOPBACK, self.broker.port, f"bench-pub-{time.monotonic_ns()}")
        packets = [pub.packet(t, b, i) for i, (t, b) in enumerate(messages)]
        before = wait_written(self.stats, self.written, "idle", self.log)[0]
        start = time.time()
        asyncio.run(_publish_packets(pub, packets))
        self.written += count
        after = wait_written(self.stats, self.written, f"{self.label} round", self.log)[0]
        cpu = after.cpu_last - (before.cpu_now if before.received else after.cpu_first)
        return Row(self.label, count, after.last_written_at - start, cpu_s=cpu)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.broker.stop()


def bench_ingest(args: argparse.Namespace, tmp: Path) -> list[str]:
    fleet: list[object] = list(devices())
    plain, tls = Ingest(False, tmp), Ingest(True, tmp)
    rows: dict[Ingest, list[Row]] = {plain: [], tls: []}
    try:
        for d in (plain, tls):
            note(f"(a) {d.label}: warm-up {args.messages // 2:,} messages (not counted) ...")
            d.round(fleet, args.messages // 2)
        for k in range(args.repeat):
            for d in (plain, tls) if k % 2 == 0 else (tls, plain):
                note(f"(a) {d.label}: round {k + 1} of {args.repeat}, {args.messages:,} messages ...")
                rows[d].append(d.round(fleet, args.messages))
    finally:
        plain.stop()
        tls.stop()
    out = ["(a) ingest, 1 worker, embedded store, QoS 1, 1,000 devices:",
           "           msg/s (median)   CPU s/10k (median)   per round CPU s/10k"]
    med: dict[Ingest, tuple[float, float]] = {}
    for d in (plain, tls):
        rate = _median([r.rate for r in rows[d]])
        cpu = _median([r.cpu_per_10k or 0.0 for r in rows[d]])
        med[d] = (rate, cpu)
        out.append(f"  {d.label}    {rate:>10,.0f}        {cpu:>8.3f}            "
                   + ", ".join(f"{r.cpu_per_10k or 0.0:.3f}" for r in rows[d]))
    ratio_rate, ratio_cpu = med[tls][0] / med[plain][0], med[tls][1] / med[plain][1]
    out.append(f"  TLS / plain: rate x{ratio_rate:.2f}, CPU per message x{ratio_cpu:.2f}")
    return out


def bench_rtt(args: argparse.Namespace, tmp: Path) -> list[str]:
    work = tmp / "rtt"
    work.mkdir()
    broker = servers.start_mosquitto(work, tls=True)
    try:
        assert broker.tls_port is not None
        note(f"(b) firmware publish -> PUBACK, {args.rtt} each, plain/TLS twice ...")
        env = dict(os.environ, MICROPYPATH=micropython_path())
        done = subprocess.run([find_micropython(), str(ROOT / "firmware" / "tools" / "tls_rtt.py"), str(broker.port),
                               str(broker.tls_port), str(broker.ca_file), str(args.rtt)],
                              capture_output=True, text=True, timeout=120, env=env, check=False)
    finally:
        broker.stop()
    if done.returncode != 0:
        return [f"(b) firmware RTT failed: {done.stdout}{done.stderr}"]
    lines = done.stdout.split("\n")
    fields = [dict(re.findall(r"(\w+)=(\d+)", line)) for line in lines if line.startswith(("plain", "tls"))]
    names = [line.split()[0] for line in lines if line.startswith(("plain", "tls"))]
    out = ["(b) firmware (unix port) QoS 1 publish of 200 bytes -> PUBACK, loopback broker:",
           f"  SSLContext with the CA: {lines[0].split('=')[1]} bytes of GC heap"]
    for name, f in zip(names, fields, strict=True):
        out.append(f"  {name:<5} connect {int(f['connect_us']) / 1000:6.1f} ms  median {int(f['median_us']):5d} us  "
                   f"p99 {int(f['p99_us']):5d} us  session holds {int(f['session_bytes']):6d} bytes of heap")
    med = {n: _median([float(f["median_us"]) for m, f in zip(names, fields, strict=True) if m == n])
           for n in ("plain", "tls")}
    out.append(f"  TLS / plain publish -> PUBACK (median of medians): x{med['tls'] / med['plain']:.2f}")
    return out


def _heap_run(tls: bool, heap: str, seconds: float, tmp: Path,
              broker: servers.Mosquitto) -> tuple[int | None, int, bool]:
    assert broker.tls_port is not None
    name = "relay-tls" if tls else "relay-plain"
    cfg = FirmwareConfig(site="bench", device=name, type="relay", broker_host=servers.LOOPBACK,
                         broker_port=broker.tls_port if tls else broker.port, key=secrets.token_bytes(32),
                         telemetry_s=10.0, state_s=10.0, keepalive_s=10, relay_file=tmp / f"{name}.relay",
                         relay_load_w=1000.0, tls=tls, ca=str(broker.ca_file) if tls else None,
                         server_hostname="localhost")
    heaps: queue.Queue[int] = queue.Queue()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"heap-{name}")
    sub.on_message = lambda _c, _u, m: heaps.put(int(json.loads(m.payload).get("free_heap", -1)))
    sub.connect(servers.LOOPBACK, broker.port)
    sub.subscribe(wire.device_topic("bench", name, wire.STATE), 1)
    sub.loop_start()
    clock = SimClock(sim_origin=1_717_200_000.0, speed=10.0)  # a state record every real second
    proc = FirmwareProcess(cfg, tmp / name, clock.env_value(), heapsize=heap, precompiled=True)
    proc.start()
    time.sleep(seconds)
    proc.stop()
    sub.loop_stop()
    sub.disconnect()
    seen = []
    while not heaps.empty():
        seen.append(heaps.get())
    log = proc.log_text()
    return (min(seen) if seen else None), len(seen), "MemoryError" in log


def bench_heap(args: argparse.Namespace, tmp: Path) -> list[str]:
    work = tmp / "heap"
    work.mkdir()
    broker = servers.start_mosquitto(work, tls=True)
    out = [f"(c) firmware relay, precompiled, -X heapsize={args.heap}, {args.heap_seconds:.0f} s each:"]
    try:
        for tls in (False, True):
            note(f"(c) relay at {args.heap}, {'TLS' if tls else 'plain'} ...")
            low, count, oom = _heap_run(tls, args.heap, args.heap_seconds, work, broker)
            lowest = "-" if low is None else str(low)
            out.append(f"  {'TLS  ' if tls else 'plain'} lowest free heap {lowest:>7} bytes over "
                       f"{count} state records{'; MemoryError in the log' if oom else ''}"
                       f"{'; never connected' if count == 0 else ''}")
    finally:
        broker.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per ingest round")
    parser.add_argument("--repeat", type=int, default=3, help="ingest rounds per mode (alternating)")
    parser.add_argument("--rtt", type=int, default=1000, help="firmware publishes per RTT run")
    parser.add_argument("--heap", default="48wK", help="firmware heap for (c)")
    parser.add_argument("--heap-seconds", type=float, default=25.0, help="real seconds per heap run")
    parser.add_argument("--only", choices=("ingest", "rtt", "heap"), help="run one part")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tendril-bench-tls-"))
    tmp.chmod(0o711)  # Mosquitto, started as root, drops to its own user and reads the certificates here
    out: list[str] = []
    try:
        for part, run in (("ingest", bench_ingest), ("rtt", bench_rtt), ("heap", bench_heap)):
            if args.only in (None, part):
                out += run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"TLS cost, cleartext vs TLS in one run ({os.cpu_count()} shared cores):")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

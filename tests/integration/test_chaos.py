"""Chaos on the ingestion path, everything real and over TLS (issue 13, "Done when").

Three meters (the firmware on the MicroPython unix port, each with its flash log) stream over
TLS to Mosquitto configured by `tendril device mosquitto-config` (dynamic security, persistence,
run as the packaged `mosquitto` user); `tendril ingest` reads them over mqtts:// into
VictoriaMetrics. While they stream:

* ingest is killed -9 and stays down 10 s;
* Mosquitto is restarted;
* VictoriaMetrics is down for 60 s;
* a registered device (the attacker holds its credentials) tries to join the ingest's share
  group and to connect with the ingest's client id.

Counted by seq: every reading a meter took from its first to its last is stored (none lost,
the store keeps one copy of a replayed point as InfluxDB would), the attacker was refused both
times and the broker logged it, and ingest never lost its session nor had it taken over.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import tendril_wire as tw
from ingest_support import wait_until_sync as wait
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud import command
from tendril_transactive.cloud.cli.main import main as tendril
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.hil import servers
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.firmware, pytest.mark.slow]

METERS = [("site-1", "meter"), ("site-2", "meter"), ("site-3", "meter")]
ROGUE = ("site-9", "rogue")  # registered, its credentials stolen
TELEMETRY_S = 0.25  # each meter: 4 readings a second
INGEST_DOWN_S = 10.0
VM_DOWN_S = 60.0


@dataclass
class Chaos:
    base: Path
    registry: Registry
    conf: Path
    tls_port: int
    broker: Mosquitto
    victoria: VictoriaMetrics
    ingest_argv: list[str]
    ingest_env: dict[str, str]
    ingest: subprocess.Popen[bytes] | None = None
    meters: list[FirmwareProcess] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.conf / "ca.crt"

    @property
    def ingest_log(self) -> Path:
        return self.base / "ingest.log"

    def start_ingest(self) -> None:
        with self.ingest_log.open("ab") as fh:
            self.ingest = subprocess.Popen(self.ingest_argv, stdout=fh, stderr=subprocess.STDOUT, env=self.ingest_env)

    def stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.base / "ingest-stats.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        return self.ingest_log.read_text(errors="replace")[-3000:] if self.ingest_log.exists() else ""


@pytest.fixture()
def chaos(micropython: str) -> Iterator[Chaos]:
    servers.find_binary("mosquitto", "mosquitto")
    # Outside pytest's 0700 tmp folder: the broker drops to user mosquitto and must reach its files.
    base = Path(tempfile.mkdtemp(prefix="tendril-chaos-"))
    base.chmod(0o711)
    root = base / "registry"
    for site, device in [*METERS, ROGUE]:
        assert tendril(["device", "--registry", str(root), "add", "--site", site, "--device", device,
                        "--type", "meter"]) == 0  # fmt: skip
    tls_port = servers.free_port()
    assert tendril(["device", "--registry", str(root), "mosquitto-config", "--out", str(base / "conf"),
                    "--tls-port", str(tls_port), "--tls-hostname", "localhost",
                    "--persistence-dir", str(base / "data")]) == 0  # fmt: skip
    broker = servers.start_mosquitto_generated(base / "conf" / "mosquitto.conf", tls_port, base)
    # one copy per (series, timestamp), as InfluxDB keeps it: a point replayed after a kill -9
    # overwrites itself (exactly-once is test_ingest_crash.py's; this one counts losses)
    (base / "vm").mkdir()
    try:
        victoria = servers.start_victoria_metrics(base / "vm", dedup_ms=1)
    except BaseException:
        broker.stop()
        raise
    password = json.loads((root / "secrets" / "_services.json").read_text())["ingest"]
    argv = command.argv("ingest", "--broker", f"mqtts://localhost:{tls_port}", "--ca-file",
                        str(base / "conf" / "ca.crt"), "--username", "tendril-ingest", "--registry", str(root),
                        "--influx-url", victoria.url, "--state-dir", str(base / "ingest"),
                        "--stats-file", str(base / "ingest-stats.json"), "--stats-interval", "0.2")
    run = Chaos(base, Registry(root), base / "conf", tls_port, broker, victoria, argv,
                {**os.environ, "TENDRIL_MQTT_PASSWORD": str(password)})
    try:
        yield run
    finally:
        for meter in run.meters:
            meter.stop()
        if run.ingest is not None and run.ingest.poll() is None:
            run.ingest.kill()
        broker.stop()
        victoria.stop()
        shutil.rmtree(base, ignore_errors=True)


def stored(victoria: VictoriaMetrics) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Every stored meter reading by (site, device): (seq, timestamp ms), one per stored sample."""
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    try:
        victoria.flush()
        series_list = victoria.export('{__name__="meter_seq"}', start=tw.MIN_TS, end=tw.MAX_TS)
    except OSError:
        return {}  # down: nothing to say yet
    for series in series_list:
        metric, values, stamps = series["metric"], series["values"], series["timestamps"]
        assert isinstance(metric, dict) and isinstance(values, list) and isinstance(stamps, list)
        out.setdefault((str(metric["site"]), str(metric["device"])), []).extend(
            (int(v), int(t)) for v, t in zip(values, stamps, strict=True))
    return out


def gaps(readings: list[tuple[int, int]]) -> list[int]:
    """Seqs missing between the meter's first reading (seq 0) and the last one stored."""
    seqs = {s for s, _ in readings}
    return sorted(set(range(max(seqs, default=-1) + 1)) - seqs)


class Attacker:
    """The rogue device's credentials, over TLS like any device."""

    def __init__(self, run: Chaos, client_id: str) -> None:
        secrets = run.registry.secrets_for(*ROGUE)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.c.username_pw_set(f"{ROGUE[0]}.{ROGUE[1]}", secrets.mqtt_password)
        self.c.tls_set(ca_certs=str(run.ca))
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connect", str(rc)))
        self.c.on_subscribe = lambda _c, _u, _m, rcs, _p: self.events.put(("suback", [str(r) for r in rcs]))
        self.c.on_message = lambda _c, _u, m: self.events.put(("message", m.topic))
        self.c.reconnect_delay_set(60, 60)  # refused: no coming straight back
        self.c.connect("localhost", run.tls_port)
        self.c.loop_start()

    def next(self, kind: str) -> Any:
        while True:
            got, value = self.events.get(timeout=15)
            if got == kind:
                return value

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_chaos_over_tls_loses_no_acknowledged_reading_and_refuses_the_attacker(chaos: Chaos, tmp_path: Path) -> None:
    run = chaos
    run.start_ingest()
    wait(lambda: "subscribed" in run.log(), run.log)
    for site, device in METERS:
        secrets = run.registry.secrets_for(site, device)
        power = tmp_path / f"{site}.power"
        power.write_text("1500\n")
        config = FirmwareConfig(
            site=site, device=device, type="meter", broker_host=LOOPBACK, broker_port=run.tls_port, key=secrets.key,
            telemetry_s=TELEMETRY_S, state_s=30.0, keepalive_s=5, ack_timeout_s=2.0, reconnect_max_s=1.0,
            power_file=power, username=f"{site}.{device}", password=secrets.mqtt_password, tls=True,
            ca=str(run.ca), server_hostname="localhost", replay_per_s=40.0)
        meter = FirmwareProcess(config, tmp_path / f"{site}-{device}")
        meter.start()
        run.meters.append(meter)

    def stored_at_least(n: int) -> bool:
        got = stored(run.victoria)
        return len(got) == len(METERS) and all(len(v) >= n for v in got.values())

    wait(lambda: stored_at_least(10), lambda: f"first readings stored; ingest:\n{run.log()}")

    # ---- ingest killed -9, down 10 s, back
    assert run.ingest is not None
    run.ingest.send_signal(signal.SIGKILL)
    run.ingest.wait(10)
    time.sleep(INGEST_DOWN_S)
    run.start_ingest()
    wait(lambda: run.log().count("subscribed") >= 2, run.log)

    # ---- Mosquitto restarted (SIGTERM: it saves its sessions and queues, then back)
    run.broker.stop()
    run.broker.start()
    wait(lambda: all("connected to" in m.log_text().rsplit("cannot connect", 1)[-1] for m in run.meters),
         lambda: "meters back after the broker restart:\n" + run.meters[0].log_text()[-1500:])

    # ---- VictoriaMetrics down 60 s; the attacker tries meanwhile
    run.victoria.stop()
    down_at = time.monotonic()
    thief = Attacker(run, client_id="tendril-ingest")
    refused_id = thief.next("connect")
    thief.c.loop_stop()
    member = Attacker(run, client_id="tendril-site-9-rogue")
    assert member.next("connect") == "Success"
    member.c.subscribe("$share/tendril-ingest/" + tw.device_filter(tw.TELEMETRY), qos=1)
    refused_share = member.next("suback")
    member.c.subscribe(tw.device_filter(tw.TELEMETRY), qos=1)  # nor plainly
    refused_read = member.next("suback")
    time.sleep(2.0)
    heard = [v for k, v in list(member.events.queue) if k == "message"]
    member.close()
    time.sleep(max(0.0, VM_DOWN_S - (time.monotonic() - down_at)))
    run.victoria.start()

    # ---- the stream goes on; everything a meter took until now must arrive. Seen when, for each
    # meter, the stored seqs run without a gap from 0 up to a reading taken after this moment.
    chaos_over_ms = int(time.time() * 1000)

    def caught_up() -> bool:
        got = stored(run.victoria)
        return all(got.get(k) and not gaps(got[k]) and max(t for _, t in got[k]) > chaos_over_ms for k in METERS)

    wait(caught_up, lambda: f"every reading up to now stored; gaps "
                            f"{ {k: gaps(v)[:5] for k, v in stored(run.victoria).items()} }; "
                            f"ingest stats {run.stats()}\n{run.log()}", 180)
    # The store can hold a batch whose write the ingest timed out on and spooled: every seq is
    # then stored before the spool is replayed, so the spool's drain is waited for on its own.
    def drained() -> bool:
        now = run.stats()
        return now.get("spool_lines") == 0 and now.get("replayed", -1) >= now.get("spooled", 0)

    wait(drained, lambda: f"the spool drained; ingest stats {run.stats()}\n{run.log()}", 120)
    stats = run.stats()
    got = stored(run.victoria)
    for meter in run.meters:
        meter.stop()
        assert "outbox full" not in meter.log_text(), meter.log_text()[-2000:]
    assert run.ingest is not None and run.ingest.poll() is None, run.log()
    run.ingest.send_signal(signal.SIGTERM)
    assert run.ingest.wait(30) == 0, run.log()

    # ---- counted by seq: no gap, no reading stored twice (the store keeps one per timestamp)
    for key in METERS:
        seqs = [s for s, _ in got[key]]
        assert not gaps(got[key]), f"{key}: lost {gaps(got[key])[:10]}"
        assert len(seqs) == len(set(seqs)), f"{key}: a reading stored twice"
        print(f"\n{key[0]}/{key[1]}: seq 0..{max(seqs)} all stored")
    # the faults were real: this ingest spooled through the store's outage and replayed it, and
    # neither restart cost it its session (persistence) nor did anyone take it over
    assert stats["spooled"] > 0 and stats["replayed"] >= stats["spooled"] and stats["lost"] == 0, stats
    assert stats["session_takeovers"] == 0 and stats["sessions_lost"] == 0, stats

    # ---- the attacker: refused, and the broker says so
    assert refused_id == "Not authorized", refused_id
    assert refused_share == ["Not authorized"], refused_share
    assert refused_read == ["Not authorized"], refused_read
    assert heard == [], f"the attacker read {heard[:3]}"
    broker_log = run.broker.log_path.read_text(errors="replace")
    assert "tendril-ingest" in broker_log and "not authorised" in broker_log.lower(), broker_log[-3000:]
    print(f"ingest: {stats['written']} written, {stats['spooled']} spooled; attacker: connect {refused_id!r}, "
          f"share {refused_share}, read {refused_read}")

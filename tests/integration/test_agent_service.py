"""`tendril agent` as a process against a real Mosquitto, on a fast simulated clock.

The test is the agent's world: it stands in for the market (publishes real-time tenders built
by cloud.market.tenders and confirms the transactions it receives; the real market service is
written separately) and for the devices (meters report, relays verify the command signature
with their key and acknowledge)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tendril_wire as wire

from tendril_transactive.cloud import command
from tendril_transactive.cloud.agent.config import LOCAL
from tendril_transactive.cloud.devices.registry import Registry, SiteRecord
from tendril_transactive.cloud.market.tenders import TenderConfig, build_tenders
from tendril_transactive.cloud.sources.prices import PriceInterval
from tendril_transactive.edge.clock import SimClock
from tendril_transactive.hil.servers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2024, 3, 14, 12, 0, tzinfo=LOCAL).timestamp()
SPEED = 30.0


def wait_for(cond: Callable[[], bool], what: Callable[[], str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting: {what()}")


def registry(root: Path, sites: list[str]) -> dict[tuple[str, str], bytes]:
    reg = Registry(root)
    keys = {}
    for site in sites:
        reg.set_site(SiteRecord(site, settings={"hvac": {}, "pump": {"hours_per_day": 4}}))
        reg.add(site, "meter", "meter")
        for load in ("pump", "hvac"):
            keys[(site, load)] = reg.add(site, load, "relay", load).key
    return keys


class World:
    """The fake market and devices, on one paho client."""

    def __init__(self, port: int, keys: dict[tuple[str, str], bytes], confirm_from_send: int = 1,
                 speed: float = SPEED) -> None:
        self.keys = keys
        self.clock = SimClock(sim_origin=T0 - 60, speed=speed)
        self.lock = threading.Lock()
        self.transactions: list[dict[str, Any]] = []
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self.dead: list[dict[str, Any]] = []
        self.confirm_from_send = confirm_from_send
        self.confirmed: set[str] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-world")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        for flt in (wire.site_filter(wire.TRANSACTION), wire.device_filter(wire.CMD), wire.dead_letter_topic("#")):
            self.client.subscribe(flt, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if m.topic.startswith(wire.dead_letter_topic("")):
            with self.lock:
                self.dead.append(json.loads(m.payload))
            return
        site, device, kind = wire.parse_topic(m.topic)
        if kind == wire.TRANSACTION:
            tx = wire.decode(wire.TRANSACTION, m.payload)
            with self.lock:
                self.transactions.append(dict(tx, site=site))
                sends = sum(1 for t in self.transactions if t["transactionId"] == tx["transactionId"])
            if sends >= self.confirm_from_send:  # the market answers; the first copy may be "lost"
                self.confirm(site, tx)
            return
        cmd = wire.decode(wire.CMD, m.payload)
        assert wire.verify_command(self.keys[(site, device)], site, device, cmd), "signed with the device key"
        with self.lock:
            self.commands.append((site, device, cmd))
        ack = wire.ack(cmd["id"], cmd["seq"], self.clock.now(), True, wire.ACCEPTED, cmd["relay"])
        self.client.publish(wire.device_topic(site, device, wire.ACK), wire.encode(wire.ACK, ack), qos=1)

    def confirm(self, site: str, tx: dict[str, Any]) -> None:
        with self.lock:
            self.confirmed.add(tx["transactionId"])
        body = {"v": 1, "transactionId": tx["transactionId"], "tenderId": tx["tenderId"], "ok": True,
                "reason": wire.ACCEPTED, "side": "BUY", "intervalStart": 0, "durationS": 300,
                "quantity": tx["quantity"], "price": 0.2, "marketId": "RTM", "acceptedAt": self.clock.now()}
        self.client.publish(wire.site_topic(site, wire.CONFIRM), wire.encode(wire.CONFIRM, body), qos=1)

    def meters(self, sites: list[str], power_w: float = 1800.0) -> None:
        now = self.clock.now()
        for site in sites:
            msg = wire.telemetry_meter(int(now), now, power_w, 1000.0)
            topic = wire.device_topic(site, "meter", wire.TELEMETRY)
            self.client.publish(topic, wire.encode(wire.TELEMETRY, msg), qos=1)

    def next_interval(self) -> float:
        """The next 5-minute interval's start. Tenders are for what lies ahead: a fixed interval
        (T0) was already under way by the time a loaded machine had started two workers, and its
        tenders expired before a worker's first round had built its models (the "worker that never
        answers" of earlier CI runs: the clock ran on, the agent rightly did not trade)."""
        return (self.clock.now() // 300 + 1) * 300

    def tenders(self, sites: list[str], start: float) -> list[dict[str, Any]]:
        """Real-time tenders for the interval at `start`, open until it ends."""
        out = []
        for site in sites:
            for t in build_tenders(site, "feeder-a", [PriceInterval(int(start), 300, 45.0, "RTM")], "RTM",
                                   self.clock.now(), TenderConfig(), 3600):
                self.client.publish(wire.tender_topic(site), wire.encode(wire.TENDER, t), qos=1)
                out.append(t)
        return out

    def txs_for(self, tender_ids: set[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [t for t in self.transactions if t["tenderId"] in tender_ids]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_agent(tmp: Path, mosquitto: Mosquitto, clock: SimClock, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TENDRIL_CLOCK=clock.env_value())
    argv = command.argv("agent", "--registry", str(tmp / "registry"), "--broker", mosquitto.url,
            "--state-dir", str(tmp / "state"), "--stats-file", str(tmp / "stats-{worker}.json"), "--progress-s", "0.5",
            "--time-limit-s", "2", *extra)
    with log.open("ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)


def stats(tmp: Path, worker: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((tmp / f"stats-{worker}.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"agent did not stop on SIGTERM:\n{log.read_text()[-3000:]}") from None


@pytest.mark.parametrize("solver_processes", [0, 1], ids=["solver-thread", "solver-process"])
def test_agent_answers_tenders_commands_relays_and_dead_letters_bad_tenders(
        mosquitto: Mosquitto, tmp_path: Path, solver_processes: int) -> None:
    sites = ["site-1", "site-2"]
    keys = registry(tmp_path / "registry", sites)
    world = World(mosquitto.port, keys, confirm_from_send=2)  # the first copy of each transaction is "lost"
    log = tmp_path / "agent.log"
    proc = start_agent(tmp_path, mosquitto, world.clock, log, "--worker-id", "solo",
                       "--solver-processes", str(solver_processes))
    try:
        wait_for(lambda: stats(tmp_path, "solo").get("owned") == sites
                 and stats(tmp_path, "solo").get("readings_subscribed") is True, lambda: log.read_text()[-2000:])
        # readings come on the agent's second connection (cloud.agent.intake); a malformed one is
        # not used and does not stop the others
        world.client.publish(wire.device_topic("site-1", "meter", wire.TELEMETRY), b'{"v": 1, "power_w": "x"}')
        world.meters(sites)
        wait_for(lambda: stats(tmp_path, "solo").get("readings", 0) >= 2, lambda: json.dumps(stats(tmp_path, "solo")))
        assert stats(tmp_path, "solo")["readings_malformed"] >= 1
        start = world.next_interval()
        sent = world.tenders(sites, start)
        ids = {t["tenderId"] for t in sent}
        def resent() -> bool:
            txs = world.txs_for(ids)
            return len({t["site"] for t in txs}) == 2 and all(
                sum(u["transactionId"] == t["transactionId"] for u in txs) >= 2 for t in txs)

        wait_for(resent, lambda: f"transactions {world.transactions}\n{log.read_text()[-2000:]}")
        txs = world.txs_for(ids)
        by_id: dict[str, list[dict[str, Any]]] = {}
        for t in txs:
            by_id.setdefault(t["transactionId"], []).append(t)
        assert len(by_id) == 2, "one transaction per site on its BUY tender"
        for copies in by_id.values():
            assert len(copies) >= 2 and all(c == copies[0] for c in copies), "re-sent with the same id and terms"
            assert copies[0]["quantity"] > 0.1  # 1.8 kW for 5 minutes
        # every relay of both sites got a signed command for the interval, and acked it
        wait_for(lambda: {(s, d) for s, d, c in world.commands if c["expires"] > start + 300} == set(keys),
                 lambda: f"{world.commands}")
        seqs = [c["seq"] for s, d, c in world.commands if (s, d) == ("site-1", "pump")]
        assert seqs == sorted(seqs) and seqs[-1] >= int(T0 * 1000) - 300_000, "clock-derived, rising seq"
        wait_for(lambda: stats(tmp_path, "solo").get("commands_acked", 0) >= len(keys)
                 and stats(tmp_path, "solo").get("confirmed", 0) >= 2, lambda: json.dumps(stats(tmp_path, "solo")))
        # a malformed tender and a tender for another site: dead-lettered, the agent goes on
        world.client.publish(wire.tender_topic("site-1"), b'{"v": 1, "tenderId": 7}', qos=1)
        foreign = dict(sent[0], counterPartyId="site-9")
        world.client.publish(wire.tender_topic("site-2"), json.dumps(foreign).encode(), qos=1)
        wait_for(lambda: {d["reason"] for d in world.dead} >= {"bad_type", "wrong_site"},
                 lambda: f"dead letters {world.dead}")
        sent2 = world.tenders(sites, max(start + 300, world.next_interval()))
        ids2 = {t["tenderId"] for t in sent2}
        wait_for(lambda: len({t["site"] for t in world.txs_for(ids2)}) == 2, lambda: log.read_text()[-2000:])
    finally:
        world.close()
        stop(proc, log)
    assert proc.returncode == 0
    text = log.read_text()
    assert "presence cleared" in text and "tenders" in text and "dead letter" in text
    state = json.loads((tmp_path / "state" / "sites" / "site-1.json").read_text())
    assert state["seq"]["pump"] >= seqs[-1], "the last command seq is kept for the next owner"


def test_two_workers_share_the_sites_and_a_killed_one_is_taken_over(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sites = [f"site-{i}" for i in range(1, 7)]
    keys = registry(tmp_path / "registry", sites)
    world = World(mosquitto.port, keys, speed=10.0)  # an interval is 30 wall seconds: time for a first round
    log = tmp_path / "agent.log"
    procs = {w: start_agent(tmp_path, mosquitto, world.clock, log, "--worker-id", w) for w in ("wa", "wb")}
    try:
        def split() -> tuple[set[str], set[str]]:
            return set(stats(tmp_path, "wa").get("owned", [])), set(stats(tmp_path, "wb").get("owned", []))

        wait_for(lambda: split()[0] | split()[1] == set(sites) and not split()[0] & split()[1]
                 and stats(tmp_path, "wa").get("live") == ["wa", "wb"] == stats(tmp_path, "wb").get("live"),
                 lambda: f"{split()}\n{log.read_text()[-2000:]}")
        a, b = split()
        assert a and b, "both workers own sites"
        world.meters(sites)
        time.sleep(0.3)
        first = world.tenders(sites, world.next_interval())
        # a worker's first round builds its sites' models: on a loaded machine that takes a while
        wait_for(lambda: {t["site"] for t in world.txs_for({t["tenderId"] for t in first})} == set(sites),
                 lambda: f"{world.transactions}\n{log.read_text()[-2000:]}", timeout=120)
        # kill -9 the worker that owns site-1: the broker publishes its will, the other takes over
        victim = "wa" if "site-1" in a else "wb"
        survivor = "wb" if victim == "wa" else "wa"
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        wait_for(lambda: set(stats(tmp_path, survivor).get("owned", [])) == set(sites),
                 lambda: f"{stats(tmp_path, survivor)}\n{log.read_text()[-2000:]}")
        nxt = world.tenders(sites, world.next_interval())
        wait_for(lambda: {t["site"] for t in world.txs_for({t["tenderId"] for t in nxt})} == set(sites),
                 lambda: f"{world.transactions}\n{log.read_text()[-2000:]}", timeout=120)
    finally:
        world.close()
        for p in procs.values():
            stop(p, log)

"""`tendril market` as a process on real Mosquitto, PostgreSQL and VictoriaMetrics, on a
simulated clock at 60x: tenders go out, every transaction (good and bad) gets one confirm, only
the refusals of the bad ones are in the ledger, kill -9 and restart lose nothing and reuse no
tender id, a retried transaction gets the same confirm and is recorded once, intervals are
settled once from the meter data in VictoriaMetrics, and the ledger verifies."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud import command
from tendril_transactive.cloud.devices.registry import Registry, SiteRecord
from tendril_transactive.cloud.ledger.chain import Ledger
from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, Postgres, VictoriaMetrics

pytestmark = pytest.mark.integration

SPEED = 60.0  # 5 simulated minutes in 5 s
TIMEOUT_S = 30.0
SIM_START = dt.datetime(2024, 3, 12, 10, 54, tzinfo=LOCAL_TZ).timestamp()  # after the 10:00 day-ahead hour
METER_W = 2400.0  # 0.2 kWh per 5 minutes; subscription 1.2 kWh/h = 0.1 -> deviation +0.1


class Client:
    """A test agent: collects tenders and confirms, sends transactions."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.tenders: dict[str, list[dict[str, Any]]] = {}  # tenderId -> every copy received
        self.confirms: list[dict[str, Any]] = []
        connected = threading.Event()
        self.mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id="market-test-agent", protocol=paho.MQTTv311)
        self.mqtt.on_connect = lambda *_a: connected.set()
        self.mqtt.on_message = self._on_message
        self.mqtt.connect(LOOPBACK, port)
        self.mqtt.loop_start()
        assert connected.wait(10)
        for kind in (wire.TENDER, wire.CONFIRM):
            self.mqtt.subscribe(wire.site_filter(kind), qos=1)

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        _, _, kind = wire.parse_topic(msg.topic)
        with self.lock:
            if kind == wire.TENDER:
                assert msg.topic == wire.tender_topic(body["counterPartyId"])
                self.tenders.setdefault(body["tenderId"], []).append(body)
            elif kind == wire.CONFIRM:
                self.confirms.append(wire.validate(wire.CONFIRM, body))

    def send(self, site: str, payload: bytes | dict[str, Any]) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.mqtt.publish(wire.site_topic(site, wire.TRANSACTION), raw, qos=1).wait_for_publish(10)

    def find(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [copies[0] for copies in self.tenders.values() if pred(copies[0])]

    def confirms_for(self, txid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.confirms if c["transactionId"] == txid]

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def wait_for(cond: Callable[[], Any], what: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        got = cond()
        if got:
            return got
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"waiting for {what}; market log:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def tx(txid: str, tender_id: str, quantity: float) -> dict[str, Any]:
    return {"v": 1, "transactionId": txid, "tenderId": tender_id, "quantity": quantity, "partyId": "test-agent",
            "ts": 1710266000}


def write_meter(victoria: VictoriaMetrics) -> None:
    """site-1's meter: a reading every simulated minute at METER_W, around the whole run."""
    lines = []
    start = SIM_START - 600
    for i in range(90):
        t = start + 60 * i
        lines.append(f"meter,site=site-1,device=meter-1 energy_wh={10000 + METER_W * 60 * i / 3600:.4f},"
                     f"power_w={METER_W} {int(t * 1e9)}")
    req = urllib.request.Request(f"{victoria.url}/api/v2/write?precision=ns", data="\n".join(lines).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 204)
    victoria.flush()


def start_market(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(command.argv("market", *args), stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, **env})


def stop_market(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT_S) == 0, log.read_text()[-3000:]


def test_market_service_end_to_end_with_kill_and_restart(
        mosquitto: Mosquitto, postgres: Postgres, victoria: VictoriaMetrics, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    reg = Registry(registry)
    reg.set_site(SiteRecord("site-1", feeder="feeder-a", subscription_kwh_by_hour=tuple([1.2] * 24)))
    reg.set_site(SiteRecord("site-2", feeder="feeder-b"))
    write_meter(victoria)
    # the simulated clock reaches SIM_START two wall seconds from now, while the process starts
    env = {"TENDRIL_CLOCK": f"{time.time() + 2!r},{SIM_START!r},{SPEED!r}", "TENDRIL_LEDGER_URL": postgres.url}
    args = ["--registry", str(registry), "--broker", mosquitto.url, "--influx-url", victoria.url,
            "--feeder-ratio", "feeder-b=0.95", "--state-dir", str(tmp_path / "state"), "--health-s", "1"]
    log = tmp_path / "market.log"
    agent = Client(mosquitto.port)
    proc = start_market(args, env, log)
    try:
        # ---- tenders: today's remaining and tomorrow's day-ahead hours, and real-time intervals
        da = wait_for(lambda: agent.find(lambda t: t["marketId"] == "DAM" and t["counterPartyId"] == "site-1"
                                         and t["intervalStart"] >= SIM_START + 86400 - 3600), "DA tenders",
                      proc, log)
        da_buy = min((t for t in da if t["side"] == "BUY"), key=lambda t: t["intervalStart"])
        da_sell = next(t for t in agent.find(lambda t: t["marketId"] == "DAM" and t["side"] == "SELL"
                                             and t["counterPartyId"] == "site-1"))
        # site-2's come after site-1's on the wire: wait for them too (not there yet on a loaded machine)
        site2 = wait_for(lambda: agent.find(lambda t: t["counterPartyId"] == "site-2" and t["marketId"] == "DAM"),
                         "site-2's DA tenders", proc, log)[0]
        assert site2["price"] > next(t for t in agent.find(
            lambda t: t["counterPartyId"] == "site-1" and t["marketId"] == "DAM"
            and t["side"] == site2["side"] and t["intervalStart"] == site2["intervalStart"]))["price"]
        first_rt = wait_for(lambda: agent.find(lambda t: t["marketId"] == "RTM" and t["counterPartyId"] == "site-1"
                                               and t["side"] == "BUY"), "an RT tender", proc, log)[0]

        # ---- transactions, good and bad; every one gets exactly one confirm
        agent.send("site-1", tx("g1", da_buy["tenderId"], 1.0))
        agent.send("site-1", tx("g2", da_sell["tenderId"], 0.5))
        agent.send("site-1", tx("bad-party", site2["tenderId"], 1.0))  # another site's tender
        agent.send("site-1", tx("bad-over", da_buy["tenderId"], 25.0))  # 20 kWh on offer
        agent.send("site-1", b'{"v": 1, "transactionId": "bad-json", "tenderId": ')  # malformed
        agent.send("site-1", tx("g1", da_buy["tenderId"], 1.0))  # replayed: same confirm
        agent.send("site-1", tx("g1", da_buy["tenderId"], 2.0))  # same id, other terms
        # expired: the first RT tender, once its interval has begun (the next one is out by then)
        wait_for(lambda: agent.find(lambda t: t["marketId"] == "RTM"
                                    and t["intervalStart"] > first_rt["intervalStart"]), "a later RT tender",
                 proc, log)
        agent.send("site-1", tx("bad-late", first_rt["tenderId"], 0.1))
        want = {"g1": 3, "g2": 1, "bad-party": 1, "bad-over": 1, "": 1, "bad-late": 1}
        wait_for(lambda: all(len(agent.confirms_for(k)) >= n for k, n in want.items()), "all confirms", proc, log)
        g1 = agent.confirms_for("g1")
        assert g1[0]["ok"] and g1[0] == g1[1] and g1[0]["quantity"] == 1.0 and g1[0]["price"] == da_buy["price"]
        assert (g1[2]["ok"], g1[2]["reason"]) == (False, wire.TX_REFUSE_CONFLICT)
        reasons = {k: agent.confirms_for(k)[0]["reason"] for k in ("g2", "bad-party", "bad-over", "", "bad-late")}
        assert reasons == {"g2": wire.ACCEPTED, "bad-party": wire.TX_REFUSE_WRONG_PARTY,
                           "bad-over": wire.TX_REFUSE_OVER_QUANTITY, "": wire.TX_REFUSE_MALFORMED,
                           "bad-late": wire.TX_REFUSE_EXPIRED}

        # ---- kill -9, restart, retry g1 from the "agent"
        proc.kill()
        proc.wait(10)
        copies_before = {k: len(v) for k, v in agent.tenders.items()}
        proc = start_market(args, env, log)
        wait_for(lambda: sum(len(v) for v in agent.tenders.values()) > sum(copies_before.values()),
                 "tenders after the restart", proc, log)
        agent.send("site-1", tx("g1", da_buy["tenderId"], 1.0))
        wait_for(lambda: len(agent.confirms_for("g1")) >= 4, "the retried g1's confirm", proc, log)
        assert agent.confirms_for("g1")[3] == g1[0]

        # ---- settlement from VictoriaMetrics: the first RT interval, once
        with Ledger(postgres.url) as ledger:
            def settled() -> list[dict[str, Any]]:
                return [r.body for r in ledger.records(kind="settlement", site="site-1")]

            wait_for(lambda: len(settled()) >= 2, "two settled intervals", proc, log)
        stop_market(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        agent.close()

    text = log.read_text()
    assert "rebuilt from the ledger" in text and "republished" in text and "settled" in text
    with Ledger(postgres.url) as ledger:
        records = list(ledger.records())
        assert ledger.verify().ok
    txs = [r.body for r in records if r.kind == "transaction"]
    assert sorted(b["transaction_id"] for b in txs) == ["g1", "g2"]  # recorded once, despite 2 retries
    refusals = sorted((r.body["transactionId"], r.body["reason"]) for r in records if r.kind == "refusal")
    assert refusals == [("", wire.TX_REFUSE_MALFORMED), ("bad-late", wire.TX_REFUSE_EXPIRED),
                        ("bad-over", wire.TX_REFUSE_OVER_QUANTITY), ("bad-party", wire.TX_REFUSE_WRONG_PARTY),
                        ("g1", wire.TX_REFUSE_CONFLICT)]
    # no tender id for two different offers, in the ledger or on the wire; none recorded twice
    tender_ids = [r.body["tenderId"] for r in records if r.kind == "tender"]
    assert len(tender_ids) == len(set(tender_ids))
    for copies in agent.tenders.values():
        assert all(c == copies[0] for c in copies)
    assert set(agent.tenders) == set(tender_ids)
    # settlement: each interval once; metered 0.2 kWh against a 0.1 kWh position, bought at the RT BUY price
    settlements = [r.body for r in records if r.kind == "settlement"]
    keys = [(b["site"], b["intervalStart"]) for b in settlements]
    assert len(keys) == len(set(keys)) and {s for s, _ in keys} == {"site-1"}
    first = min(settlements, key=lambda b: b["intervalStart"])
    assert first["intervalStart"] == first_rt["intervalStart"]
    # position = subscription 0.1 + the day-ahead trades g1 (buy 1.0) / g2 (sell 0.5) if the first
    # real-time interval lies in their hour (it can, when the market starts late in an hour)
    def share(tender: dict[str, Any], kwh: float) -> float:
        inside = tender["intervalStart"] <= first["intervalStart"] < tender["intervalStart"] + tender["durationS"]
        return kwh * 300 / tender["durationS"] if inside else 0.0

    position = 0.1 + share(da_buy, 1.0) - share(da_sell, 0.5)
    assert first["meteredKwh"] == pytest.approx(0.2, abs=1e-6)
    assert first["positionKwh"] == pytest.approx(position, abs=1e-6)
    if position < 0.2:  # bought ex post at the interval's RT BUY tender
        assert first["priceUsdPerKwh"] == first_rt["price"]
    assert first["amountUsd"] == pytest.approx((0.2 - position) * first["priceUsdPerKwh"], abs=1e-6)
    stats = json.loads((tmp_path / "state" / "market-stats.json").read_text())
    assert stats["intervals_settled"] >= 1 and stats["connects"] == 1
    verify = subprocess.run(command.argv("ledger", "verify", "--url", postgres.url),
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stderr


def test_a_transaction_the_market_was_killed_while_recording_is_answered_after_the_restart(
        mosquitto: Mosquitto, postgres: Postgres, victoria: VictoriaMetrics, tmp_path: Path) -> None:
    """The market PUBACKs a transaction only after its decision is in the ledger. Held in the
    ledger write (the test locks the table) and killed -9 there, the market never acknowledged it,
    so the broker hands it to the restarted market, which answers it. Acknowledged on receipt (the
    client library's default), it would be lost: the broker counts it delivered."""
    from sqlalchemy import create_engine, text

    registry = tmp_path / "registry"
    Registry(registry).set_site(SiteRecord("site-1", feeder="feeder-a"))
    # 1x: after the start-up tenders nothing is due for minutes, so the only ledger write the
    # lock can catch is the transaction's
    env = {"TENDRIL_CLOCK": f"{time.time()!r},{SIM_START!r},1.0", "TENDRIL_LEDGER_URL": postgres.url}
    args = ["--registry", str(registry), "--broker", mosquitto.url, "--influx-url", victoria.url,
            "--state-dir", str(tmp_path / "state"), "--health-s", "1"]
    log = tmp_path / "market.log"
    agent = Client(mosquitto.port)
    engine = create_engine(postgres.url)
    proc = start_market(args, env, log)
    try:
        da = wait_for(lambda: agent.find(lambda t: t["marketId"] == "DAM" and t["side"] == "BUY"
                                         and t["intervalStart"] >= SIM_START + 86400 - 3600), "DA tenders", proc, log)
        wait_for(lambda: agent.find(lambda t: t["marketId"] == "RTM"), "an RT tender", proc, log)
        with engine.connect() as holder:
            holder.execute(text("LOCK TABLE ledger_records, ledger_anchor IN ACCESS EXCLUSIVE MODE"))
            agent.send("site-1", tx("held", da[0]["tenderId"], 1.0))

            def blocked() -> bool:
                with engine.connect() as probe:
                    rows = probe.execute(text("SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))
                    return any("ledger_" in str(q) for (q,) in rows)

            wait_for(blocked, "the market's write waiting on the lock", proc, log)
            proc.kill()
            proc.wait(10)
            holder.rollback()
        assert agent.confirms_for("held") == []
        proc = start_market(args, env, log)
        wait_for(lambda: agent.confirms_for("held"), "the held transaction's confirm after the restart", proc, log)
        assert agent.confirms_for("held")[0]["ok"]
        stop_market(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        agent.close()
        engine.dispose()
    with Ledger(postgres.url) as ledger:
        assert [r.body["transaction_id"] for r in ledger.records(kind="transaction")] == ["held"]
        assert ledger.verify().ok

"""The generated broker config against a real Mosquitto 2, started as the packaged broker is.

Each test is a finding of issue 13 (or a role of issue 12) that failed with the old
password_file/acl_file config: roles per site for the agent and the market, no `$share` for a
device, client ids bound to users, persistence over a restart, a packet size limit, and files
the broker's own user can read (docs/security.md says what each proves).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.cli.device import service_users
from tendril_transactive.cloud.cli.main import main as tendril
from tendril_transactive.cloud.devices.mosquitto import ServiceUser, ingest_users
from tendril_transactive.cloud.devices.registry import Registry, SiteRecord
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto, find_binary, free_port, start_mosquitto_generated

pytestmark = pytest.mark.integration

WAIT_S = 2.0  # how long to wait for something that must NOT happen; what must happen gets 15 s


@dataclass
class Broker:
    server: Mosquitto
    port: int
    reg: Registry
    conf_dir: Path

    def user(self, name: str) -> ServiceUser:
        users = [w for u in service_users(self.reg.root) for w in ingest_users(u, 2)]
        return next(u for u in users if u.username == name)


@pytest.fixture()
def broker() -> Iterator[Broker]:
    find_binary("mosquitto", "mosquitto")
    # Outside pytest's 0700 tmp folder: the broker drops to user mosquitto and must reach its files.
    base = Path(tempfile.mkdtemp(prefix="tendril-sec-"))
    base.chmod(0o711)
    root = base / "registry"
    for site, device, type_ in (("site-1", "meter", "meter"), ("site-1", "pump", "relay"), ("site-2", "pump", "relay")):
        assert tendril(["device", "--registry", str(root), "add", "--site", site, "--device", device,
                        "--type", type_]) == 0  # fmt: skip
    reg = Registry(root)
    reg.set_site(SiteRecord("site-1", agent="agent-a"))
    reg.set_site(SiteRecord("site-2", agent="agent-b"))
    port = free_port()
    assert tendril(["device", "--registry", str(root), "mosquitto-config", "--out", str(base / "conf"),
                    "--port", str(port), "--persistence-dir", str(base / "data"),
                    "--plain-listener", "--tls-port", "0"]) == 0  # fmt: skip  # TLS: test_tls_broker.py
    server = start_mosquitto_generated(base / "conf" / "mosquitto.conf", port, base)
    yield Broker(server, port, Registry(root), base / "conf")
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


class Client:
    def __init__(self, port: int, username: str, password: str, client_id: str, clean: bool = True) -> None:
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.messages: queue.Queue[str] = queue.Queue()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.c.username_pw_set(username, password)
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connect", str(rc)))
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: self.events.put(("disconnect", str(rc)))
        self.c.on_subscribe = lambda _c, _u, _m, rcs, _p: self.events.put(("suback", [str(r) for r in rcs]))
        self.c.on_message = lambda _c, _u, m: self.messages.put(m.topic)
        self.c.reconnect_delay_set(60, 60)  # a kicked client must not come straight back
        self.c.connect(LOOPBACK, port, clean_start=clean,
                       properties=_expiry() if not clean else None)
        self.c.loop_start()
        kind, self.connack = self.events.get(timeout=15)
        assert kind == "connect"

    def subscribe(self, topic: str) -> list[str]:
        self.c.subscribe(topic, qos=1)
        while True:
            kind, value = self.events.get(timeout=15)
            if kind == "suback":
                assert isinstance(value, list)
                return value

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(15)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _expiry() -> object:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    return props


def device(b: Broker, site: str, dev: str, client_id: str | None = None) -> Client:
    return Client(b.port, f"{site}.{dev}", b.reg.secrets_for(site, dev).mqtt_password,
                  client_id or f"tendril-{site}-{dev}")


def service(b: Broker, name: str, client_id: str | None = None, clean: bool = True) -> Client:
    user = b.user(name)
    return Client(b.port, user.username, user.password, client_id or name, clean)


def none_arrive(q: queue.Queue[str]) -> bool:
    try:
        q.get(timeout=WAIT_S)
    except queue.Empty:
        return True
    return False


GRANTED = ["Granted QoS 1"]


def test_agents_act_only_for_their_own_sites(broker: Broker) -> None:
    market = service(broker, "tendril-market")
    assert market.subscribe(wire.site_filter(wire.TRANSACTION)) == GRANTED
    pump2 = device(broker, "site-2", "pump")
    assert pump2.subscribe(wire.device_topic("site-2", "pump", wire.CMD)) == GRANTED
    agent_a = service(broker, "agent-a")
    # site-2 is agent-b's: agent-a's transaction and command for it never arrive ...
    agent_a.publish(wire.site_topic("site-2", wire.TRANSACTION))
    agent_a.publish(wire.device_topic("site-2", "pump", wire.CMD))
    assert none_arrive(market.messages) and none_arrive(pump2.messages)
    # ... nor may it listen to site-2's tenders or telemetry.
    assert agent_a.subscribe(wire.tender_topic("site-2")) != GRANTED
    assert agent_a.subscribe(wire.device_filter(wire.TELEMETRY)) != GRANTED
    # For its own site it may: the market hears the transaction.
    agent_a.publish(wire.site_topic("site-1", wire.TRANSACTION))
    assert market.messages.get(timeout=15) == wire.site_topic("site-1", wire.TRANSACTION)
    assert agent_a.subscribe(wire.device_filter(wire.TELEMETRY, "site-1")) == GRANTED
    assert agent_a.subscribe(wire.agent_filter()) == GRANTED
    agent_b = service(broker, "agent-b")
    agent_b.publish(wire.device_topic("site-2", "pump", wire.CMD))
    assert pump2.messages.get(timeout=15) == wire.device_topic("site-2", "pump", wire.CMD)
    for c in (market, pump2, agent_a, agent_b):
        c.close()


def test_a_device_cannot_tender_transact_or_confirm_and_the_market_cannot_command(broker: Broker) -> None:
    agent = service(broker, "agent-a")
    for kind in (wire.TENDER, wire.CONFIRM):
        assert agent.subscribe(wire.site_topic("site-1", kind)) == GRANTED
    market = service(broker, "tendril-market")
    assert market.subscribe(wire.site_filter(wire.TRANSACTION)) == GRANTED
    pump = device(broker, "site-1", "pump")
    assert pump.subscribe(wire.device_topic("site-1", "pump", wire.CMD)) == GRANTED
    meter = device(broker, "site-1", "meter")
    for kind in (wire.TENDER, wire.TRANSACTION, wire.CONFIRM):
        meter.publish(wire.site_topic("site-1", kind))
    market.publish(wire.device_topic("site-1", "pump", wire.CMD))
    assert none_arrive(agent.messages) and none_arrive(market.messages) and none_arrive(pump.messages)
    # The market's own tender reaches the agent (the rights are not simply "nothing").
    market.publish(wire.tender_topic("site-1"))
    assert agent.messages.get(timeout=15) == wire.tender_topic("site-1")
    for c in (agent, market, pump, meter):
        c.close()


def test_a_device_cannot_join_the_ingest_share_group_or_read_beyond_its_topics(broker: Broker) -> None:
    ingest = service(broker, "tendril-ingest-0")
    assert ingest.subscribe("$share/tendril-ingest/" + wire.device_filter(wire.TELEMETRY)) == GRANTED
    meter = device(broker, "site-1", "meter")
    for topic in ("$share/tendril-ingest/" + wire.device_filter(wire.TELEMETRY), wire.device_filter(wire.TELEMETRY),
                  "#", "$share/x/#", wire.device_topic("site-2", "pump", wire.CMD), wire.tender_topic("site-2")):
        assert meter.subscribe(topic) == ["Not authorized"], topic
    assert meter.subscribe(wire.tender_topic("site-1")) == GRANTED
    # So every message still goes to ingestion: none is handed to (and dropped at) the device.
    payload = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, 1.7e9, 1.0, 1.0))
    for _ in range(20):
        meter.publish(wire.device_topic("site-1", "meter", wire.TELEMETRY), payload)
    assert [ingest.messages.get(timeout=15) for _ in range(20)]
    for c in (ingest, meter):
        c.close()


def test_no_client_can_take_over_another_clients_session(broker: Broker) -> None:
    ingest = service(broker, "tendril-ingest-0")
    victim = device(broker, "site-1", "pump")
    for stolen in ("tendril-ingest-0", "tendril-site-1-pump"):
        thief = device(broker, "site-1", "meter", client_id=stolen)
        assert thief.connack == "Not authorized", stolen
        thief.c.loop_stop()
    # Another ingest worker's user, or the market, cannot use worker 0's id either.
    for name in ("tendril-ingest-1", "tendril-market"):
        thief = service(broker, name, client_id="tendril-ingest-0")
        assert thief.connack == "Not authorized", name
        thief.c.loop_stop()
    assert ingest.events.empty() and victim.events.empty(), "a legitimate session was disconnected"
    for c in (ingest, victim):
        c.close()


def test_acknowledged_messages_survive_a_broker_restart(broker: Broker) -> None:
    ingest = service(broker, "tendril-ingest-0", clean=False)
    assert ingest.subscribe(wire.device_filter(wire.TELEMETRY)) == GRANTED
    ingest.close()  # away, session kept: the broker queues for it
    meter = device(broker, "site-1", "meter")
    payload = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, 1.7e9, 1.0, 1.0))
    for _ in range(50):
        meter.publish(wire.device_topic("site-1", "meter", wire.TELEMETRY), payload)  # each PUBACKed
    meter.close()
    broker.server.stop()
    broker.server.start()
    back = service(broker, "tendril-ingest-0", clean=False)
    got = [back.messages.get(timeout=15) for _ in range(50)]
    assert len(got) == 50
    back.close()


def test_a_packet_over_the_size_limit_is_refused_and_the_broker_runs_as_mosquitto(broker: Broker) -> None:
    ingest = service(broker, "tendril-ingest-0")
    assert ingest.subscribe(wire.device_filter(wire.TELEMETRY)) == GRANTED
    meter = device(broker, "site-1", "meter")
    meter.c.publish(wire.device_topic("site-1", "meter", wire.TELEMETRY), b"x" * 5_000_000, qos=1)
    kind, _ = meter.events.get(timeout=15)
    assert kind == "disconnect"
    assert none_arrive(ingest.messages)
    meter.c.loop_stop()
    # The broker dropped to the packaged user and still read its 0640 root:mosquitto files.
    assert broker.server.proc is not None
    status = Path(f"/proc/{broker.server.proc.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    import pwd

    assert int(uid) == pwd.getpwnam("mosquitto").pw_uid
    for name in ("passwd", "acl", "dynamic-security.json"):
        st = (broker.conf_dir / name).stat()
        assert st.st_mode & 0o777 == 0o640
    ingest.close()

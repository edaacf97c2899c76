"""Per-device credentials and ACLs, enforced by a real Mosquitto.

The registry generates password and ACL files; a Mosquitto started with them must let a
device write only its own topics and read only its own commands, refuse anonymous
clients and wrong passwords, and let the cloud's users do exactly their jobs.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.agent.service import session_client_id
from tendril_transactive.cloud.cli.device import service_users
from tendril_transactive.cloud.cli.main import main as tendril
from tendril_transactive.cloud.devices import ha_discovery
from tendril_transactive.cloud.devices.registry import Registry, SiteRecord
from tendril_transactive.hil.servers import LOOPBACK, Server, free_port

pytestmark = pytest.mark.integration

WAIT_S = 2.0  # how long to wait for a message that must NOT arrive; arrival is awaited up to 15 s


@pytest.fixture()
def secured_broker(tmp_path: Path, mosquitto_binary: str) -> Iterator[tuple[int, Registry]]:
    yield from _secured(tmp_path, mosquitto_binary)


@pytest.fixture()
def two_agents_broker(tmp_path: Path, mosquitto_binary: str) -> Iterator[tuple[int, Registry]]:
    """site-2 is served by a third party's agent, `acme`: a login of its own on the same broker."""
    yield from _secured(tmp_path, mosquitto_binary, {"site-2": "acme"})


def _secured(tmp_path: Path, mosquitto_binary: str,
             agents: dict[str, str] | None = None) -> Iterator[tuple[int, Registry]]:
    root = tmp_path / "registry"
    for site, device, type_ in (("site-1", "meter", "meter"), ("site-1", "pump", "relay"), ("site-2", "pump", "relay")):
        assert tendril(["device", "--registry", str(root), "add", "--site", site, "--device", device,
                        "--type", type_]) == 0
    reg = Registry(root)
    for site, agent in (agents or {}).items():
        reg.set_site(SiteRecord(site, agent=agent))
    port = free_port()
    conf_dir = tmp_path / "conf"
    assert tendril(["device", "--registry", str(root), "mosquitto-config", "--out", str(conf_dir),
                    "--port", str(port), "--persistence-dir", str(tmp_path / "data"),
                    "--plain-listener", "--tls-port", "0",  # TLS: test_tls_broker.py
                    # pytest's 0700 temp folders are root's; the packaged user is tested in test_security_broker
                    "--broker-user", "root"]) == 0
    workdir = Path(tempfile.mkdtemp(prefix="tendril-mosq-acl-"))
    server = Server("mosquitto", port, workdir,
                    [mosquitto_binary, "-c", str(conf_dir / "mosquitto.conf")], port)
    server.start()
    yield port, Registry(root)
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _client(port: int, username: str | None, password: str | None, name: str) -> tuple[paho.Client, int]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
    if username is not None:
        client.username_pw_set(username, password)
    result: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p: result.put(rc.value)
    client.connect(LOOPBACK, port)
    client.loop_start()
    return client, result.get(timeout=15)


def _bound_id(user: str) -> str:
    """The client id the broker binds a user to: a device's is the firmware's, a service's its name."""
    return "tendril-" + user.replace(".", "-") if "." in user else user


def _device(port: int, reg: Registry, site: str, device: str) -> paho.Client:
    user = f"{site}.{device}"
    client, rc = _client(port, user, reg.secrets_for(site, device).mqtt_password, _bound_id(user))
    assert rc == 0, f"{site}.{device} refused: rc={rc}"
    return client


def _listener(port: int, user: str, password: str, topic: str, name: str = "") -> tuple[paho.Client, queue.Queue[str]]:
    got: queue.Queue[str] = queue.Queue()
    client, rc = _client(port, user, password, name or _bound_id(user))
    assert rc == 0
    client.on_message = lambda _c, _u, m: got.put(m.topic)
    subscribed: queue.Queue[object] = queue.Queue()
    client.on_subscribe = lambda *_a: subscribed.put(True)
    client.subscribe(topic, qos=1)
    subscribed.get(timeout=15)
    return client, got


def test_anonymous_and_wrong_passwords_are_refused(secured_broker: tuple[int, Registry]) -> None:
    port, reg = secured_broker
    anon, rc = _client(port, None, None, "anon")
    assert rc != 0
    anon.loop_stop()
    wrong, rc = _client(port, "site-1.meter", reg.secrets_for("site-1", "pump").mqtt_password, "wrong")
    assert rc != 0
    wrong.loop_stop()


def test_a_device_writes_only_its_own_topics(secured_broker: tuple[int, Registry]) -> None:
    port, reg = secured_broker
    ingest = next(u for u in service_users(reg.root) if u.role == "ingest")
    listener, got = _listener(port, ingest.username, ingest.password, wire.device_filter(wire.TELEMETRY))
    meter = _device(port, reg, "site-1", "meter")
    payload = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, 1710000000, 100.0, 1.0))
    # Forged: site-1's meter pretends to be site-2's pump. The broker drops it silently.
    meter.publish(wire.device_topic("site-2", "pump", wire.TELEMETRY), payload, qos=1).wait_for_publish(15)
    meter.publish(wire.device_topic("site-1", "meter", wire.TELEMETRY), payload, qos=1).wait_for_publish(15)
    assert got.get(timeout=15) == wire.device_topic("site-1", "meter", wire.TELEMETRY)
    with pytest.raises(queue.Empty):
        got.get(timeout=WAIT_S)
    for c in (meter, listener):
        c.loop_stop()


def test_commands_reach_only_their_device(secured_broker: tuple[int, Registry]) -> None:
    port, reg = secured_broker
    dispatch = next(u for u in service_users(reg.root) if u.role == "dispatch")
    # site-2's pump tries to eavesdrop on site-1's pump commands: the broker delivers nothing.
    spy, spied = _listener(port, "site-2.pump", reg.secrets_for("site-2", "pump").mqtt_password,
                           wire.device_topic("site-1", "pump", wire.CMD))
    pump, got = _listener(port, "site-1.pump", reg.secrets_for("site-1", "pump").mqtt_password,
                          wire.device_topic("site-1", "pump", wire.CMD))
    cloud, rc = _client(port, dispatch.username, dispatch.password, "dispatch")
    assert rc == 0
    cmd = wire.make_command(reg.secrets_for("site-1", "pump").key, "site-1", "pump", "c1", 1, 1.7e9, 1.7e9 + 60, 1)
    cloud.publish(wire.device_topic("site-1", "pump", wire.CMD), wire.encode(wire.CMD, cmd), qos=1).wait_for_publish(15)
    assert got.get(timeout=15) == wire.device_topic("site-1", "pump", wire.CMD)
    with pytest.raises(queue.Empty):
        spied.get(timeout=WAIT_S)
    # A device may not issue commands either.
    pump.publish(wire.device_topic("site-1", "pump", wire.CMD), b"{}", qos=1).wait_for_publish(15)
    with pytest.raises(queue.Empty):
        got.get(timeout=WAIT_S)
    for c in (spy, pump, cloud):
        c.loop_stop()


def test_generated_files_hold_no_plaintext_password(secured_broker: tuple[int, Registry], tmp_path: Path) -> None:
    _, reg = secured_broker
    passwd = (tmp_path / "conf" / "passwd").read_text()
    for d in reg.devices:
        assert reg.secrets_for(d.site, d.device).mqtt_password not in passwd
    assert (tmp_path / "conf" / "passwd").stat().st_mode & 0o007 == 0  # the broker's group reads it (0640)
    out = subprocess.run(["ls", "-l", str(reg.root / "secrets")], capture_output=True, text=True, check=True).stdout
    assert "-rw-------" in out


def test_home_assistant_discovers_the_devices_reads_them_and_commands_nothing(
    secured_broker: tuple[int, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, reg = secured_broker
    ha_user = next(u for u in service_users(reg.root) if u.role == "homeassistant")
    monkeypatch.setenv("TENDRIL_MQTT_PASSWORD", ha_user.password)
    assert tendril(["device", "--registry", str(reg.root), "ha-discovery", "--broker", f"mqtt://{LOOPBACK}:{port}",
                    "--username", ha_user.username]) == 0  # fmt: skip
    expected = {topic for topic, _ in ha_discovery.discovery_messages(reg.devices)}
    # Home Assistant subscribes to its tree and gets every config, retained.
    ha, configs = _listener(port, ha_user.username, ha_user.password, wire.ha_filter())
    assert {configs.get(timeout=15) for _ in expected} == expected
    # ... and reads the readings its configs point at.
    ha_readings, readings = _listener(port, ha_user.username, ha_user.password, wire.device_filter(wire.TELEMETRY),
                                      "ha-readings")
    meter = _device(port, reg, "site-1", "meter")
    payload = wire.encode(wire.TELEMETRY, wire.telemetry_meter(1, 1710000000, 100.0, 1.0))
    meter.publish(wire.device_topic("site-1", "meter", wire.TELEMETRY), payload, qos=1).wait_for_publish(15)
    assert readings.get(timeout=15) == wire.device_topic("site-1", "meter", wire.TELEMETRY)
    # A device cannot plant a discovery config, and HA's user cannot command a relay.
    meter.publish(wire.ha_config_topic("switch", "site-1", "pump", "relay"), b"{}", qos=1).wait_for_publish(15)
    pump, commands = _listener(port, "site-1.pump", reg.secrets_for("site-1", "pump").mqtt_password,
                               wire.device_topic("site-1", "pump", wire.CMD))
    ha.publish(wire.device_topic("site-1", "pump", wire.CMD), b"{}", qos=1).wait_for_publish(15)
    with pytest.raises(queue.Empty):
        commands.get(timeout=WAIT_S)
    with pytest.raises(queue.Empty):
        readings.get(timeout=0.1)
    assert configs.empty(), "a device's forged discovery config reached Home Assistant"
    # --remove clears them: a fresh subscriber finds no retained config.
    assert tendril(["device", "--registry", str(reg.root), "ha-discovery", "--broker", f"mqtt://{LOOPBACK}:{port}",
                    "--username", ha_user.username, "--remove"]) == 0  # fmt: skip
    late, none = _listener(port, ha_user.username, ha_user.password, wire.ha_filter(), "ha-late")
    with pytest.raises(queue.Empty):
        none.get(timeout=WAIT_S)
    for c in (ha, ha_readings, meter, pump, late):
        c.loop_stop()


def test_another_login_cannot_take_an_agent_workers_session(two_agents_broker: tuple[int, Registry]) -> None:
    """Issue 13: a client that connects with another's client id takes over its session, and the
    broker cannot bind an agent user to one id. A third-party agent that knows the naming pattern
    still cannot knock our worker off: the id's tag needs our agent user's password."""
    port, reg = two_agents_broker
    users = {u.username: u for u in service_users(reg.root)}
    ours, acme = users["tendril-agent"], users["acme"]
    real_id = session_client_id(ours.username, ours.password, "w0")
    worker = paho.Client(CallbackAPIVersion.VERSION2, client_id=real_id, clean_session=False)
    worker.username_pw_set(ours.username, ours.password)
    events: queue.Queue[str] = queue.Queue()
    worker.on_connect = lambda *_a: events.put("connect")
    worker.on_disconnect = lambda *_a: events.put("disconnect")
    worker.connect(LOOPBACK, port)
    worker.loop_start()
    try:
        assert events.get(timeout=15) == "connect"
        guesses = ["tendril-agent-w0", "tendril-agent-w1", session_client_id(ours.username, acme.password, "w0")]
        for guess in guesses:
            attacker, rc = _client(port, acme.username, acme.password, guess)
            assert rc == 0, "acme is a valid login; only the id it picks is wrong"
            attacker.disconnect()
            attacker.loop_stop()
        with pytest.raises(queue.Empty):
            events.get(timeout=WAIT_S)  # our worker was not disconnected by any guess
        # The control: with the real id (were it leaked) the same login does take the session,
        # so what protects the worker is the id's secret tag, not the broker.
        thief, rc = _client(port, acme.username, acme.password, real_id)
        assert rc == 0
        assert events.get(timeout=15) == "disconnect"
        thief.disconnect()
        thief.loop_stop()
    finally:
        worker.loop_stop()
        worker.disconnect()

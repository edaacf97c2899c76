"""The broker config `tendril device mosquitto-config` generates, with its TLS listener, against
real Mosquitto: the cloud's clients (ingest's own session, aiomqtt as market and agent use it)
connect over mqtts:// with verification; a client with the wrong CA is refused; and a passive
listener on the path (a TCP proxy recording every byte) reads neither a device's password nor a
signed command over TLS, while it reads both over the cleartext listener (issue 13 finding 3)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
import tendril_wire as tw
from paho.mqtt.enums import CallbackAPIVersion

from tendril_transactive.cloud.cli.main import main as tendril
from tendril_transactive.cloud.devices import tls_certs
from tendril_transactive.cloud.devices.registry import Registry
from tendril_transactive.cloud.mqtt.codec import RawPublish
from tendril_transactive.cloud.mqtt.session import MqttError, SessionOptions, open_session
from tendril_transactive.cloud.settings import BrokerSettings, UsageError, broker_tls, parse_broker
from tendril_transactive.hil.servers import (
    LOOPBACK,
    Mosquitto,
    ServerUnavailable,
    find_binary,
    free_port,
    wait_for_port,
)

pytestmark = pytest.mark.integration

WAIT_S = 20.0


@dataclass
class Broker:
    server: Mosquitto
    plain_port: int
    tls_port: int
    conf: Path
    registry: Registry
    root: Path

    @property
    def ca(self) -> Path:
        return self.conf / "ca.crt"

    def service_password(self, role: str) -> str:
        return str(json.loads((self.root / "secrets" / "_services.json").read_text())[role])


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    try:
        binary = find_binary("mosquitto", "mosquitto")
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    base = Path(tempfile.mkdtemp(prefix="tendril-tls-"))
    root = base / "registry"
    for device, type_ in (("meter", "meter"), ("pump", "relay")):
        assert tendril(["device", "--registry", str(root), "add", "--site", "site-1", "--device", device,
                        "--type", type_]) == 0
    plain, tls = free_port(), free_port()
    assert tendril(["device", "--registry", str(root), "mosquitto-config", "--out", str(base / "conf"),
                    "--port", str(plain), "--plain-listener", "--tls-port", str(tls),
                    "--tls-hostname", "localhost", "--tls-hostname", LOOPBACK,
                    "--persistence-dir", str(base / "data"), "--broker-user", "root"]) == 0
    server = Mosquitto("mosquitto", plain, base, [binary, "-c", str(base / "conf" / "mosquitto.conf")], plain)
    server.start()
    assert server.proc is not None
    wait_for_port(tls, server.proc)
    yield Broker(server, plain, tls, base / "conf", Registry(root), root)
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_generated_config_listens_on_tls_with_files_only_the_broker_reads(broker: Broker) -> None:
    conf = (broker.conf / "mosquitto.conf").read_text()
    assert f"listener {broker.tls_port} 127.0.0.1\ncafile " in conf
    assert f"listener {broker.plain_port} 127.0.0.1\n" in conf
    for name in ("ca.crt", "server.crt", "server.key"):
        assert (broker.conf / name).stat().st_mode & 0o777 == 0o640, name
    key = broker.root / "ca-private" / "mqtt-ca.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    assert not (broker.root / "secrets" / "mqtt-ca.key").exists(), "the agent mounts secrets/: no CA key in it"
    # The CA is the registry's (kept across runs: the devices carry it), and it signed the server's.
    assert (broker.root / "mqtt-ca.crt").read_bytes() == broker.ca.read_bytes()
    tls_certs.check_server(broker.ca.read_bytes(), (broker.conf / "server.crt").read_bytes(),
                           (broker.conf / "server.key").read_bytes())


def test_mqtts_urls_parse_and_refuse_what_cannot_work(broker: Broker, tmp_path: Path) -> None:
    assert parse_broker("mqtts://h").port == 8883 and parse_broker("mqtts://h").tls
    assert parse_broker("mqtt://h").port == 1883 and not parse_broker("mqtt://h").tls
    assert broker_tls(parse_broker("mqtt://h"), ca_file=str(broker.ca)) is None
    with pytest.raises(UsageError, match="ca-file"):
        broker_tls(parse_broker("mqtts://h"), ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(UsageError, match="both"):
        broker_tls(parse_broker("mqtts://h"), ca_file=str(broker.ca), cert_file=str(broker.ca))


def test_ingest_session_and_aiomqtt_clients_connect_over_tls_and_verify(broker: Broker, tmp_path: Path) -> None:
    url = f"mqtts://{LOOPBACK}:{broker.tls_port}"
    ingest = BrokerSettings.from_args(url, "tendril-ingest", broker.service_password("ingest"), ca_file=str(broker.ca))
    market = BrokerSettings.from_args(url, "tendril-market", broker.service_password("market"),
                                      ca_file=str(broker.ca))
    meter = broker.registry.secrets_for("site-1", "meter")
    topic = tw.device_topic("site-1", "meter", tw.TELEMETRY)
    stranger = tls_certs.make_ca(datetime.datetime.now(datetime.UTC), "Another CA")
    wrong_ca = tmp_path / "wrong.crt"
    wrong_ca.write_bytes(stranger.cert)

    async def run() -> list[bytes]:
        got: list[bytes] = []
        arrived = asyncio.Event()

        def on_publishes(batch: list[RawPublish]) -> None:
            got.extend(payload for _topic, payload, _pid, _qos in batch)
            arrived.set()

        options = SessionOptions("tendril-ingest", username=ingest.username, password=ingest.password,
                                 clean_start=True, tls=ingest.tls)
        session = await open_session(ingest.host, ingest.port, options, on_publishes)
        await session.subscribe([tw.device_filter(tw.TELEMETRY)])
        # The device side through aiomqtt (what market and agent use), with the same settings type.
        device = BrokerSettings(LOOPBACK, broker.tls_port, "site-1.meter", meter.mqtt_password,
                                broker_tls(parse_broker(url), ca_file=str(broker.ca)))
        async with aiomqtt.Client(device.host, device.port, username=device.username, password=device.password,
                                  identifier="tendril-site-1-meter", tls_context=device.tls) as client:
            await client.publish(topic, b'{"tls": 1}', qos=1)
        await asyncio.wait_for(arrived.wait(), WAIT_S)
        session.close()
        # market's settings reach the broker too (its user cannot read telemetry; connecting is the point)
        async with aiomqtt.Client(market.host, market.port, username=market.username, password=market.password,
                                  identifier="tendril-market", tls_context=market.tls):
            pass
        # A client that trusts another CA never gets to CONNECT.
        bad = SessionOptions("tendril-ingest", username=ingest.username, password=ingest.password,
                             tls=broker_tls(parse_broker(url), ca_file=str(wrong_ca)), protocol=4)
        with pytest.raises(MqttError, match="TLS verification"):
            await open_session(LOOPBACK, broker.tls_port, bad, on_publishes)
        # Nor one that dials an address the certificate does not carry (the same broker, via 127.0.0.2).
        detour = Tap(broker.tls_port, bind="127.0.0.2")
        try:
            with pytest.raises(MqttError, match="TLS verification"):
                await open_session("127.0.0.2", detour.port, SessionOptions(
                    "x", tls=ingest.tls, protocol=4, connect_timeout_s=5), on_publishes)
        finally:
            detour.close()
        return got

    got = asyncio.run(run())
    assert b'{"tls": 1}' in got


# ------------------------------------------------------------------ the passive listener


class Tap:
    """A TCP proxy between the clients and the broker that keeps every byte both ways: what a
    passive listener on the path would read."""

    def __init__(self, upstream_port: int, bind: str = LOOPBACK) -> None:
        self.upstream = upstream_port
        self.captured = bytearray()
        self._lock = threading.Lock()
        self.listener = socket.create_server((bind, 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((LOOPBACK, self.upstream))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _client(port: int, user: str, password: str, client_id: str, tls: ssl.SSLContext | None) -> paho.Client:
    connected: queue.Queue[str] = queue.Queue()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set(user, password)
    if tls is not None:
        c.tls_set_context(tls)
    c.on_connect = lambda _c, _u, _f, rc, _p: connected.put(str(rc))
    c.connect(LOOPBACK, port)
    c.loop_start()
    assert connected.get(timeout=WAIT_S) == "Success"
    return c


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_a_passive_listener_reads_password_and_command_only_in_cleartext(broker: Broker, listener: str) -> None:
    tls = listener == "tls"
    tap = Tap(broker.tls_port if tls else broker.plain_port)
    ctx = broker_tls(parse_broker(f"mqtts://{LOOPBACK}"), ca_file=str(broker.ca)) if tls else None
    pump = broker.registry.secrets_for("site-1", "pump")
    meter = broker.registry.secrets_for("site-1", "meter")
    received: queue.Queue[bytes] = queue.Queue()
    cmd_topic = tw.device_topic("site-1", "pump", tw.CMD)
    relay = _client(tap.port, "site-1.pump", pump.mqtt_password, "tendril-site-1-pump", ctx)
    relay.on_message = lambda _c, _u, m: received.put(bytes(m.payload))
    subscribed: queue.Queue[bool] = queue.Queue()
    relay.on_subscribe = lambda *_a: subscribed.put(True)
    relay.subscribe(cmd_topic, 1)
    subscribed.get(timeout=WAIT_S)
    device = _client(tap.port, "site-1.meter", meter.mqtt_password, "tendril-site-1-meter", ctx)
    dispatch = _client(tap.port, "tendril-dispatch", broker.service_password("dispatch"), f"dispatch-{listener}", ctx)
    now = time.time()
    command = tw.encode(tw.CMD, tw.make_command(pump.key, "site-1", "pump", f"cmd-{listener}", 1, now, now + 600, 1))
    dispatch.publish(cmd_topic, command, qos=1).wait_for_publish(timeout=WAIT_S)
    assert received.get(timeout=WAIT_S) == command  # the relay got it (through the tap)
    for c in (relay, device, dispatch):
        c.loop_stop()
        c.disconnect()
    tap.close()
    seen = bytes(tap.captured)
    secrets_on_wire = {"meter password": meter.mqtt_password.encode(), "relay password": pump.mqtt_password.encode(),
                       "dispatch password": broker.service_password("dispatch").encode(),
                       "signed command": command, "command signature": json.loads(command)["sig"].encode()}
    found = {name for name, secret in secrets_on_wire.items() if secret in seen}
    assert len(seen) > 2 * len(command)  # the command went through the tap twice (to broker, to relay)
    if tls:
        assert found == set(), f"readable on the wire over TLS: {found}"
    else:
        # the same run in cleartext exposes all of it: the check above can fail
        assert found == set(secrets_on_wire), f"not seen in cleartext: {set(secrets_on_wire) - found}"

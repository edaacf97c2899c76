"""Home Assistant MQTT discovery for registered devices: read-only entities on the devices' own
topics (meter power and energy, relay state and load), available while the device's retained
status says online. Relays are not offered as HA switches: a command must carry an HMAC
signature only the cloud can make, so HA shows what the optimizer and the relay decided.

Message building is pure (`discovery_messages`); publishing them is `publish`.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import paho.mqtt.client as paho
import tendril_wire as wire
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tendril_transactive.cloud.devices.registry import DeviceRecord

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Entity:
    """One reading of a device as HA sees it; `field` is a telemetry field of the wire contract."""

    component: str  # "sensor" | "binary_sensor"
    key: str
    name: str
    field: str
    extra: tuple[tuple[str, object], ...] = ()


ENTITIES = {
    wire.DEVICE_METER: (
        Entity("sensor", "power", "Power", "power_w",
               (("device_class", "power"), ("unit_of_measurement", "W"), ("state_class", "measurement"))),
        Entity("sensor", "energy", "Energy", "energy_wh",
               (("device_class", "energy"), ("unit_of_measurement", "Wh"), ("state_class", "total_increasing"))),
    ),
    wire.DEVICE_RELAY: (
        Entity("binary_sensor", "relay", "Relay", "relay", (("device_class", "power"), ("payload_on", "1"),
                                                             ("payload_off", "0"))),
        Entity("sensor", "load", "Load", "load_w",
               (("device_class", "power"), ("unit_of_measurement", "W"), ("state_class", "measurement"))),
    ),
}  # fmt: skip


def discovery_messages(devices: Iterable[DeviceRecord]) -> list[tuple[str, bytes]]:
    """(topic, retained payload) per entity of every device, in a stable order."""
    out: list[tuple[str, bytes]] = []
    for dev in sorted(devices):
        node = f"tendril_{dev.site}_{dev.device}"
        for entity in ENTITIES[dev.type]:
            config: dict[str, object] = {
                "name": entity.name,
                "unique_id": f"{node}_{entity.key}",
                "object_id": f"{node}_{entity.key}",
                "state_topic": wire.device_topic(dev.site, dev.device, wire.TELEMETRY),
                "value_template": "{{ value_json." + entity.field + " }}",
                "availability_topic": wire.device_topic(dev.site, dev.device, wire.STATUS),
                "availability_template": "{{ value_json.state }}",
                "payload_available": wire.ONLINE,
                "payload_not_available": wire.OFFLINE,
                "qos": 1,
                "device": {"identifiers": [node], "name": f"{dev.site} {dev.device}", "manufacturer": "Tendril",
                           "model": f"Tendril {dev.type}"},
                **dict(entity.extra),
            }  # fmt: skip
            topic = wire.ha_config_topic(entity.component, dev.site, dev.device, entity.key)
            out.append((topic, json.dumps(config, sort_keys=True).encode()))
    return out


def publish(host: str, port: int, messages: list[tuple[str, bytes]], username: str | None = None,
            password: str | None = None, client_id: str | None = None,
            tls: ssl.SSLContext | None = None) -> None:
    """Publish each message retained at QoS 1 and return once the broker acknowledged all;
    `tls` (settings.broker_tls): over TLS, the broker's certificate and name verified. The
    default client id is new each run (a clean session needs no stable one), so no other login
    can name the session and knock it off mid-publish."""
    client_id = client_id or f"tendril-ha-discovery-{secrets.token_hex(6)}"
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls)
    client.on_connect = on_connect
    try:
        client.connect(host, port)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionError(f"cannot connect to {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(TIMEOUT_S):
            raise ConnectionError(f"no CONNACK from {host}:{port} within {TIMEOUT_S:.0f} s")
        if refused:
            raise ConnectionError(f"{host}:{port} refused the connection: {refused[0]}")
        infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=TIMEOUT_S)
            if not info.is_published():
                raise ConnectionError(f"{host}:{port} did not acknowledge a discovery message")
    finally:
        client.disconnect()
        client.loop_stop()

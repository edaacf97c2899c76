"""Home Assistant discovery configs: one per reading of each device, on the device's own topics,
every template naming a field the wire contract really sends, and read-only by design."""

from __future__ import annotations

import json
import re

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.devices.ha_discovery import discovery_messages
from tendril_transactive.cloud.devices.mosquitto import ServiceUser, acl_text
from tendril_transactive.cloud.devices.registry import DeviceRecord

pytestmark = pytest.mark.unit

DEVICES = [DeviceRecord("site-1", "pump", "relay"), DeviceRecord("site-1", "meter", "meter")]


def test_one_retained_config_per_reading_on_the_devices_own_topics() -> None:
    messages = discovery_messages(DEVICES)
    assert [topic for topic, _ in messages] == [
        "homeassistant/sensor/tendril_site-1_meter/power/config",
        "homeassistant/sensor/tendril_site-1_meter/energy/config",
        "homeassistant/binary_sensor/tendril_site-1_pump/relay/config",
        "homeassistant/sensor/tendril_site-1_pump/load/config",
    ]
    power = json.loads(messages[0][1])
    assert power["state_topic"] == wire.device_topic("site-1", "meter", wire.TELEMETRY)
    assert power["availability_topic"] == wire.device_topic("site-1", "meter", wire.STATUS)
    assert (power["unit_of_measurement"], power["device_class"], power["unique_id"]) == (
        "W", "power", "tendril_site-1_meter_power")
    assert len({json.loads(p)["unique_id"] for _, p in messages}) == len(messages)
    assert not any("command_topic" in json.loads(p) for _, p in messages), "relays are not HA switches"


def test_every_template_reads_a_field_the_contract_sends() -> None:
    reading = {wire.DEVICE_METER: wire.telemetry_meter(1, 1.7e9, 812.5, 40.0),
               wire.DEVICE_RELAY: wire.telemetry_relay(1, 1.7e9, 1, 1100.0)}
    status = json.loads(wire.status_payload(True))
    for (_topic, payload), device in zip(discovery_messages(DEVICES), ("meter", "meter", "relay", "relay"),
                                         strict=True):  # fmt: skip
        config = json.loads(payload)
        (field,) = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", config["value_template"]).groups()  # type: ignore[union-attr]
        assert field in wire.TELEMETRY_FIELDS and field in reading[device]
        assert config["availability_template"] == "{{ value_json.state }}"
        assert status["state"] == config["payload_available"]
        if "payload_on" in config:  # the relay's 0/1 rendered as text
            assert str(reading[device][field]) in (config["payload_on"], config["payload_off"])


def test_the_homeassistant_user_reads_readings_and_owns_only_its_tree() -> None:
    acl = acl_text([], [ServiceUser("tendril-homeassistant", "x", "homeassistant")])
    assert acl.splitlines() == [
        "user tendril-homeassistant",
        f"topic read {wire.device_filter(wire.TELEMETRY)}",
        f"topic read {wire.device_filter(wire.STATUS)}",
        "topic readwrite homeassistant/#",
    ]

"""Signed, expiring commands: signatures verify, seq rises per device, acks settle what was sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.agent.dispatch import Dispatcher

pytestmark = pytest.mark.unit

NOW = 1_710_500_000.0
KEYS = {("site-1", "pump"): b"k" * 32, ("site-1", "ev"): b"e" * 32, ("site-2", "pump"): b"p" * 32}


def _ack(cmd: dict[str, Any], ok: bool = True, reason: str = wire.ACCEPTED) -> dict[str, Any]:
    return wire.ack(cmd["id"], cmd["seq"], NOW + 1, ok, reason, cmd["relay"])


def test_command_is_signed_for_its_device_and_expires_after_grace() -> None:
    d = Dispatcher(KEYS, grace_s=30)
    out = d.command("site-1", "pump", 1, NOW + 3600, NOW)
    assert out.topic == wire.device_topic("site-1", "pump", wire.CMD)
    cmd = wire.decode(wire.CMD, out.payload)
    assert cmd == out.cmd
    assert cmd["issued"] == NOW and cmd["expires"] == NOW + 3600 + 30 and cmd["relay"] == 1
    assert wire.verify_command(KEYS[("site-1", "pump")], "site-1", "pump", cmd)
    # not valid for another device, nor under another key, nor once tampered with
    assert not wire.verify_command(KEYS[("site-1", "pump")], "site-1", "ev", cmd)
    assert not wire.verify_command(KEYS[("site-2", "pump")], "site-1", "pump", cmd)
    assert not wire.verify_command(KEYS[("site-1", "pump")], "site-1", "pump", {**cmd, "relay": 0})


def test_seq_rises_per_device_and_ids_are_unique() -> None:
    d = Dispatcher(KEYS)
    pump = [d.command("site-1", "pump", i % 2, NOW + 60, NOW) for i in range(5)]
    ev = [d.command("site-1", "ev", 1, NOW + 60, NOW) for _ in range(2)]
    assert [o.cmd["seq"] for o in pump] == [1, 2, 3, 4, 5]
    assert [o.cmd["seq"] for o in ev] == [1, 2]
    ids = [o.cmd["id"] for o in pump + ev]
    assert len(set(ids)) == len(ids)
    assert d.last_seq("site-1", "pump") == 5 and d.last_seq("site-2", "pump") == 0


def test_a_restarted_dispatcher_continues_above_the_last_seq() -> None:
    first = Dispatcher(KEYS).command("site-1", "pump", 1, NOW + 60, NOW)
    again = Dispatcher(KEYS, last_seq={("site-1", "pump"): 41}).command("site-1", "pump", 1, NOW + 60, NOW)
    assert again.cmd["seq"] == 42
    assert again.cmd["id"] != first.cmd["id"]


def test_acks_settle_commands_and_refusals_count_by_reason() -> None:
    d = Dispatcher(KEYS)
    a = d.command("site-1", "pump", 1, NOW + 60, NOW)
    b = d.command("site-1", "pump", 0, NOW + 60, NOW)
    c = d.command("site-1", "ev", 1, NOW + 60, NOW)
    assert (d.stats.sent, d.stats.pending) == (3, 3)
    assert d.on_ack("site-1", "pump", _ack(a.cmd)) is a
    assert d.on_ack("site-1", "pump", _ack(b.cmd, False, wire.REFUSE_MIN_ON)) is b
    assert d.on_ack("site-1", "ev", _ack(c.cmd, False, wire.REFUSE_EXPIRED)) is c
    assert d.stats.acked_ok == 1
    assert d.stats.refused == {wire.REFUSE_MIN_ON: 1, wire.REFUSE_EXPIRED: 1}
    assert d.stats.pending == 0


def test_duplicate_unmatched_and_invalid_acks_settle_nothing() -> None:
    d = Dispatcher(KEYS)
    a = d.command("site-1", "pump", 1, NOW + 60, NOW)
    b = d.command("site-1", "pump", 1, NOW + 60, NOW)
    assert d.on_ack("site-1", "ev", _ack(a.cmd)) is None  # right id, wrong device
    assert d.on_ack("site-1", "pump", {**_ack(a.cmd), "seq": 99}) is None  # right id, wrong seq
    assert d.on_ack("site-1", "pump", {**_ack(a.cmd), "id": "nope"}) is None
    assert d.on_ack("site-1", "pump", {"v": 1, "id": a.cmd["id"]}) is None  # broken ack
    assert d.stats.unmatched_acks == 3 and d.stats.invalid_acks == 1 and d.stats.pending == 2
    assert d.on_ack("site-1", "pump", _ack(a.cmd)) is a
    assert d.on_ack("site-1", "pump", _ack(a.cmd)) is None  # QoS 1 redelivery
    assert d.stats.duplicate_acks == 1 and d.stats.acked_ok == 1
    assert [o.cmd["id"] for o in d.unacked(NOW, 0)] == [b.cmd["id"]]


def test_unacked_lists_overdue_commands_oldest_first() -> None:
    d = Dispatcher(KEYS)
    old = d.command("site-1", "pump", 1, NOW + 600, NOW)
    mid = d.command("site-1", "ev", 1, NOW + 600, NOW + 20)
    new = d.command("site-2", "pump", 1, NOW + 600, NOW + 50)
    assert d.unacked(NOW + 30, 60) == []
    assert d.unacked(NOW + 80, 60) == [old, mid]
    d.on_ack("site-1", "pump", _ack(old.cmd))
    assert d.unacked(NOW + 200, 60) == [mid, new]


def test_missing_key_names_the_device() -> None:
    d = Dispatcher(KEYS)
    with pytest.raises(KeyError, match="no signing key for device 'heater' at site 'site-1'"):
        d.command("site-1", "heater", 1, NOW + 60, NOW)
    assert d.stats.sent == 0


def test_bad_commands_are_refused_before_anything_is_recorded() -> None:
    d = Dispatcher(KEYS)
    with pytest.raises(ValueError, match="relay must be 0 or 1"):
        d.command("site-1", "pump", 2, NOW + 60, NOW)
    with pytest.raises(ValueError, match="born expired"):
        d.command("site-1", "pump", 1, NOW, NOW)
    with pytest.raises(ValueError, match="grace_s"):
        Dispatcher(KEYS, grace_s=-1)
    assert d.stats.sent == 0 and d.last_seq("site-1", "pump") == 0
    assert d.command("site-1", "pump", 1, NOW + 60, NOW).cmd["seq"] == 1


def test_payload_fits_the_contract_limits() -> None:
    out = Dispatcher(KEYS).command("site-1", "pump", 1, NOW + 60, NOW)
    assert len(out.payload) < wire.MAX_PAYLOAD
    assert json.loads(out.payload)["sig"] == out.cmd["sig"]

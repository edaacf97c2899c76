"""Dispatch against the real firmware relay logic: safety clamps, retries with the same id, flags."""

from __future__ import annotations

import pytest
import tendril_wire as wire
from tendril_fw.relay import RelayNode

from tendril_transactive.cloud.agent.dispatch import MAX_SWITCHES, Dispatcher, SafetyLimits

pytestmark = pytest.mark.unit

NOW = 1_710_500_000.0
KEY = b"k" * 32
DEV = ("site-1", "hvac")


def _deliver(node: RelayNode, out_payload: bytes, at: float) -> dict[str, object]:
    return node.handle_payload(at, "site-1", "hvac", out_payload)


def test_min_on_time_holds_the_relay_even_if_the_optimizer_asks_to_switch() -> None:
    d = Dispatcher({DEV: KEY}, limits={DEV: SafetyLimits(min_on_s=600, min_off_s=300)})
    node = RelayNode(KEY, NOW - 3600, min_on_s=600, min_off_s=300)
    on = d.command("site-1", "hvac", 1, NOW + 300, NOW)
    assert d.on_ack("site-1", "hvac", _deliver(node, on.payload, NOW)) is on
    early = d.command("site-1", "hvac", 0, NOW + 600, NOW + 300)  # 5 min after switching on
    assert early.cmd["relay"] == 1 and early.requested == 0 and early.clamp_reason == wire.REFUSE_MIN_ON
    ack = _deliver(node, early.payload, NOW + 300)
    assert ack["ok"] and ack["relay"] == 1  # the device never had to refuse: nothing unsafe was asked
    d.on_ack("site-1", "hvac", ack)
    later = d.command("site-1", "hvac", 0, NOW + 900, NOW + 600)
    assert later.cmd["relay"] == 0 and later.clamp_reason is None
    assert _deliver(node, later.payload, NOW + 600)["ok"]
    assert d.stats.clamped[wire.REFUSE_MIN_ON] == 1 and not d.stats.refused


def test_min_off_time_and_switches_per_day() -> None:
    d = Dispatcher({DEV: KEY}, limits={DEV: SafetyLimits(min_off_s=900, max_switches_per_day=2)})
    d.command("site-1", "hvac", 0, NOW + 60, NOW)  # first state learnt: not a switch
    assert d.command("site-1", "hvac", 1, NOW + 1000, NOW + 100).clamp_reason == wire.REFUSE_MIN_OFF
    assert d.command("site-1", "hvac", 1, NOW + 2000, NOW + 1000).cmd["relay"] == 1  # switch 1
    assert d.command("site-1", "hvac", 0, NOW + 3000, NOW + 2000).cmd["relay"] == 0  # switch 2
    third = d.command("site-1", "hvac", 1, NOW + 4000, NOW + 3000)
    assert third.cmd["relay"] == 0 and third.clamp_reason == MAX_SWITCHES
    # a day after the first switch it may switch again
    assert d.command("site-1", "hvac", 1, NOW + 90000, NOW + 1000 + 86400).cmd["relay"] == 1


def test_a_lost_command_is_resent_with_the_same_id_and_then_applied() -> None:
    d = Dispatcher({DEV: KEY}, max_attempts=3)
    node = RelayNode(KEY, NOW - 3600)
    out = d.command("site-1", "hvac", 1, NOW + 600, NOW)  # lost on the way
    assert d.retries(NOW + 10, timeout_s=30) == []  # not overdue yet
    (again,) = d.retries(NOW + 30, timeout_s=30)
    assert again.payload == out.payload and again.cmd["id"] == out.cmd["id"]
    ack = _deliver(node, again.payload, NOW + 31)
    assert ack["ok"] and d.on_ack("site-1", "hvac", ack) is out
    assert d.stats.retried == 1 and d.stats.acked_ok == 1 and not d.flagged


def test_a_lost_ack_then_replayed_refusal_counts_as_delivered() -> None:
    d = Dispatcher({DEV: KEY})
    node = RelayNode(KEY, NOW - 3600)
    out = d.command("site-1", "hvac", 1, NOW + 600, NOW)
    assert _deliver(node, out.payload, NOW + 1)["ok"]  # applied; this ack is lost
    (again,) = d.retries(NOW + 30, timeout_s=30)
    ack = _deliver(node, again.payload, NOW + 31)
    assert not ack["ok"] and ack["reason"] == wire.REFUSE_REPLAYED  # applied once, not twice
    d.on_ack("site-1", "hvac", ack)
    assert d.stats.acked_ok == 1 and not d.stats.refused and node.switches == 1


def test_no_ack_after_all_attempts_flags_the_site() -> None:
    d = Dispatcher({DEV: KEY, ("site-2", "pump"): KEY}, max_attempts=2)
    d.command("site-1", "hvac", 1, NOW + 3600, NOW)
    ok = d.command("site-2", "pump", 1, NOW + 3600, NOW)
    d.on_ack("site-2", "pump", wire.ack(ok.cmd["id"], ok.cmd["seq"], NOW + 1, True, wire.ACCEPTED, 1))
    assert len(d.retries(NOW + 30, 30)) == 1  # second send
    assert d.retries(NOW + 60, 30) == []  # out of attempts: given up
    assert set(d.flagged) == {"site-1"} and "no ack after 2 sends" in d.flagged["site-1"]
    assert d.stats.given_up == 1 and d.stats.pending == 0
    d.clear_flag("site-1")
    assert not d.flagged


def test_an_expired_command_is_not_resent() -> None:
    d = Dispatcher({DEV: KEY}, grace_s=0, max_attempts=5)
    d.command("site-1", "hvac", 1, NOW + 20, NOW)
    assert d.retries(NOW + 30, 10) == []
    assert "expired" in d.flagged["site-1"]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="min on/off"):
        SafetyLimits(min_on_s=-1)
    with pytest.raises(ValueError, match="max_attempts"):
        Dispatcher({DEV: KEY}, max_attempts=0)

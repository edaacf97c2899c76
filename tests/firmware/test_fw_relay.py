# Relay command decisions: every refusal reason leaves the relay exactly as it was.

import json

import tendril_wire as tw
from tendril_fw.relay import RelayNode
from tendril_wire import OVERRIDE_OFF, OVERRIDE_ON, REFUSE_MAX_SWITCHES, REFUSE_OVERRIDE

KEY = b"0123456789abcdef0123456789abcdef"
SITE = "site-1"
DEV = "pump-1"
NOW = 1700000000.0


def relay(safe_default=0, min_on_s=0.0, min_off_s=0.0, max_switches_per_hour=0):
    return RelayNode(KEY, NOW, safe_default, min_on_s, min_off_s, 1500.0, max_switches_per_hour)


def cmd(cmd_id, seq, state, expires=NOW + 300, issued=NOW, key=KEY, device=DEV):
    return tw.make_command(key, SITE, device, cmd_id, seq, issued, expires, state)


def snapshot(r):
    return (r.relay, r.switches, r.last_change, r.last_seq, list(r.seen_ids), r.expires,
            list(r.switch_times), r.override, r.commanded)


def refused(r, now, command, reason):
    before = snapshot(r)
    ack = r.handle_command(now, SITE, DEV, command)
    assert ack["ok"] is False, ack
    assert ack["reason"] == reason, (ack, reason)
    assert snapshot(r) == before, "a refused command changed the relay"
    tw.encode(tw.ACK, ack)  # refusals are valid acks too
    return ack


def test_signed_command_switches_and_acks():
    r = relay()
    ack = r.handle_command(NOW + 1, SITE, DEV, cmd("c1", 1, 1))
    assert ack == tw.ack("c1", 1, NOW + 1, True, tw.ACCEPTED, 1)
    assert r.relay == 1 and r.switches == 1 and r.last_change == NOW + 1


def test_command_that_changes_nothing_is_accepted():
    r = relay()
    ack = r.handle_command(NOW + 1, SITE, DEV, cmd("c1", 1, 0))
    assert ack["ok"] is True and ack["reason"] == tw.ACCEPTED and ack["relay"] == 0
    assert r.switches == 0


def test_invalid_payloads_are_refused():
    r = relay()
    good = cmd("c1", 1, 1)
    bad = []
    for field in good:
        partial = dict(good)
        del partial[field]
        bad.append(partial)
    extra = dict(good)
    extra["force"] = True
    bad.append(extra)
    for field, value in (("relay", 2), ("relay", True), ("seq", "1"), ("v", 2), ("id", ""),
                         ("expires", float("nan"))):
        broken = dict(good)
        broken[field] = value
        bad.append(broken)
    for command in bad:
        refused(r, NOW + 1, command, tw.REFUSE_INVALID)
    for payload in (b"not json", b"[1, 2]", b"\xff\xfe", b"", b"null"):
        before = snapshot(r)
        ack = r.handle_payload(NOW + 1, SITE, DEV, payload)
        assert ack["ok"] is False and ack["reason"] == tw.REFUSE_INVALID and ack["id"] == ""
        assert snapshot(r) == before
        tw.encode(tw.ACK, ack)
    # and the untouched command still works
    assert r.handle_payload(NOW + 1, SITE, DEV, json.dumps(good).encode())["ok"] is True


def test_bad_signatures_are_refused():
    r = relay()
    tampered = cmd("c1", 1, 0)
    tampered["relay"] = 1
    other_key = cmd("c2", 2, 1, key=b"another-key-another-key-another!")
    other_device = cmd("c3", 3, 1, device="pump-2")
    short_sig = cmd("c4", 4, 1)
    short_sig["sig"] = short_sig["sig"][:10]
    for command in (tampered, other_key, other_device, short_sig):
        refused(r, NOW + 1, command, tw.REFUSE_BAD_SIG)
    assert r.relay == 0


def test_expired_commands_are_refused():
    r = relay()
    refused(r, NOW + 300, cmd("c1", 1, 1, expires=NOW + 300), tw.REFUSE_EXPIRED)
    refused(r, NOW + 301, cmd("c2", 2, 1, expires=NOW + 300), tw.REFUSE_EXPIRED)


def test_replayed_commands_are_refused():
    r = relay()
    first = cmd("c1", 5, 1)
    assert r.handle_command(NOW + 1, SITE, DEV, first)["ok"] is True
    refused(r, NOW + 2, first, tw.REFUSE_REPLAYED)  # the very same message again
    refused(r, NOW + 2, cmd("c2", 5, 0), tw.REFUSE_REPLAYED)  # new id, same seq
    refused(r, NOW + 2, cmd("c1", 6, 0), tw.REFUSE_REPLAYED)  # old id, new seq
    assert r.relay == 1


def test_out_of_order_commands_are_refused():
    r = relay()
    assert r.handle_command(NOW + 1, SITE, DEV, cmd("c9", 9, 1))["ok"] is True
    refused(r, NOW + 2, cmd("c8", 8, 0), tw.REFUSE_OUT_OF_ORDER)
    assert r.handle_command(NOW + 3, SITE, DEV, cmd("c10", 10, 0))["ok"] is True


def test_min_off_time_blocks_switching_on_too_soon():
    r = relay(min_off_s=120)
    refused(r, NOW + 60, cmd("c1", 1, 1), tw.REFUSE_MIN_OFF)  # boot counts as the last OFF
    assert r.handle_command(NOW + 120, SITE, DEV, cmd("c2", 2, 1))["ok"] is True
    assert r.handle_command(NOW + 130, SITE, DEV, cmd("c3", 3, 0))["ok"] is True
    refused(r, NOW + 249, cmd("c4", 4, 1), tw.REFUSE_MIN_OFF)
    assert r.relay == 0


def test_min_on_time_blocks_switching_off_too_soon():
    r = relay(min_on_s=300)
    assert r.handle_command(NOW + 10, SITE, DEV, cmd("c1", 1, 1, expires=NOW + 900))["ok"] is True
    refused(r, NOW + 309, cmd("c2", 2, 0, expires=NOW + 900), tw.REFUSE_MIN_ON)
    assert r.relay == 1
    # staying on is not a switch, so the timer does not refuse it
    assert r.handle_command(NOW + 309, SITE, DEV, cmd("c3", 3, 1, expires=NOW + 900))["ok"] is True
    assert r.handle_command(NOW + 310, SITE, DEV, cmd("c4", 4, 0, expires=NOW + 900))["ok"] is True
    assert r.relay == 0


def test_falls_back_to_safe_default_when_the_command_lapses():
    r = relay()
    r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 1, expires=NOW + 300))
    assert r.deadline() == NOW + 300
    assert r.tick(NOW + 299.9) is False and r.relay == 1
    assert r.tick(NOW + 300) is True and r.relay == 0
    assert r.switches == 2 and r.deadline() is None
    assert r.tick(NOW + 1000) is False


def test_newer_command_keeps_the_relay_until_its_own_expiry():
    r = relay()
    r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 1, expires=NOW + 300))
    r.handle_command(NOW + 200, SITE, DEV, cmd("c2", 2, 1, expires=NOW + 600))
    assert r.tick(NOW + 300) is False and r.relay == 1
    assert r.tick(NOW + 600) is True and r.relay == 0


def test_fallback_waits_for_the_anti_short_cycle_timer():
    r = relay(min_on_s=600)
    r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 1, expires=NOW + 300))
    assert r.deadline() == NOW + 600
    assert r.tick(NOW + 300) is False and r.relay == 1
    assert r.tick(NOW + 600) is True and r.relay == 0


def test_safe_default_on():
    r = relay(safe_default=1)
    assert r.relay == 1
    r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 0, expires=NOW + 60))
    assert r.relay == 0
    assert r.tick(NOW + 60) is True and r.relay == 1


def test_telemetry_reports_rated_load_only_when_on():
    r = relay()
    off = r.telemetry(NOW)
    r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 1))
    on = r.telemetry(NOW + 1)
    assert (off["relay"], off["load_w"], off["seq"]) == (0, 0.0, 0)
    assert (on["relay"], on["load_w"], on["seq"]) == (1, 1500.0, 1)
    tw.encode(tw.TELEMETRY, on)


def test_max_switches_per_hour_refuses_the_next_switch_until_the_hour_slides():
    r = relay(max_switches_per_hour=3)
    for i, state in enumerate((1, 0, 1)):
        assert r.handle_command(NOW + 10 * i, SITE, DEV, cmd(f"c{i}", i + 1, state, expires=NOW + 9000))["ok"]
    refused(r, NOW + 100, cmd("c9", 9, 0, expires=NOW + 9000), REFUSE_MAX_SWITCHES)
    # keeping the state is no switch, so it is accepted even with the budget spent
    assert r.handle_command(NOW + 101, SITE, DEV, cmd("c10", 10, 1, expires=NOW + 9000))["ok"] is True
    # the first switch (at NOW) leaves the sliding hour at NOW + 3600
    refused(r, NOW + 3599, cmd("c11", 11, 0, expires=NOW + 9000), REFUSE_MAX_SWITCHES)
    assert r.handle_command(NOW + 3600, SITE, DEV, cmd("c12", 12, 0, expires=NOW + 9000))["ok"] is True
    assert r.relay == 0


def test_safety_fallback_is_not_blocked_by_the_switch_budget():
    r = relay(max_switches_per_hour=1)
    assert r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 1, expires=NOW + 60))["ok"] is True
    assert r.tick(NOW + 60) is True and r.relay == 0


def test_every_refusal_kind_leaves_the_relay_on_and_untouched():
    r = relay(min_on_s=600, min_off_s=600, max_switches_per_hour=10)
    assert r.handle_command(NOW + 600, SITE, DEV, cmd("on", 5, 1, expires=NOW + 3000))["ok"] is True
    now = NOW + 700
    forged = cmd("f", 6, 0, key=b"another-key-another-key-another!", expires=NOW + 3000)
    cases = (
        (cmd("x", 6, 0, expires=now), tw.REFUSE_EXPIRED),
        (cmd("on", 5, 1, expires=NOW + 3000), tw.REFUSE_REPLAYED),
        (cmd("old", 4, 0, expires=NOW + 3000), tw.REFUSE_OUT_OF_ORDER),
        (forged, tw.REFUSE_BAD_SIG),
        (cmd("off", 6, 0, expires=NOW + 3000), tw.REFUSE_MIN_ON),
    )
    for command, reason in cases:
        ack = refused(r, now, command, reason)
        assert ack["relay"] == 1
    assert r.relay == 1 and r.switches == 1


def test_local_override_wins_over_the_cloud_and_is_reported():
    r = relay(min_off_s=600)
    report = r.set_override(NOW + 1, 1)  # the button ignores the compressor timer: a person is there
    assert report == tw.ack(tw.OVERRIDE_ACK_ID, -1, NOW + 1, True, OVERRIDE_ON, 1)
    tw.encode(tw.ACK, report)
    assert r.set_override(NOW + 2, 1) is None  # no change, no report
    refused(r, NOW + 700, cmd("c1", 1, 0, expires=NOW + 900), REFUSE_OVERRIDE)
    # a command in force while overridden does not expire the override either
    assert r.deadline() is None and r.tick(NOW + 10000) is False and r.relay == 1
    released = r.set_override(NOW + 800, None)
    assert released["reason"] == OVERRIDE_OFF and released["relay"] == 0  # no command: safe default
    assert r.relay == 0


def test_releasing_the_override_restores_the_command_in_force():
    r = relay()
    assert r.handle_command(NOW, SITE, DEV, cmd("c1", 1, 1, expires=NOW + 600))["ok"] is True
    r.set_override(NOW + 10, 0)
    assert r.relay == 0
    assert r.set_override(NOW + 20, None)["relay"] == 1
    assert r.tick(NOW + 600) is True and r.relay == 0
    # released after the command lapsed: straight to the safe default
    r2 = relay(safe_default=1)
    r2.handle_command(NOW, SITE, DEV, cmd("c1", 1, 0, expires=NOW + 60))
    r2.set_override(NOW + 10, 0)
    assert r2.set_override(NOW + 100, None)["relay"] == 1 and r2.expires is None


def test_a_relay_booted_with_the_saved_seq_refuses_every_earlier_command():
    # the node restores last_seq from flash (seqstore.AcceptedSeq) when it boots the relay
    old_on = cmd("c7", 7, 1, expires=NOW + 4200)
    off = cmd("c8", 8, 0, expires=NOW + 4200)
    r = relay()
    assert r.handle_command(NOW + 1, SITE, DEV, old_on)["ok"] is True
    assert r.handle_command(NOW + 2, SITE, DEV, off)["ok"] is True
    rebooted = RelayNode(KEY, NOW + 10, 0, 0.0, 0.0, 1500.0, 0, r.last_seq)
    refused(rebooted, NOW + 11, old_on, tw.REFUSE_OUT_OF_ORDER)
    refused(rebooted, NOW + 11, off, tw.REFUSE_REPLAYED)
    assert rebooted.relay == 0
    assert rebooted.handle_command(NOW + 12, SITE, DEV, cmd("c9", 9, 1))["ok"] is True
    # without the saved seq (the old RAM-only relay) the old ON switched the relay on
    forgetful = RelayNode(KEY, NOW + 10, 0, 0.0, 0.0, 1500.0, 0)
    assert forgetful.handle_command(NOW + 11, SITE, DEV, old_on)["ok"] is True

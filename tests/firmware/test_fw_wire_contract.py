# Conformance tests for the wire contract, named after the rule each one checks.
# MicroPython-compatible (plain asserts, no pytest import): the same file runs
# under CPython (pytest) and under the MicroPython unix port (the firmware runner).

import tendril_wire as w

KEY = b"k" * 32


def _raises_reason(reason, fn, *args):
    try:
        fn(*args)
    except w.ContractError as exc:
        assert exc.reason == reason, "expected " + reason + ", got " + exc.reason
        return
    raise AssertionError("expected ContractError " + reason)


def test_topic_tree_is_versioned_and_round_trips():
    for kind in w.DEVICE_KINDS:
        topic = w.device_topic("site-1", "pump", kind)
        assert topic.startswith("tendril/v1/")
        assert w.parse_topic(topic) == ("site-1", "pump", kind)
    assert w.parse_topic(w.tender_topic("site-1")) == ("site-1", "", w.TENDER)


def test_ids_reject_wildcards_separators_and_overlong():
    for bad in ("", "a/b", "+", "#", "A", "x" * 33, "sp ace"):
        _raises_reason("bad_site", w.device_topic, bad, "d", w.TELEMETRY)
    _raises_reason("bad_device", w.device_topic, "s", "d/e", w.TELEMETRY)


def test_filters_allow_wildcards_only_as_whole_levels():
    assert w.device_filter(w.TELEMETRY) == "tendril/v1/+/+/telemetry"
    assert w.device_filter(w.CMD, "s1", "d1") == w.device_topic("s1", "d1", w.CMD)
    _raises_reason("bad_site", w.device_filter, w.TELEMETRY, "s#")


def test_parse_topic_rejects_foreign_and_unknown_kinds():
    for topic in ("tendril/v2/s/d/telemetry", "tendril/v1/s/d/nope", "x", "tendril/v1/s/d/telemetry/extra"):
        _raises_reason("bad_topic", w.parse_topic, topic)


def test_telemetry_meter_round_trip():
    msg = w.telemetry_meter(7, 1710000000.25, 1500.5, 12.0)
    assert w.decode(w.TELEMETRY, w.encode(w.TELEMETRY, msg)) == msg


def test_telemetry_rejections_carry_reasons():
    good = w.telemetry_meter(1, 1710000000, 1.0, 2.0)
    cases = (
        (b"{not json", "bad_json"),
        (b"[1,2]", "not_object"),
        (b'{"v":1}', "missing_field"),
        (b"x" * (w.MAX_PAYLOAD + 1), "too_large"),
    )
    for payload, reason in cases:
        _raises_reason(reason, w.decode, w.TELEMETRY, payload)
    bad = dict(good)
    bad["seq"] = "1"
    _raises_reason("bad_type", w.validate, w.TELEMETRY, bad)
    bad = dict(good)
    bad["seq"] = True
    _raises_reason("bad_type", w.validate, w.TELEMETRY, bad)
    bad = dict(good)
    bad["extra"] = 1
    _raises_reason("unknown_field", w.validate, w.TELEMETRY, bad)
    bad = dict(good)
    bad["v"] = 2
    _raises_reason("bad_version", w.validate, w.TELEMETRY, bad)
    bad = dict(good)
    bad["ts"] = 12
    _raises_reason("bad_ts", w.validate, w.TELEMETRY, bad)
    bad = dict(good)
    bad["type"] = "toaster"
    _raises_reason("bad_device_type", w.validate, w.TELEMETRY, bad)
    bad = w.telemetry_relay(1, 1710000000, 2, 0.0)
    _raises_reason("out_of_range", w.validate, w.TELEMETRY, bad)


def test_non_finite_numbers_are_rejected():
    msg = w.telemetry_meter(1, 1710000000, 1.0, 2.0)
    msg["power_w"] = float("inf")
    _raises_reason("not_finite", w.validate, w.TELEMETRY, msg)


def test_hmac_matches_rfc4231_case_2():
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    mac = w.hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert "".join(f"{b:02x}" for b in mac) == expected


def test_signed_command_verifies_only_for_its_device_and_key():
    cmd = w.make_command(KEY, "s1", "pump", "c-1", 1, 1710000000.0, 1710000300.0, 1)
    w.validate(w.CMD, cmd)
    assert w.verify_command(KEY, "s1", "pump", cmd)
    assert not w.verify_command(KEY, "s1", "other", cmd)
    assert not w.verify_command(b"x" * 32, "s1", "pump", cmd)
    tampered = dict(cmd)
    tampered["relay"] = 0
    assert not w.verify_command(KEY, "s1", "pump", tampered)
    tampered = dict(cmd)
    tampered["expires"] = cmd["expires"] + 3600
    assert not w.verify_command(KEY, "s1", "pump", tampered)


def test_tender_fields_follow_temix_names():
    tender = {"v": 1, "tenderId": "t1", "side": w.SIDE_BUY, "intervalStart": 1710000000,
              "durationS": 300, "price": 0.12, "expirationTime": 1710000000,
              "partyId": "utility", "counterPartyId": "s1", "marketId": "RTM",
              "resourceDesignator": "feeder-a"}
    assert w.decode(w.TENDER, w.encode(w.TENDER, tender)) == tender
    tender["side"] = "HOLD"
    _raises_reason("out_of_range", w.validate, w.TENDER, tender)


def test_status_is_online_or_offline():
    assert w.decode(w.STATUS, w.status_payload(True))["state"] == w.ONLINE
    assert w.decode(w.STATUS, w.status_payload(False))["state"] == w.OFFLINE


def test_esp32_epoch_converts_in_one_place():
    assert w.to_unix_time(0, 2000) == 946684800
    assert w.to_unix_time(5, 1970) == 5


def test_deeply_nested_json_is_bad_json_not_a_crash():
    _raises_reason("bad_json", w.decode, w.TELEMETRY, b"[" * 4000)

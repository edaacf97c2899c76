# MQTT packet encoding/decoding. Runs under CPython (pytest) and MicroPython (mp_runner.py):
# plain asserts, no pytest import.

from tendril_fw import mqtt_packets as mp


def raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type:
        return True
    raise AssertionError(f"{fn} did not raise {exc_type}")


def test_varint_boundaries_round_trip():
    cases = [(0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3), (2097151, 3), (2097152, 4),
             (mp.MAX_REMAINING, 4)]
    for value, size in cases:
        raw = mp.encode_varint(value)
        assert len(raw) == size, (value, raw)
        assert mp.decode_varint(raw + b"junk") == (value, size)
    assert mp.encode_varint(321) == b"\xc1\x02"  # the spec's own example


def test_varint_incomplete_and_too_long():
    assert mp.decode_varint(b"\x80\x80") is None
    assert mp.decode_varint(b"") is None
    raises(mp.MQTTProtocolError, mp.decode_varint, b"\xff\xff\xff\xff\x01")
    raises(mp.MQTTProtocolError, mp.encode_varint, mp.MAX_REMAINING + 1)
    raises(mp.MQTTProtocolError, mp.encode_varint, -1)


def test_connect_with_will_and_credentials_round_trips():
    will = ("tendril/x/status", b'{"state": "offline"}', 1, True)
    raw = mp.connect("node-1", 30, False, "user", b"secret", will)
    kind, flags, body, used = mp.split(raw)
    assert (kind, flags, used) == (mp.CONNECT, 0, len(raw))
    got = mp.decode_connect(body)
    assert got["client_id"] == "node-1"
    assert got["keepalive"] == 30
    assert got["clean_session"] is False
    assert got["will"] == will
    assert got["username"] == "user"
    assert got["password"] == b"secret"
    # Connect flags byte: user, password, will retain, will QoS 1, will flag = 0xEC
    assert body[7] == 0xEC


def test_connect_minimal_flags():
    raw = mp.connect("c", 0)
    got = mp.decode_connect(mp.split(raw)[2])
    assert got["clean_session"] is True
    assert got["will"] is None and got["username"] is None and got["password"] is None
    assert raw == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"
    raises(mp.MQTTProtocolError, mp.connect, "c", 10, True, None, b"pw")
    raises(mp.MQTTProtocolError, mp.connect, "c", 70000)


def test_connack():
    assert mp.decode_connack(mp.split(mp.connack(True, 0))[2]) == (True, 0)
    assert mp.decode_connack(b"\x00\x05") == (False, 5)
    raises(mp.MQTTProtocolError, mp.decode_connack, b"\x00")


def test_publish_qos0_and_qos1_with_dup_and_retain():
    raw = mp.publish("a/b", b"hello", 0, True)
    kind, flags, body, _ = mp.split(raw)
    assert kind == mp.PUBLISH and flags == 0x01
    assert mp.decode_publish(flags, body) == ("a/b", b"hello", 0, True, False, 0)
    raw = mp.publish("a/b", b"x" * 300, 1, False, True, 513)
    kind, flags, body, used = mp.split(raw)
    assert used == len(raw) and flags == 0x0A
    assert mp.decode_publish(flags, body) == ("a/b", b"x" * 300, 1, False, True, 513)


def test_publish_rejects_bad_arguments():
    raises(mp.MQTTProtocolError, mp.publish, "a/+", b"", 0)
    raises(mp.MQTTProtocolError, mp.publish, "", b"", 0)
    raises(mp.MQTTProtocolError, mp.publish, "a", b"", 2, False, False, 1)
    raises(mp.MQTTProtocolError, mp.publish, "a", b"", 1, False, False, 0)
    raises(mp.MQTTProtocolError, mp.publish, "a", b"", 0, False, True)
    raises(mp.MQTTProtocolError, mp.decode_publish, 0x06, b"\x00\x01a")  # QoS 3


def test_puback_subscribe_suback():
    assert mp.puback(0x1234) == b"\x40\x02\x12\x34"
    assert mp.decode_pid(mp.split(mp.puback(7))[2]) == 7
    raw = mp.subscribe(9, [("t/#", 1), ("u", 0)])
    kind, flags, body, _ = mp.split(raw)
    assert kind == mp.SUBSCRIBE and flags == 0x02  # reserved bits required by the spec
    assert mp.decode_subscribe(body) == (9, [("t/#", 1), ("u", 0)])
    assert mp.decode_suback(mp.split(mp.suback(9, [1, 0x80]))[2]) == (9, [1, 0x80])
    raises(mp.MQTTProtocolError, mp.subscribe, 1, [])
    raises(mp.MQTTProtocolError, mp.puback, 0)
    raises(mp.MQTTProtocolError, mp.decode_suback, b"\x00\x01")


def test_ping_and_disconnect():
    assert mp.pingreq() == b"\xc0\x00"
    assert mp.pingresp() == b"\xd0\x00"
    assert mp.disconnect() == b"\xe0\x00"
    assert mp.split(mp.pingresp()) == (mp.PINGRESP, 0, b"", 2)


def test_split_waits_for_whole_packet_and_handles_back_to_back():
    raw = mp.publish("t", b"abc", 1, False, False, 1) + mp.pingresp()
    assert mp.split(raw[:3]) is None
    assert mp.split(b"") is None
    first = mp.split(raw)
    assert first[0] == mp.PUBLISH
    assert mp.split(raw[first[3]:]) == (mp.PINGRESP, 0, b"", 2)


def test_truncated_or_trailing_bodies_are_errors():
    raises(mp.MQTTProtocolError, mp.decode_publish, 0x02, b"\x00\x05ab")
    raises(mp.MQTTProtocolError, mp.decode_pid, b"\x00\x01\x02")
    raises(mp.MQTTProtocolError, mp.decode_connect, b"\x00\x04MQTX\x04\x02\x00\x00\x00\x00")

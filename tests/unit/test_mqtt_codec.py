"""MQTT packets by hand: byte layouts from the 3.1.1 and 5.0 specifications, and a reader that
splits any stream, however it is chunked, into the packets that were written."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tendril_transactive.cloud.mqtt import codec
from tendril_transactive.cloud.mqtt.codec import V5, V311, MqttProtocolError, PacketReader

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01"),
     (268_435_455, b"\xff\xff\xff\x7f")],
)  # fmt: skip
def test_variable_byte_integers_match_the_specification_table(value: int, encoded: bytes) -> None:
    assert codec.encode_varint(value) == encoded


def test_connect_3_1_1_byte_for_byte() -> None:
    packet = codec.connect("ing", protocol=V311, keepalive_s=30, clean_start=False, username="u", password="p")
    assert packet == (
        b"\x10\x15" + b"\x00\x04MQTT" + b"\x04" + b"\xc0" + b"\x00\x1e" + b"\x00\x03ing" + b"\x00\x01u" + b"\x00\x01p"
    )


def test_connect_5_carries_session_expiry_and_receive_maximum() -> None:
    packet = codec.connect("c", protocol=V5, keepalive_s=10, clean_start=True, session_expiry_s=3600,
                           receive_maximum=500)  # fmt: skip
    props = b"\x11\x00\x00\x0e\x10" + b"\x21\x01\xf4"
    assert packet == b"\x10" + bytes([10 + 1 + len(props) + 3]) + b"\x00\x04MQTT\x05\x02\x00\x0a" + bytes(
        [len(props)]
    ) + props + b"\x00\x01c"


@pytest.mark.parametrize("bad", [{"protocol": 3}, {"keepalive_s": 70_000}, {"receive_maximum": 0}])
def test_connect_refuses_values_it_cannot_encode(bad: dict[str, int]) -> None:
    args: dict[str, int] = {"protocol": V5, "keepalive_s": 30, "receive_maximum": 10, **bad}
    with pytest.raises(ValueError):
        codec.connect("c", clean_start=True, **args)  # type: ignore[arg-type]


def test_subscribe_and_pubacks() -> None:
    shared = codec.subscribe(7, ["a/+", "$share/g/b"], 1, V311)
    assert shared == b"\x82\x15\x00\x07\x00\x03a/+\x01\x00\x0a$share/g/b\x01"
    assert codec.subscribe(7, ["a"], 1, V5) == b"\x82\x07\x00\x07\x00\x00\x01a\x01"
    assert codec.pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"


def test_unsubscribe_and_unsuback() -> None:
    # 3.1.1 §3.10: fixed header 0xA2, packet id, then each filter as a length-prefixed string.
    assert codec.unsubscribe(7, ["a/+", "$share/g/b"], V311) == b"\xa2\x13\x00\x07\x00\x03a/+\x00\x0a$share/g/b"
    assert codec.unsubscribe(7, ["a"], V5) == b"\xa2\x06\x00\x07\x00\x00\x01a"  # 5.0: empty properties
    assert codec.parse_unsuback(b"\x00\x07", V311) == codec.SubAck(7, ())  # 3.1.1 UNSUBACK has no codes
    assert codec.parse_unsuback(b"\x00\x07\x00\x00\x11", V5) == codec.SubAck(7, (0x00, 0x11))
    with pytest.raises(MqttProtocolError, match="UNSUBACK too short"):
        codec.parse_unsuback(b"\x00", V311)


def test_connack_and_suback_with_v5_properties() -> None:
    ack = codec.parse_connack(b"\x01\x00\x05\x21\x00\x14\x24\x01", V5)  # receive max 20, maximum QoS 1
    assert (ack.session_present, ack.code, ack.receive_maximum) == (True, 0, 20)
    assert codec.parse_connack(b"\x00\x05", V311).code == 5
    sub = codec.parse_suback(b"\x00\x09\x00\x01\x80", V5)
    assert (sub.packet_id, sub.codes) == (9, (1, 0x80))


_topics = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
_publishes = st.lists(
    st.tuples(_topics, st.binary(max_size=300), st.sampled_from([0, 1]), st.integers(1, 65535)), max_size=20
)


@settings(max_examples=300)
@given(_publishes, st.sampled_from([V311, V5]), st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_any_chunking_of_any_publishes_reads_back_the_same(
    publishes: list[tuple[str, bytes, int, int]], protocol: int, cuts: list[int]
) -> None:
    stream = b"".join(
        codec.publish(t, p, qos=q, packet_id=i, protocol=protocol) for t, p, q, i in publishes
    ) + codec.PINGREQ_PACKET.replace(b"\xc0", b"\xd0")  # a PINGRESP at the end
    reader = PacketReader(protocol)
    got: list[codec.RawPublish] = []
    others: list[codec.Other] = []
    pos, k = 0, 0
    while pos < len(stream):
        step = cuts[k % len(cuts)]
        received, other = reader.feed(stream[pos : pos + step])
        got += received
        others += other
        pos += step
        k += 1
    assert got == [(t, p, i if q else 0, q) for t, p, q, i in publishes]
    assert [o.kind for o in others] == [codec.PINGRESP]


def test_v5_publish_properties_are_skipped() -> None:
    body = b"\x00\x01t" + b"\x00\x05" + b"\x05" + b"\x01\x01\x23\x00\x01" + b"payload"  # format 1, alias 1
    packet = bytes([0x32, len(body)]) + body
    (got,), _ = PacketReader(V5).feed(packet)
    assert got == ("t", b"payload", 5, 1)


@pytest.mark.parametrize(
    "stream",
    [
        b"\x36\x05\x00\x01t\x00\x01",  # QoS 3
        b"\x30\x02\x00\x09",  # topic runs past the packet
        b"\x30\xff\xff\xff\xff\x01",  # remaining length longer than 4 bytes
    ],
)
def test_malformed_packets_are_protocol_errors(stream: bytes) -> None:
    with pytest.raises(MqttProtocolError):
        PacketReader(V311).feed(stream)

"""MQTT 3.1.1 / 5 packets: the few an ingesting subscriber needs, encoded and parsed by hand.

Why not a library: ingestion acknowledges a message only once it is durable, in batches, and
parses thousands of PUBLISH packets per read. paho (a callback and a lock per message, ~20 us)
or aiomqtt (~40 us, docs/measured.md) would cost more than the rest of the pipeline together.

Only what a subscriber needs: CONNECT/CONNACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK (retiring
a worker), PUBLISH (QoS 0/1, both ways), PUBACK, PINGREQ/PINGRESP, DISCONNECT. Properties received
from a v5 broker are skipped, except in CONNACK where the broker's Receive Maximum bounds our own
publishes.
"""

from __future__ import annotations

from dataclasses import dataclass

V311 = 4
V5 = 5

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

_PROP_SESSION_EXPIRY = 0x11
_PROP_RECEIVE_MAXIMUM = 0x21
MAX_REMAINING_LENGTH = 268_435_455

# v5 property id -> how its value is laid out, so unknown properties can be skipped.
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_LAYOUT = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip

# A PUBACK is 4 fixed bytes per packet id; building them once makes acking a batch one join.
_PUBACKS = [b"\x40\x02" + pid.to_bytes(2, "big") for pid in range(65536)]


class MqttProtocolError(ValueError):
    """The peer sent something this client cannot read; the connection must be dropped."""


# ------------------------------------------------------------------ encoding


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 65535:
        raise ValueError("MQTT strings are at most 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_varint(len(body)) + body


def connect(
    client_id: str,
    *,
    protocol: int,
    keepalive_s: int,
    clean_start: bool,
    username: str | None = None,
    password: str | None = None,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
) -> bytes:
    if protocol not in (V311, V5):
        raise ValueError(f"unsupported MQTT protocol level {protocol}")
    if not 0 <= keepalive_s <= 65535:
        raise ValueError(f"keepalive must be 0..65535 s, got {keepalive_s}")
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = _string("MQTT") + bytes([protocol, flags]) + keepalive_s.to_bytes(2, "big")
    if protocol == V5:
        if not 1 <= receive_maximum <= 65535:
            raise ValueError(f"receive maximum must be 1..65535, got {receive_maximum}")
        props = bytes([_PROP_SESSION_EXPIRY]) + session_expiry_s.to_bytes(4, "big")
        props += bytes([_PROP_RECEIVE_MAXIMUM]) + receive_maximum.to_bytes(2, "big")
        body += encode_varint(len(props)) + props
    body += _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)  # binary data has the same length-prefixed layout
    return _packet(CONNECT << 4, body)


def subscribe(packet_id: int, filters: list[str], qos: int, protocol: int) -> bytes:
    body = packet_id.to_bytes(2, "big")
    if protocol == V5:
        body += b"\x00"
    for topic_filter in filters:
        body += _string(topic_filter) + bytes([qos])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def unsubscribe(packet_id: int, filters: list[str], protocol: int) -> bytes:
    body = packet_id.to_bytes(2, "big")
    if protocol == V5:
        body += b"\x00"
    for topic_filter in filters:
        body += _string(topic_filter)
    return _packet((UNSUBSCRIBE << 4) | 0x02, body)


def publish(topic: str, payload: bytes, *, qos: int, packet_id: int, protocol: int, retain: bool = False) -> bytes:
    body = _string(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    if protocol == V5:
        body += b"\x00"
    return _packet((PUBLISH << 4) | (qos << 1) | int(retain), body + payload)


def pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs for received QoS 1 messages, in the order given (MQTT wants receive order)."""
    table = _PUBACKS
    return b"".join([table[pid] for pid in packet_ids])


# ------------------------------------------------------------------ decoding


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    code: int  # 0 accepted; v3.1.1 return code or v5 reason code otherwise
    receive_maximum: int  # how many of our QoS 1 publishes the broker takes unacknowledged


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    codes: tuple[int, ...]  # granted QoS per filter, >= 0x80 on failure


@dataclass(frozen=True, slots=True)
class Other:
    """Any other complete packet: its type, flags and body."""

    kind: int
    flags: int
    body: bytes


RawPublish = tuple[str, bytes, int, int]  # topic, payload, packet id (0 for QoS 0), qos


def _varint_at(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), None if incomplete before `end`."""
    value, shift = 0, 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MqttProtocolError("variable byte integer longer than 4 bytes")
    return None


def _properties(body: bytes, pos: int) -> tuple[dict[int, int], int]:
    """Parse a v5 property block at `pos`; returns the integer-valued ones and the end."""
    got = _varint_at(body, pos, len(body))
    if got is None:
        raise MqttProtocolError("truncated properties")
    length, pos = got
    end = pos + length
    if end > len(body):
        raise MqttProtocolError("properties run past the packet")
    values: dict[int, int] = {}
    while pos < end:
        prop = body[pos]
        pos += 1
        layout = _PROPERTY_LAYOUT.get(prop)
        if layout is None:
            raise MqttProtocolError(f"unknown property 0x{prop:02x}")
        if layout in (_BYTE, _TWO, _FOUR):
            size = {_BYTE: 1, _TWO: 2, _FOUR: 4}[layout]
            values[prop] = int.from_bytes(body[pos : pos + size], "big")
            pos += size
        elif layout == _VARINT:
            got = _varint_at(body, pos, end)
            if got is None:
                raise MqttProtocolError("truncated property")
            values[prop], pos = got
        else:
            for _ in range(2 if layout == _PAIR else 1):
                pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    if pos != end:
        raise MqttProtocolError("properties do not add up")
    return values, end


def parse_connack(body: bytes, protocol: int) -> ConnAck:
    if len(body) < 2:
        raise MqttProtocolError("CONNACK too short")
    receive_maximum = 65535
    if protocol == V5 and len(body) > 2:
        props, _ = _properties(body, 2)
        receive_maximum = props.get(_PROP_RECEIVE_MAXIMUM, 65535)
    return ConnAck(bool(body[0] & 1), body[1], receive_maximum)


def parse_suback(body: bytes, protocol: int) -> SubAck:
    return _parse_acks(body, protocol, "SUBACK", 3)


def parse_unsuback(body: bytes, protocol: int) -> SubAck:
    """UNSUBACK: v5 carries a reason code per filter (>= 0x80 on failure); v3.1.1 none."""
    return _parse_acks(body, protocol, "UNSUBACK", 2)


def _parse_acks(body: bytes, protocol: int, what: str, min_len: int) -> SubAck:
    if len(body) < min_len:
        raise MqttProtocolError(f"{what} too short")
    pos = 2
    if protocol == V5 and len(body) > 2:
        _, pos = _properties(body, 2)
    return SubAck(int.from_bytes(body[:2], "big"), tuple(body[pos:]))


class PacketReader:
    """Splits a byte stream into packets. PUBLISH packets come out as tuples, in bulk,
    because they are the hot path; everything else as `Other`."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[list[RawPublish], list[Other]]:
        buf = self._buf
        buf += data
        publishes: list[RawPublish] = []
        others: list[Other] = []
        pos, size, v5 = 0, len(buf), self.protocol == V5
        while pos + 2 <= size:
            first = buf[pos]
            got = _varint_at(buf, pos + 1, size)
            if got is None:
                break
            length, start = got
            end = start + length
            if end > size:
                break
            kind = first >> 4
            if kind == PUBLISH:
                publishes.append(self._publish(buf, first, start, end, v5))
            else:
                others.append(Other(kind, first & 0x0F, bytes(buf[start:end])))
            pos = end
        del buf[:pos]
        return publishes, others

    @staticmethod
    def _publish(buf: bytearray, first: int, start: int, end: int, v5: bool) -> RawPublish:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise MqttProtocolError("PUBLISH with QoS 3")
        pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
        if pos > end:
            raise MqttProtocolError("PUBLISH topic runs past the packet")
        try:
            topic = buf[start + 2 : pos].decode()
        except UnicodeDecodeError:
            # Brokers check topic encoding; if one did not, pass the damage on to validation.
            topic = buf[start + 2 : pos].decode(errors="replace")
        packet_id = 0
        if qos:
            packet_id = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        if v5:
            got = _varint_at(buf, pos, end)
            if got is None:
                raise MqttProtocolError("truncated PUBLISH properties")
            plen, pos = got
            pos += plen
        if pos > end:
            raise MqttProtocolError("PUBLISH header runs past the packet")
        return topic, bytes(buf[pos:end]), packet_id, qos


def packet_id_of(body: bytes) -> int:
    if len(body) < 2:
        raise MqttProtocolError("packet too short for a packet id")
    return int.from_bytes(body[:2], "big")


# MQTT 3.1.1 packet encoding and decoding, pure functions over bytes (no I/O).
#
# Encoders return one complete packet as bytes so the client can send each packet in
# a single write: split writes pay Nagle + delayed-ACK (44 ms per QoS 1 round trip).
# Decoders take the fixed-header flags and the body (everything after the remaining
# length) and raise MQTTProtocolError on anything malformed.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

MAX_REMAINING = 268435455  # 4-byte varint limit in MQTT 3.1.1
SUBACK_FAILURE = 0x80

CONNACK_REASONS = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MQTTProtocolError(ValueError):
    pass


# ------------------------------------------------------------------ primitives


def encode_varint(n):
    # type: (int) -> bytes
    if n < 0 or n > MAX_REMAINING:
        raise MQTTProtocolError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        digit = n % 128
        n //= 128
        if n:
            digit |= 0x80
        out.append(digit)
        if not n:
            return bytes(out)


def decode_varint(buf, pos=0):
    # type: (bytes, int) -> tuple[int, int] | None
    """(value, position after it), or None if `buf` ends before the varint does."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MQTTProtocolError("remaining length longer than 4 bytes")


def _u16(n):
    # type: (int) -> bytes
    return bytes(((n >> 8) & 0xFF, n & 0xFF))


def _str(value):
    # type: (str | bytes) -> bytes
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > 65535:
        raise MQTTProtocolError("string longer than 65535 bytes")
    return _u16(len(raw)) + raw


def _packet(first, body):
    # type: (int, bytes) -> bytes
    return bytes((first,)) + encode_varint(len(body)) + body


def _check_pid(pid):
    # type: (int) -> None
    if not 0 < pid < 65536:
        raise MQTTProtocolError("packet id out of range: %d" % pid)


def _check_qos(qos):
    # type: (int) -> None
    if qos not in (0, 1):
        raise MQTTProtocolError("only QoS 0 and 1 are supported, got %r" % (qos,))


class _Reader:
    """Cursor over a packet body; running past the end is a protocol error."""

    def __init__(self, body):
        # type: (bytes) -> None
        self.body = body
        self.pos = 0

    def take(self, n):
        # type: (int) -> bytes
        if self.pos + n > len(self.body):
            raise MQTTProtocolError("packet truncated")
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def u8(self):
        # type: () -> int
        return self.take(1)[0]

    def u16(self):
        # type: () -> int
        raw = self.take(2)
        return (raw[0] << 8) | raw[1]

    def blob(self):
        # type: () -> bytes
        return self.take(self.u16())

    def text(self):
        # type: () -> str
        try:
            return self.blob().decode()
        except UnicodeError:
            raise MQTTProtocolError("string is not UTF-8")

    def rest(self):
        # type: () -> bytes
        out = self.body[self.pos:]
        self.pos = len(self.body)
        return bytes(out)

    def done(self):
        # type: () -> None
        if self.pos != len(self.body):
            raise MQTTProtocolError("trailing bytes in packet")


# --------------------------------------------------------------------- encoders


def connect(client_id, keepalive, clean_session=True, username=None, password=None, will=None):
    # type: (str, int, bool, str | None, bytes | str | None, tuple[str, bytes, int, bool] | None) -> bytes
    """CONNECT; `will` is (topic, payload, qos, retain)."""
    if not 0 <= keepalive <= 65535:
        raise MQTTProtocolError("keepalive out of range")
    if password is not None and username is None:
        raise MQTTProtocolError("MQTT 3.1.1 needs a user name to send a password")
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        _check_qos(qos)
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    body = _str("MQTT") + bytes((4, flags)) + _u16(keepalive) + payload
    return _packet(CONNECT << 4, body)


def connack(session_present, return_code):
    # type: (bool, int) -> bytes
    return _packet(CONNACK << 4, bytes((1 if session_present else 0, return_code)))


def publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    # type: (str, bytes, int, bool, bool, int) -> bytes
    _check_qos(qos)
    if not topic or "+" in topic or "#" in topic:
        raise MQTTProtocolError("bad publish topic %r" % (topic,))
    first = (PUBLISH << 4) | (qos << 1) | (1 if retain else 0)
    body = _str(topic)
    if qos:
        _check_pid(pid)
        first |= 0x08 if dup else 0
        body += _u16(pid)
    elif dup:
        raise MQTTProtocolError("dup is only meaningful for QoS > 0")
    return _packet(first, body + bytes(payload))


def puback(pid):
    # type: (int) -> bytes
    _check_pid(pid)
    return _packet(PUBACK << 4, _u16(pid))


def subscribe(pid, topics):
    # type: (int, list[tuple[str, int]]) -> bytes
    _check_pid(pid)
    if not topics:
        raise MQTTProtocolError("SUBSCRIBE needs at least one topic filter")
    body = _u16(pid)
    for topic, qos in topics:
        _check_qos(qos)
        body += _str(topic) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def suback(pid, granted):
    # type: (int, list[int]) -> bytes
    _check_pid(pid)
    return _packet(SUBACK << 4, _u16(pid) + bytes(granted))


def pingreq():
    # type: () -> bytes
    return bytes((PINGREQ << 4, 0))


def pingresp():
    # type: () -> bytes
    return bytes((PINGRESP << 4, 0))


def disconnect():
    # type: () -> bytes
    return bytes((DISCONNECT << 4, 0))


# --------------------------------------------------------------------- decoders


def split(buf):
    # type: (bytes) -> tuple[int, int, bytes, int] | None
    """(packet type, flags, body, bytes consumed) of the first packet in `buf`, or None."""
    if not buf:
        return None
    found = decode_varint(buf, 1)
    if found is None:
        return None
    length, start = found
    if start + length > len(buf):
        return None
    return buf[0] >> 4, buf[0] & 0x0F, bytes(buf[start:start + length]), start + length


def decode_connect(body):
    # type: (bytes) -> dict[str, Any]
    r = _Reader(body)
    if r.text() != "MQTT" or r.u8() != 4:
        raise MQTTProtocolError("not an MQTT 3.1.1 CONNECT")
    flags = r.u8()
    if flags & 0x01:
        raise MQTTProtocolError("reserved CONNECT flag set")
    out = {"keepalive": r.u16(), "clean_session": bool(flags & 0x02), "client_id": r.text(),
           "will": None, "username": None, "password": None}  # type: dict[str, Any]
    if flags & 0x04:
        topic = r.text()
        out["will"] = (topic, r.blob(), (flags >> 3) & 0x03, bool(flags & 0x20))
    if flags & 0x80:
        out["username"] = r.text()
    if flags & 0x40:
        out["password"] = r.blob()
    r.done()
    return out


def decode_connack(body):
    # type: (bytes) -> tuple[bool, int]
    """(session present, return code)."""
    r = _Reader(body)
    session_present = bool(r.u8() & 0x01)
    code = r.u8()
    r.done()
    return session_present, code


def decode_publish(flags, body):
    # type: (int, bytes) -> tuple[str, bytes, int, bool, bool, int]
    """(topic, payload, qos, retain, dup, packet id; 0 for QoS 0)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MQTTProtocolError("PUBLISH with QoS 3")
    r = _Reader(body)
    topic = r.text()
    pid = r.u16() if qos else 0
    if qos:
        _check_pid(pid)
    return topic, r.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), pid


def decode_pid(body):
    # type: (bytes) -> int
    """Packet id of a PUBACK (or any packet whose whole body is one)."""
    r = _Reader(body)
    pid = r.u16()
    r.done()
    return pid


def decode_subscribe(body):
    # type: (bytes) -> tuple[int, list[tuple[str, int]]]
    r = _Reader(body)
    pid = r.u16()
    topics = []
    while r.pos < len(body):
        topic = r.text()
        topics.append((topic, r.u8()))
    if not topics:
        raise MQTTProtocolError("SUBSCRIBE without topic filters")
    return pid, topics


def decode_suback(body):
    # type: (bytes) -> tuple[int, list[int]]
    """(packet id, granted QoS per filter; 0x80 = refused)."""
    r = _Reader(body)
    pid = r.u16()
    granted = list(r.rest())
    if not granted:
        raise MQTTProtocolError("SUBACK without return codes")
    return pid, granted

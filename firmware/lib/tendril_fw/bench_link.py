# Bench link: the framed serial protocol between a HIL bench and a device in bench mode.
#
# One frame per line, so a human can read the link with `cat` and a lost byte costs
# at most one frame:
#
#     <seq> SP <payload> SP <crc> LF
#
#   seq      decimal, 0..SEQ_MOD-1, +1 per frame sent by that side (wraps): gaps show
#            frames lost on the way, a step back shows the peer restarted
#   payload  one JSON object (json.dumps never emits a raw LF); never contains LF
#   crc      CRC-32 (binascii.crc32) of "<seq> SP <payload>", 8 lower-case hex digits
#
# A frame that fails any check (no LF within MAX_FRAME bytes, bad seq, bad CRC, bad
# JSON) is dropped and counted by reason, never guessed at: a corrupt "relay on" must
# not become some other instruction. Pure codec: no I/O, no clock; MicroPython and
# CPython alike.

import binascii
import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FRAME = 1024  # bytes per frame including LF; longer input is an overrun
SEQ_MOD = 1 << 24

# Operations sent by the bench (requests carry "op"; replies carry "re": the request seq)
OP_PING = "ping"  # -> {"re", "ok"}
OP_SET = "set"  # inputs: power_w, pulses, temp_c, ev_plugged, button (null = released)
OP_GET = "get"  # -> relay output, inputs, counters, device clock, boot reason
OP_NET = "net"  # {"up": false|true}: cut or restore the device's network
OP_HANG = "hang"  # {"s": seconds}: block the device's event loop (watchdog tests)
# Events sent by the device unprompted (carry "ev")
EV_BOOT = "boot"  # the board came up: device, fw, boot reason
EV_RELAY = "relay"  # the relay output changed: relay, t (device clock)

COUNTERS = ("frames", "bad_crc", "malformed", "overrun", "gaps", "restarts")


class LinkError(ValueError):
    pass


def _crc(data):
    # type: (bytes) -> str
    return "%08x" % (binascii.crc32(data) & 0xFFFFFFFF)


def encode_frame(seq, payload):
    # type: (int, bytes) -> bytes
    """One frame for `payload` (bytes without LF) numbered `seq`."""
    if not 0 <= seq < SEQ_MOD:
        raise LinkError("seq out of range: %d" % seq)
    if b"\n" in payload or b"\r" in payload:
        raise LinkError("payload must not contain CR or LF")
    head = ("%d " % seq).encode() + payload
    frame = head + (" " + _crc(head) + "\n").encode()
    if len(frame) > MAX_FRAME:
        raise LinkError("frame of %d bytes exceeds %d" % (len(frame), MAX_FRAME))
    return frame


def _is_digits(raw):
    # type: (bytes) -> bool
    if not raw or len(raw) > 8:
        return False
    for b in raw:
        if not 48 <= b <= 57:
            return False
    return True


class FrameDecoder:
    """Split a byte stream into (seq, payload) frames; count and drop everything else."""

    def __init__(self, max_frame=MAX_FRAME):
        # type: (int) -> None
        self.max_frame = max_frame
        self.buf = b""
        self.skipping = False  # inside an overrun: drop bytes up to the next LF
        self.last_seq = None  # type: int | None
        self.counts = {}  # type: dict[str, int]
        for name in COUNTERS:
            self.counts[name] = 0

    def feed(self, data):
        # type: (bytes) -> list[tuple[int, bytes]]
        """Frames completed by `data`, in order; partial input waits for the next feed."""
        out = []  # type: list[tuple[int, bytes]]
        self.buf += data
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) >= self.max_frame:
                    self.buf = b""
                    if not self.skipping:
                        self.counts["overrun"] += 1
                    self.skipping = True
                return out
            line = self.buf[:end]
            self.buf = self.buf[end + 1:]
            if self.skipping or end + 1 > self.max_frame:
                if not self.skipping:
                    self.counts["overrun"] += 1
                self.skipping = False
                continue
            frame = self._check(line)
            if frame is not None:
                out.append(frame)

    def discard_partial(self):
        # type: () -> int
        """Drop bytes of an unfinished frame (e.g. the peer restarted); returns how many."""
        n = len(self.buf)
        if n or self.skipping:
            self.counts["malformed"] += 1
        self.buf = b""
        self.skipping = False
        return n

    def _check(self, line):
        # type: (bytes) -> tuple[int, bytes] | None
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return None  # an empty line carries nothing: not an error
        first = line.find(b" ")
        last = line.rfind(b" ")
        if first <= 0 or last <= first or not _is_digits(line[:first]):
            self.counts["malformed"] += 1
            return None
        crc = line[last + 1:]
        if len(crc) != 8 or crc.decode() != _crc(line[:last]):
            self.counts["bad_crc"] += 1
            return None
        seq = int(line[:first])
        self._track(seq)
        self.counts["frames"] += 1
        return seq, line[first + 1:last]

    def _track(self, seq):
        # type: (int) -> None
        last = self.last_seq
        self.last_seq = seq
        if last is None:
            return
        ahead = (seq - last) % SEQ_MOD
        if ahead == 0 or ahead > SEQ_MOD // 2:
            self.counts["restarts"] += 1  # the peer numbered again from scratch
        elif ahead > 1:
            self.counts["gaps"] += ahead - 1


class Endpoint:
    """One side of the link: numbers outgoing messages, decodes incoming ones (JSON objects)."""

    def __init__(self, max_frame=MAX_FRAME):
        # type: (int) -> None
        self.seq = 0
        self.decoder = FrameDecoder(max_frame)

    def encode(self, msg):
        # type: (dict[str, Any]) -> tuple[int, bytes]
        """(seq, frame) for one message."""
        seq = self.seq
        frame = encode_frame(seq, json.dumps(msg).encode())
        self.seq = (seq + 1) % SEQ_MOD
        return seq, frame

    def feed(self, data):
        # type: (bytes) -> list[tuple[int, dict[str, Any]]]
        """Messages completed by `data`; a frame whose payload is not a JSON object is counted."""
        out = []  # type: list[tuple[int, dict[str, Any]]]
        for seq, payload in self.decoder.feed(data):
            try:
                msg = json.loads(payload)
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                self.decoder.counts["malformed"] += 1
                continue
            out.append((seq, msg))
        return out

    def counters(self):
        # type: () -> dict[str, int]
        return dict(self.decoder.counts)

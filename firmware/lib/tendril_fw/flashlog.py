# Append-only record log on the flash filesystem (LittleFS on ESP32; any directory on
# the unix port), the second tier of the telemetry outbox.
#
# Records live in numbered segment files q00000001.log, q00000002.log, ...; each record
# is framed as  A5 | len (u16 LE) | crc32 (u32 LE) | payload.  Appends only ever go to
# the newest segment, and a segment whose records were all delivered is deleted, so
# nothing is ever rewritten in place. After a power cut the scan at boot keeps every
# record up to the first torn or corrupt one in each segment and never appends after
# damage (it starts a new segment), so earlier records cannot be corrupted by later
# writes. Delivery position inside the head segment is not persisted: after a reboot
# the head segment's already-delivered records are sent again (at-least-once; the
# cloud de-duplicates by seq), at most `seg_records` of them.

import binascii
import os
import struct

MAGIC = 0xA5
HEADER = 7
MAX_RECORD = 4096
PREFIX = "q"
SUFFIX = ".log"


def frame(payload):
    # type: (bytes) -> bytes
    if len(payload) > MAX_RECORD:
        raise ValueError("record too large: %d bytes" % len(payload))
    return struct.pack("<BHI", MAGIC, len(payload), binascii.crc32(payload) & 0xFFFFFFFF) + payload


def read_record(f):
    # type: (object) -> bytes | None
    """The next intact record from file `f`, or None at the end or at damage."""
    header = f.read(HEADER)  # type: ignore[attr-defined]
    if not header or len(header) < HEADER:
        return None
    magic, length, crc = struct.unpack("<BHI", header)
    if magic != MAGIC or length > MAX_RECORD:
        return None
    payload = f.read(length)  # type: ignore[attr-defined]
    if payload is None or len(payload) != length or binascii.crc32(payload) & 0xFFFFFFFF != crc:
        return None
    return bytes(payload)


def _exists(path):
    # type: (str) -> bool
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(path):
    # type: (str) -> None
    """mkdir -p (MicroPython's os has no makedirs)."""
    built = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part:
            continue
        built = built + part
        if not _exists(built):
            os.mkdir(built)
        built += "/"


class FlashLog:
    def __init__(self, directory, seg_records=64):
        # type: (str, int) -> None
        self.dir = directory
        self.seg_records = seg_records
        self.damaged = 0  # segments found with a torn or corrupt tail at boot
        makedirs(directory)
        self._segs = []  # type: list[list[int]]  # [number, record count], oldest first
        self._tail_open = False  # may the newest segment take more records?
        self._head_off = 0  # byte offset of the next undelivered record in the head segment
        self._head_idx = 0
        self._peeked = None  # type: bytes | None
        self._scan()

    def _path(self, number):
        # type: (int) -> str
        return "%s/%s%08d%s" % (self.dir, PREFIX, number, SUFFIX)

    def _scan(self):
        # type: () -> None
        numbers = []
        for name in os.listdir(self.dir):
            if name.startswith(PREFIX) and name.endswith(SUFFIX):
                try:
                    numbers.append(int(name[len(PREFIX):-len(SUFFIX)]))
                except ValueError:
                    pass
        numbers.sort()
        clean = False
        for number in numbers:
            count, clean = self._count(self._path(number))
            if not clean:
                self.damaged += 1
            if count:
                self._segs.append([number, count])
            else:
                os.remove(self._path(number))
        self._tail_open = bool(self._segs) and clean and numbers[-1] == self._segs[-1][0]
        self._next_number = numbers[-1] + 1 if numbers else 1

    def _count(self, path):
        # type: (str) -> tuple[int, bool]
        """(intact records, True if the file ends exactly after the last of them)."""
        count = intact = 0
        with open(path, "rb") as f:
            while True:
                record = read_record(f)
                if record is None:
                    break
                count += 1
                intact += HEADER + len(record)
        return count, os.stat(path)[6] == intact

    def __len__(self):
        # type: () -> int
        return sum(seg[1] for seg in self._segs) - self._head_idx

    def append_many(self, payloads):
        # type: (list[bytes]) -> None
        """Append records in one file session; raises OSError (flash full, I/O) having kept earlier ones."""
        if not payloads:
            return
        if not self._tail_open or self._segs[-1][1] >= self.seg_records:
            self._segs.append([self._next_number, 0])
            self._next_number += 1
            self._tail_open = True
        seg = self._segs[-1]
        try:
            with open(self._path(seg[0]), "ab") as f:
                # record by record: no batch-sized buffer on a small heap; the file is
                # committed on close (LittleFS), and a torn tail is cut off at boot
                for payload in payloads:
                    f.write(frame(payload))
        except OSError:
            # The segment may now hold part of the batch: never append after it again.
            self._tail_open = False
            if not seg[1]:
                self._segs.pop()
                try:
                    os.remove(self._path(seg[0]))
                except OSError:
                    pass
            raise
        seg[1] += len(payloads)

    def peek(self):
        # type: () -> bytes | None
        if self._peeked is None and self._segs:
            try:
                with open(self._path(self._segs[0][0]), "rb") as f:
                    f.seek(self._head_off)
                    self._peeked = read_record(f)
            except OSError:
                self._peeked = None
            if self._peeked is None:  # vanished or damaged under us: skip the segment
                self._drop_head_segment()
                return self.peek()
        return self._peeked

    def pop(self):
        # type: () -> None
        """Forget the oldest record (delivered or dropped)."""
        if self.peek() is None:
            return
        self._head_off += HEADER + len(self._peeked or b"")
        self._head_idx += 1
        self._peeked = None
        if self._head_idx >= self._segs[0][1]:
            self._drop_head_segment()

    def _drop_head_segment(self):
        # type: () -> None
        number = self._segs.pop(0)[0]
        if not self._segs:
            self._tail_open = False
        self._head_off = 0
        self._head_idx = 0
        self._peeked = None
        try:
            os.remove(self._path(number))
        except OSError:
            pass

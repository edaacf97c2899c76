"""Per-device duplicate detection by sequence number, over a window that survives restarts.

A message's identity is its stream (the topic: site, device, kind) plus `seq` plus its own
timestamp. The timestamp is part of it because a device that reboots starts `seq` again from 0:
(seq 5, 10:00) and (seq 5, 14:00) are two readings, and dropping the second would lose data.
A QoS 1 redelivery or a replayed backlog repeats both, so it is caught.

Each stream keeps the last `size` sequence numbers in a ring (slot = seq % size) holding
(seq, timestamp). What is older than the ring is let through: the store's overwrite of an
identical series + timestamp (InfluxDB) is the second line of defence.

Two states, because a message is only "seen" for good once it is durable:
- pending: in a batch not yet in the store or the spool. A duplicate arriving meanwhile is
  dropped (its acknowledgement waits behind the original's batch).
- committed: durable. Only these are saved, so a crash can never leave a saved "seen" for a
  message the store does not have (the broker redelivers it, and it is accepted again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from array import array
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("tendril.ingest")

DEFAULT_WINDOW = 256
_MAGIC = b"TDEDUP1\n"
_EMPTY = -1

Key = tuple[str, int, int]  # stream (topic), seq, timestamp in ns


class _Ring:
    __slots__ = ("seqs", "stamps")

    def __init__(self, size: int) -> None:
        self.seqs = array("q", [_EMPTY]) * size
        self.stamps = array("q", [0]) * size


class DedupWindow:
    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"dedup window must hold at least 1 message, got {size}")
        self.size = size
        self._rings: dict[str, _Ring] = {}
        self._pending: set[Key] = set()
        self.dirty = False

    def __len__(self) -> int:
        return len(self._rings)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def check_and_hold(self, stream: str, seq: int, stamp_ns: int) -> bool:
        """True if (stream, seq, stamp) was seen; otherwise hold it as pending and return False."""
        key = (stream, seq, stamp_ns)
        if key in self._pending:
            return True
        ring = self._rings.get(stream)
        if ring is not None:
            slot = seq % self.size
            if ring.seqs[slot] == seq and ring.stamps[slot] == stamp_ns:
                return True
        self._pending.add(key)
        return False

    def commit(self, keys: Iterable[Key]) -> None:
        """These messages are durable now: remember them for good."""
        size, rings, pending = self.size, self._rings, self._pending
        for key in keys:
            pending.discard(key)
            stream, seq, stamp = key
            ring = rings.get(stream)
            if ring is None:
                ring = rings[stream] = _Ring(size)
            slot = seq % size
            old_seq, old_stamp = ring.seqs[slot], ring.stamps[slot]
            # Keep the newer reading in a contested slot: duplicates arrive close behind originals.
            if old_seq == _EMPTY or stamp > old_stamp or (stamp == old_stamp and seq > old_seq):
                ring.seqs[slot] = seq
                ring.stamps[slot] = stamp
            self.dirty = True

    def release(self, keys: Iterable[Key]) -> None:
        """Forget pending messages that will not be committed here (their connection is gone
        and the broker will deliver them again)."""
        for key in keys:
            self._pending.discard(key)

    # ------------------------------------------------------------ persistence

    def snapshot(self) -> bytes:
        """The committed window as bytes (pending messages are never in it)."""
        parts = [_MAGIC, struct.pack("<II", self.size, len(self._rings))]
        for stream, ring in self._rings.items():
            raw = stream.encode()
            parts.append(struct.pack("<H", len(raw)))
            parts.append(raw)
            parts.append(ring.seqs.tobytes())
            parts.append(ring.stamps.tobytes())
        self.dirty = False
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        """Load a snapshot (possibly taken with another window size) into this window."""
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
            raise ValueError("not a dedup snapshot")
        pos = len(_MAGIC)
        size, count = struct.unpack_from("<II", data, pos)
        pos += 8
        width = 8 * size
        keys: list[Key] = []
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, pos)
            pos += 2
            stream = data[pos : pos + length].decode()
            pos += length
            if pos + 2 * width > len(data):
                raise ValueError("dedup snapshot is truncated")
            seqs, stamps = array("q"), array("q")
            seqs.frombytes(data[pos : pos + width])
            stamps.frombytes(data[pos + width : pos + 2 * width])
            pos += 2 * width
            keys.extend((stream, seq, stamp) for seq, stamp in zip(seqs, stamps, strict=True) if seq != _EMPTY)
        if pos != len(data):
            raise ValueError("dedup snapshot has trailing bytes")
        self.commit(keys)


def save(window: DedupWindow, path: Path) -> None:
    """Atomically replace `path` with the window's committed state (write, fsync, rename)."""
    data = window.snapshot()
    write_atomic(path, data)


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not fsync:
        return
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load(window: DedupWindow, path: Path) -> None:
    """Restore from `path` if it exists; an unreadable file is logged and skipped (only the
    first line of defence is lost, and only for messages already committed)."""
    if not path.exists():
        return
    try:
        window.restore(path.read_bytes())
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        log.error("dedup state %s is unreadable (%s); starting with an empty window", path, exc)
        return
    window.dirty = False
    log.info("dedup window restored: %d streams from %s", len(window), path)

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
import io
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


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a mix."""
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


# ------------------------------------------------------------------ persistence
#
# A snapshot (dedup.bin) plus journals (dedup-<n>.log) of the keys committed since. Every
# committed batch appends one journal record, so saving costs in proportion to messages, not
# to devices x window. When a journal outgrows the snapshot, a new journal is started and a
# fresh snapshot written; older journals are deleted once it is in place. Loading applies the
# snapshot and every journal left: commits are idempotent and order-independent, so a crash at
# any point of that dance loses nothing. Journals are not fsync'ed: losing their tail to a
# power cut forgets keys (a duplicate may slip to the store's overwrite), never data.

SNAPSHOT_FILE = "dedup.bin"
_TOPIC, _KEYS = b"T", b"K"
MIN_COMPACT_BYTES = 16 * 1024 * 1024


class DedupJournal:
    def __init__(self, window: DedupWindow, directory: Path, *, min_compact_bytes: int = MIN_COMPACT_BYTES) -> None:
        self.window = window
        self.directory = directory
        self.min_compact_bytes = min_compact_bytes
        self._file: io.BufferedWriter | None = None
        self._number = 0
        self._ids: dict[str, int] = {}
        self._bytes = 0
        self._snapshot_bytes = 0

    def _journals(self) -> list[int]:
        return sorted(int(p.stem.split("-", 1)[1]) for p in self.directory.glob("dedup-*.log")
                      if p.stem.split("-", 1)[1].isdigit())

    def _journal_path(self, number: int) -> Path:
        return self.directory / f"dedup-{number}.log"

    def load(self) -> None:
        """Restore the window from disk; unreadable parts are logged and skipped (only the
        first line of defence is lost, and only for messages already committed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot = self.directory / SNAPSHOT_FILE
        if snapshot.exists():
            try:
                self.window.restore(snapshot.read_bytes())
                self._snapshot_bytes = snapshot.stat().st_size
            except (ValueError, UnicodeDecodeError, struct.error) as exc:
                log.error("dedup snapshot %s is unreadable (%s); ignoring it", snapshot, exc)
        numbers = self._journals()
        for number in numbers:
            self._replay(self._journal_path(number))
        self._number = numbers[-1] + 1 if numbers else 1
        self.window.dirty = False
        if len(self.window):
            log.info("dedup window restored: %d streams from %s", len(self.window), self.directory)

    def _replay(self, path: Path) -> None:
        data = path.read_bytes()
        topics: list[str] = []
        pos = 0
        try:
            while pos < len(data):
                tag = data[pos : pos + 1]
                if tag == _TOPIC:
                    (length,) = struct.unpack_from("<H", data, pos + 1)
                    end = pos + 3 + length
                    if end > len(data):
                        break
                    topics.append(data[pos + 3 : end].decode())
                    pos = end
                elif tag == _KEYS:
                    (count,) = struct.unpack_from("<I", data, pos + 1)
                    end = pos + 5 + 20 * count
                    if end > len(data):
                        break  # torn by a crash: that batch's keys are simply not remembered
                    ids, seqs, stamps = array("I"), array("q"), array("q")
                    ids.frombytes(data[pos + 5 : pos + 5 + 4 * count])
                    seqs.frombytes(data[pos + 5 + 4 * count : pos + 5 + 12 * count])
                    stamps.frombytes(data[pos + 5 + 12 * count : end])
                    self.window.commit((topics[i], q, t) for i, q, t in zip(ids, seqs, stamps, strict=True))
                    pos = end
                else:
                    raise ValueError(f"unknown record at byte {pos}")
        except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
            log.error("dedup journal %s is damaged at byte %d (%s); ignoring the rest", path, pos, exc)

    def record(self, keys: list[Key]) -> None:
        """Append committed keys (after `window.commit`)."""
        if not keys:
            return
        if self._file is None:
            self._file = self._journal_path(self._number).open("ab")
            self._ids = {}
        parts: list[bytes] = []
        ids, seqs, stamps = array("I"), array("q"), array("q")
        known = self._ids
        for topic, seq, stamp in keys:
            index = known.get(topic)
            if index is None:
                index = known[topic] = len(known)
                raw = topic.encode()
                parts.append(_TOPIC + struct.pack("<H", len(raw)) + raw)
            ids.append(index)
            seqs.append(seq)
            stamps.append(stamp)
        parts.append(_KEYS + struct.pack("<I", len(keys)) + ids.tobytes() + seqs.tobytes() + stamps.tobytes())
        data = b"".join(parts)
        self._file.write(data)
        self._file.flush()  # into the kernel: survives the process being killed
        self._bytes += len(data)

    @property
    def wants_compaction(self) -> bool:
        return self._bytes > max(self.min_compact_bytes, 2 * self._snapshot_bytes)

    def start_compaction(self) -> tuple[bytes, list[int]]:
        """Switch to a new journal and take the snapshot; then call `finish_compaction` (slow
        disk work, fine in a thread) with what this returns."""
        self.close()
        done = self._journals()
        self._number += 1
        self._bytes = 0
        data = self.window.snapshot()
        self._snapshot_bytes = len(data)
        return data, done

    def finish_compaction(self, data: bytes, journals: list[int]) -> None:
        write_atomic(self.directory / SNAPSHOT_FILE, data)
        for number in journals:
            self._journal_path(number).unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""Write-ahead spool: batches the store could not take, on disk, replayed in order later.

Layout: a directory of segment files `<number>.seg`, each a run of records

    header  magic "TSP1" | body length | timestamp count | line count | health lines | crc32
            (u32 each, little endian; health lines: how many of the lines are ingestion's own)
    stamps  the devices' timestamps (float64 each; for lag metrics after replay)
    body    line protocol, newline separated, exactly what is POSTed to the store

and a `head` file naming the first record not yet in the store. A record is durable once
`append` returns (written and fdatasync'ed), which is when the messages in it may be
acknowledged to the broker. Replay reads from the head; `pop` moves the head on and deletes
segments left behind. After a crash, `open` re-reads the segments: a torn record at the end
of the last one is cut off (it was never acknowledged); a damaged record elsewhere is logged
and skipped.

Methods block on disk I/O; call them through `asyncio.to_thread`. One lock keeps appends
(the writer) and reads/pops (the replayer) consistent.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import zlib
from array import array
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tendril_transactive.cloud.ingest.dedup import write_atomic

log = logging.getLogger("tendril.ingest")

_MAGIC = b"TSP1"
_HEADER = struct.Struct("<4sIIIII")
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024


class SpoolFull(RuntimeError):
    """The spool holds its maximum; the caller must stop taking messages until it drains."""


@dataclass(frozen=True, slots=True)
class Record:
    body: bytes  # line protocol, "\n"-separated
    lines: int
    stamps: tuple[float, ...] = ()  # device timestamps of the messages, for lag after replay
    health_lines: int = 0  # of `lines`, how many are ingestion's own health points


@dataclass(frozen=True, slots=True)
class _Entry:
    segment: int
    offset: int
    size: int
    lines: int


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._lines = 0
        self._tail_segment = 0
        self._tail_size = 0
        self._tail_file: io.BufferedWriter | None = None
        self.damaged_bytes = 0  # skipped while recovering
        self._open()

    # ------------------------------------------------------------ state

    @property
    def empty(self) -> bool:
        return not self._entries

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    @property
    def depth_records(self) -> int:
        return len(self._entries)

    @property
    def depth_lines(self) -> int:
        return self._lines

    # ------------------------------------------------------------ recovery

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:012d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        head_segment, head_offset = self._read_head()
        segments = self._segments()
        for number in segments:
            if number < head_segment:
                self._segment_path(number).unlink(missing_ok=True)  # replayed before the crash
                continue
            start = head_offset if number == head_segment else 0
            self._scan(number, start, last=number == segments[-1])
        self._tail_segment = segments[-1] if segments else max(head_segment, 1)
        path = self._segment_path(self._tail_segment)
        self._tail_size = path.stat().st_size if path.exists() else 0
        if self._entries:
            log.warning(
                "spool %s holds %d batches (%d lines, %d bytes) to replay",
                self.directory, len(self._entries), self._lines, self._bytes,
            )

    def _read_head(self) -> tuple[int, int]:
        try:
            segment, offset = (self.directory / "head").read_text().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            return 0, 0

    def _scan(self, number: int, start: int, last: bool) -> None:
        path = self._segment_path(number)
        data = path.read_bytes()
        pos = start
        while pos < len(data):
            record_size = self._check(data, pos)
            if record_size is None:
                if last:
                    log.warning("spool %s: cutting a torn record at byte %d (never acknowledged)", path, pos)
                    with path.open("r+b") as f:
                        f.truncate(pos)
                else:
                    self.damaged_bytes += len(data) - pos
                    log.error("spool %s: damaged record at byte %d; skipping %d bytes", path, pos, len(data) - pos)
                return
            lines = _HEADER.unpack_from(data, pos)[3]
            self._remember(_Entry(number, pos, record_size, lines))
            pos += record_size

    @staticmethod
    def _check(data: bytes, pos: int) -> int | None:
        if pos + _HEADER.size > len(data):
            return None
        magic, body_len, n_stamps, _lines, _health, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + 8 * n_stamps + body_len
        if magic != _MAGIC or end > len(data):
            return None
        if zlib.crc32(data[pos + _HEADER.size : end]) != crc:
            return None
        size: int = end - pos
        return size

    def _remember(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._bytes += entry.size
        self._lines += entry.lines

    # ------------------------------------------------------------ writing

    def append(self, record: Record) -> None:
        """Durably add a record; raises SpoolFull when over `max_bytes`."""
        stamps = array("d", record.stamps).tobytes()
        payload = stamps + record.body
        header = _HEADER.pack(
            _MAGIC, len(record.body), len(record.stamps), record.lines, record.health_lines, zlib.crc32(payload)
        )
        size = len(header) + len(payload)
        with self._lock:
            if self._bytes and self._bytes + size > self.max_bytes:
                raise SpoolFull(f"spool {self.directory} is full ({self._bytes} of {self.max_bytes} bytes)")
            if self._tail_size >= self.segment_bytes:
                self._close_tail()
                self._tail_segment += 1
                self._tail_size = 0
            f = self._tail()
            offset = self._tail_size
            f.write(header + payload)
            f.flush()
            if self.fsync:
                os.fdatasync(f.fileno())
            self._tail_size += size
            self._remember(_Entry(self._tail_segment, offset, size, record.lines))

    def _tail(self) -> io.BufferedWriter:
        if self._tail_file is None:
            self._tail_file = self._segment_path(self._tail_segment).open("ab")
        return self._tail_file

    def _close_tail(self) -> None:
        if self._tail_file is not None:
            self._tail_file.close()
            self._tail_file = None

    # ------------------------------------------------------------ replaying

    def peek(self) -> Record | None:
        """The oldest record not yet in the store, or None."""
        with self._lock:
            if not self._entries:
                return None
            entry = self._entries[0]
        with self._segment_path(entry.segment).open("rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.size)
        _magic, _body_len, n_stamps, lines, health, _crc = _HEADER.unpack_from(data, 0)
        stamps = array("d")
        stamps.frombytes(data[_HEADER.size : _HEADER.size + 8 * n_stamps])
        return Record(data[_HEADER.size + 8 * n_stamps :], lines, tuple(stamps), health)

    def pop(self) -> None:
        """The oldest record is in the store: move the head past it."""
        with self._lock:
            entry = self._entries.popleft()
            self._bytes -= entry.size
            self._lines -= entry.lines
            if self._entries:
                nxt = self._entries[0]
                head = (nxt.segment, nxt.offset)
            elif entry.segment == self._tail_segment:
                # Empty: start the tail segment afresh instead of keeping replayed bytes around.
                self._close_tail()
                self._segment_path(self._tail_segment).unlink(missing_ok=True)
                self._tail_segment += 1
                self._tail_size = 0
                head = (self._tail_segment, 0)
            else:
                head = (self._tail_segment, self._tail_size)
            # Losing the head to a crash only means replaying a record twice: no fsync needed.
            write_atomic(self.directory / "head", f"{head[0]} {head[1]}\n".encode(), fsync=False)
            for number in self._segments():
                if number < head[0]:
                    self._segment_path(number).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._close_tail()

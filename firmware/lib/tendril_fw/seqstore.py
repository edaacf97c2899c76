# Sequence numbers on flash that survive a reboot.
#
# SeqCounter: telemetry seq. The cloud de-duplicates telemetry by (device, seq), so a
# seq that restarted at 0 would make new readings look like old ones. Writing the
# counter to flash on every record would wear the flash, so the counter reserves a
# block ahead: the file holds the first seq *not* yet handed out, written before any
# seq of the block is used. A reboot skips the unused rest of the block: seq has gaps
# but never repeats.
#
# AcceptedSeq: the seq of the last command the relay accepted. The relay refuses a
# command whose seq is not above it, so with it on flash a command accepted before a
# reboot (or an older one) cannot be replayed after it. Written once per accepted
# command, before the output changes (README "Flash wear" has the numbers).
#
# Both write tmp + rename (atomic on LittleFS and POSIX): a power cut mid-write leaves
# the previous file whole. AcceptedSeq also frames its value with the flash log's CRC
# (flashlog.frame), so a damaged file is recognised, never read as a smaller number.

import os

from tendril_fw.flashlog import frame, read_record

BLOCK = 64


def replace_file(path, data):
    # type: (str, bytes) -> None
    """Make `data` the whole content of `path`: tmp + rename; raises OSError."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class SeqCounter:
    def __init__(self, path=None, block=BLOCK):
        # type: (str | None, int) -> None
        self.path = path
        self.block = block
        self.next = self._load()
        self.limit = self.next  # nothing reserved yet this boot
        self.errors = 0

    def _load(self):
        # type: () -> int
        if self.path is None:
            return 0
        try:
            with open(self.path) as f:
                value = int(f.read().strip())
        except (OSError, ValueError):
            # Missing (first boot) or unreadable; an unreadable file after the tmp+rename
            # write cannot happen short of flash failure, and then the tmp copy may help.
            try:
                with open(self.path + ".tmp") as f:
                    value = int(f.read().strip())
            except (OSError, ValueError):
                return 0
        return max(0, value)

    def take(self):
        # type: () -> int
        """The next sequence number, reserving a new block on flash when needed."""
        if self.next >= self.limit:
            self._reserve(self.next + self.block)
        seq = self.next
        self.next += 1
        return seq

    def _reserve(self, limit):
        # type: (int) -> None
        if self.path is not None:
            try:
                replace_file(self.path, str(limit).encode())
            except OSError:
                # Keep counting in RAM: telemetry matters more than the gap-free guarantee.
                self.errors += 1
        self.limit = limit


class AcceptedSeq:
    def __init__(self, path):
        # type: (str) -> None
        self.path = path
        self.writes = 0  # flash writes this boot (one per accepted command)
        self.errors = 0
        self.damaged = False  # a file was there but unreadable (flash failure, not a power cut)
        self.seq = self._load()  # type: int | None

    def _load(self):
        # type: () -> int | None
        # The file first; its tmp copy only if the file is missing or damaged: a whole
        # tmp is a write cut before its rename (that command was never applied, so
        # refusing its seq as well is safe), a torn one fails the CRC and is ignored.
        for path in (self.path, self.path + ".tmp"):
            try:
                with open(path, "rb") as f:
                    record = read_record(f)
            except OSError:
                continue
            if record is not None:
                try:
                    return int(record)
                except ValueError:
                    pass
            # a torn tmp alone is a first write cut short; a bad file is flash failure
            self.damaged = self.damaged or path == self.path
        return None

    def save(self, seq):
        # type: (int) -> bool
        """Put `seq` on flash; False (counted) if the flash refused the write."""
        try:
            replace_file(self.path, frame(str(seq).encode()))
        except OSError:
            self.errors += 1
            return False
        self.writes += 1
        self.seq = seq
        return True

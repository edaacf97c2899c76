# Sequence numbers that survive a reboot: the cloud de-duplicates telemetry by
# (device, seq), so a seq that restarted at 0 would make new readings look like old ones.
#
# Writing the counter to flash on every record would wear the flash, so the counter
# reserves a block ahead: the file holds the first seq *not* yet handed out, written
# (tmp + rename, atomic on LittleFS and POSIX) before any seq of the block is used.
# A reboot skips the unused rest of the block: seq has gaps but never repeats.

import os

BLOCK = 64


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
            tmp = self.path + ".tmp"
            try:
                with open(tmp, "w") as f:
                    f.write(str(limit))
                os.rename(tmp, self.path)
            except OSError:
                # Keep counting in RAM: telemetry matters more than the gap-free guarantee.
                self.errors += 1
        self.limit = limit

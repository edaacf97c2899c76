# Telemetry waiting for the broker: a bounded FIFO, RAM first, then flash.
#
# New records go to RAM; when RAM holds `ram_max` records they move to the flash log
# in one write (fewer, larger flash writes wear the flash less). The oldest records
# are always on flash, so delivery order is flash then RAM. When the whole queue
# holds `capacity` records the oldest one is dropped and counted, never silently.
#
# Items are removed only at the head (delivered or dropped), so the items present
# always carry consecutive idents head .. head+len-1: `peek` hands out the head's
# ident and `remove_through` forgets exactly what the broker acknowledged, even if an
# overflow dropped that item (and moved the head) while its PUBACK was pending.


class Outbox:
    def __init__(self, capacity, ram_max=None, flash=None, log=None):
        # type: (int, int | None, object, object) -> None
        if capacity < 1:
            raise ValueError("queue capacity must be >= 1")
        self.capacity = capacity
        self.ram_max = max(1, min(capacity, ram_max or capacity))
        self.flash = flash  # a FlashLog or None
        self.log = log
        self.dropped = 0
        self.flash_errors = 0
        self._ram = []  # type: list[bytes]
        self._head = 0

    def __len__(self):
        # type: () -> int
        return len(self._ram) + (len(self.flash) if self.flash is not None else 0)  # type: ignore[arg-type]

    def push(self, payload):
        # type: (bytes) -> bool
        """Append; when full the oldest item is dropped and counted. False if one was dropped."""
        kept = True
        while len(self) >= self.capacity:
            self._drop_head()
            kept = False
        if len(self._ram) >= self.ram_max and not self._spill():
            kept = False
        self._ram.append(payload)
        return kept

    def _spill(self):
        # type: () -> bool
        """Move RAM to flash; False if an item had to be dropped instead."""
        if self.flash is None:
            self._drop_head()
            return False
        try:
            self.flash.append_many(self._ram)  # type: ignore[attr-defined]
        except OSError as exc:
            # Flash full or failing: the RAM copy is all there is; make room by dropping.
            self.flash_errors += 1
            if self.log is not None:
                self.log("flash append failed: %r" % (exc,))  # type: ignore[operator]
            self._drop_head()
            return False
        self._ram = []
        return True

    def _drop_head(self):
        # type: () -> None
        if self.flash is not None and len(self.flash):  # type: ignore[arg-type]
            self.flash.pop()  # type: ignore[attr-defined]
        elif self._ram:
            self._ram.pop(0)
        else:
            return
        self._head += 1
        self.dropped += 1

    def peek(self):
        # type: () -> tuple[int, bytes] | None
        if self.flash is not None and len(self.flash):  # type: ignore[arg-type]
            before = len(self.flash)  # type: ignore[arg-type]
            payload = self.flash.peek()  # type: ignore[attr-defined]
            lost = before - len(self.flash)  # type: ignore[arg-type]
            if lost:
                # a segment turned out unreadable: its records are gone, count them
                self._head += lost
                self.dropped += lost
            if payload is not None:
                return self._head, payload
        return (self._head, self._ram[0]) if self._ram else None

    def remove_through(self, ident):
        # type: (int) -> None
        """Forget every item up to and including `ident` (delivered)."""
        while self._head <= ident and len(self):
            if self.flash is not None and len(self.flash):  # type: ignore[arg-type]
                self.flash.pop()  # type: ignore[attr-defined]
            else:
                self._ram.pop(0)
            self._head += 1


def RamQueue(capacity):
    # type: (int) -> Outbox
    """The RAM-only outbox (no flash tier)."""
    return Outbox(capacity)

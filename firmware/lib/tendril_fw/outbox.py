# Telemetry waiting for the broker: a bounded FIFO in RAM.
#
# The node only uses push/peek/remove_through/len/dropped, so a flash-backed queue
# with the same methods can replace this one. Items are encoded payloads; each gets
# an increasing ident so the sender can remove exactly what the broker acknowledged
# even if an overflow dropped it (and shifted the head) while the PUBACK was pending.


class RamQueue:
    def __init__(self, capacity):
        # type: (int) -> None
        if capacity < 1:
            raise ValueError("queue capacity must be >= 1")
        self.capacity = capacity
        self.dropped = 0
        self._items = []  # type: list[tuple[int, bytes]]
        self._next = 0

    def __len__(self):
        # type: () -> int
        return len(self._items)

    def push(self, payload):
        # type: (bytes) -> bool
        """Append; when full the oldest item is dropped and counted. False if one was dropped."""
        kept = True
        if len(self._items) >= self.capacity:
            self._items.pop(0)
            self.dropped += 1
            kept = False
        self._items.append((self._next, payload))
        self._next += 1
        return kept

    def peek(self):
        # type: () -> tuple[int, bytes] | None
        return self._items[0] if self._items else None

    def remove_through(self, ident):
        # type: (int) -> None
        """Forget every item up to and including `ident` (delivered)."""
        while self._items and self._items[0][0] <= ident:
            self._items.pop(0)

# Liveness of the node's loops, for the watchdog: each loop promises when it will be
# back (`beat(name, now, within)`); the watchdog is fed only while no promise is
# broken. A loop that hangs, or an event loop blocked by a stuck call, stops the feeds
# and the hardware watchdog (machine.WDT; on the unix port a shim) resets the device.
#
# Pure: every call takes `now` (monotonic real seconds).


class Liveness:
    def __init__(self):
        # type: () -> None
        self.due = {}  # type: dict[str, float]

    def beat(self, name, now, within):
        # type: (str, float, float) -> None
        self.due[name] = now + within

    def forget(self, name):
        # type: (str) -> None
        self.due.pop(name, None)

    def stale(self, now):
        # type: (float) -> list[str]
        """Names of loops that missed their promise, sorted; empty = all alive."""
        return sorted(name for name in self.due if now > self.due[name])

# Every board's monotonic(): real seconds since boot. time.ticks_ms() wraps (at 2**30 ms on
# MicroPython, about 12 days), so the differences are accumulated instead of read directly.

import time


class Uptime:
    def __init__(self):
        # type: () -> None
        self._ms = 0
        self._last = time.ticks_ms()

    def __call__(self):
        # type: () -> float
        ticks = time.ticks_ms()
        self._ms += time.ticks_diff(ticks, self._last)
        self._last = ticks
        return self._ms / 1000.0

# Host shim for the parts of ESP32 `machine` the firmware uses, on the unix port
# (which has no WDT, Pin, RTC). It shadows the built-in module when this board's
# folder is on MICROPYPATH.
#
# WDT: a thread watches the feeds; on a missed one it records the reset cause and
# SIGKILLs this process (the unix port has no os._exit or os.kill, so it asks the
# shell to kill its parent), just as the ESP32's hardware watchdog resets the chip
# however stuck the interpreter is. The harness restarts the process.

import os
import time

import _thread

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

RESET_FILE = None  # set by the board: where the cause of the next reset is recorded


def reset_cause():
    # type: () -> int
    """WDT_RESET if the previous run ended by the watchdog, else PWRON_RESET (once)."""
    if RESET_FILE is None:
        return PWRON_RESET
    try:
        with open(RESET_FILE) as f:
            cause = int(f.read().strip())
        os.remove(RESET_FILE)
    except (OSError, ValueError):
        return PWRON_RESET
    return cause


class WDT:
    def __init__(self, id=0, timeout=5000):
        # type: (int, int) -> None
        self.timeout = timeout
        self._last = time.ticks_ms()
        _thread.start_new_thread(self._watch, ())

    def feed(self):
        # type: () -> None
        self._last = time.ticks_ms()

    def _watch(self):
        # type: () -> None
        while time.ticks_diff(time.ticks_ms(), self._last) <= self.timeout:
            time.sleep_ms(50)
        print("WDT: not fed for %d ms, resetting" % self.timeout)
        if RESET_FILE is not None:
            try:
                with open(RESET_FILE, "w") as f:
                    f.write(str(WDT_RESET))
            except OSError:
                pass
        os.system("kill -9 $PPID")

# Board for the MicroPython unix port: the "hardware" is files shared with a plant
# simulator, the clock may run faster than life, the network is always up.
#
#   TENDRIL_FW_CONFIG  path of the config JSON (see tendril_fw.config)
#   TENDRIL_CLOCK      "real_origin,sim_origin,speed": now = sim_origin + (time.time() -
#                      real_origin) * speed, and sleeping d device seconds takes d/speed real
#                      seconds (edge/clock.py SimClock.env_value); absent = wall clock.
#   power_file         (meter) the plant writes the current site power in W as text
#   relay_file         (relay) this board writes "0" or "1", atomically, at boot and on change
#   override_file      (relay, optional) the local button: "0"/"1" forces the output, absent
#                      or empty releases it
#   state_dir          the node's "flash": outbox backlog, seq counters, reset cause
#   link_file          (optional) the Wi-Fi link: "down" cuts it (network.py shim beside this file)
#   wdt_s              machine.WDT here is the host shim next to this file (kills the process)

import asyncio
import gc
import os
import random
import time

import machine
import network
from tendril_fw import config
from tendril_fw.flashlog import makedirs
from tendril_fw.uptime import Uptime

BOOT_REASONS = {machine.PWRON_RESET: "power_on", machine.WDT_RESET: "watchdog"}



class Board:
    def __init__(self, config_path=None, clock=None):
        # type: (str | None, str | None) -> None
        path = config_path or os.getenv("TENDRIL_FW_CONFIG")
        if not path:
            raise config.ConfigError("set TENDRIL_FW_CONFIG to the path of the node's config JSON")
        self.cfg = config.load(path)
        if self.cfg["type"] == "meter" and not self.cfg["power_file"]:
            raise config.ConfigError("a meter on the unix board needs power_file")
        if self.cfg["type"] == "relay" and not self.cfg["relay_file"]:
            raise config.ConfigError("a relay on the unix board needs relay_file")
        self.real_origin, self.sim_origin, self.speed = config.parse_clock(
            clock if clock is not None else os.getenv("TENDRIL_CLOCK"))
        self.power_errors = 0
        self._power = 0.0
        if self.cfg["state_dir"]:
            makedirs(self.cfg["state_dir"])
            machine.RESET_FILE = self.cfg["state_dir"] + "/reset_cause"
        self._boot_reason = BOOT_REASONS.get(machine.reset_cause(), "unknown")
        self.monotonic = Uptime()  # real seconds since boot
        network.LINK_FILE = self.cfg["link_file"]
        self.wlan = network.WLAN(network.STA_IF)
        self._tls = None  # mqtt_tls
        # no button configured: nothing to poll
        self.read_override = self._read_override if self.cfg["override_file"] else None

    def boot_reason(self):
        # type: () -> str
        return self._boot_reason

    def watchdog(self, timeout_s):
        # type: (float) -> machine.WDT
        return machine.WDT(timeout=int(timeout_s * 1000))

    def _read_override(self):
        # type: () -> int | None
        path = self.cfg["override_file"]
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            return None
        return 1 if text == "1" else 0 if text == "0" else None

    def now(self):
        # type: () -> float
        return self.sim_origin + (time.time() - self.real_origin) * self.speed

    async def sleep(self, device_seconds):
        # type: (float) -> None
        await asyncio.sleep(max(0.0, device_seconds) / self.speed)

    def read_power(self):
        # type: () -> float
        """Current site power; a missing or garbled file keeps the last value (and is counted)."""
        path = self.cfg["power_file"]
        try:
            with open(path) as f:
                value = float(f.read().strip())
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("not finite")
        except (OSError, ValueError) as exc:
            self.power_errors += 1
            self.log("power_file %s unreadable (%r), keeping %s W (%d errors)" % (
                path, exc, self._power, self.power_errors))
            return self._power
        self._power = value
        return value

    def set_relay(self, state):
        # type: (int) -> None
        # Write-then-rename so the plant never reads a half-written file.
        path = self.cfg["relay_file"]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("1" if state else "0")
        os.rename(tmp, path)

    def free_heap(self):
        # type: () -> int | None
        mem_free = getattr(gc, "mem_free", None)  # MicroPython only
        if mem_free is None:
            return None
        gc.collect()  # report what is really free, not what is merely uncollected
        return mem_free()

    def random(self):
        # type: () -> float
        return random.random()

    async def network_up(self):
        # type: () -> None
        if not self.wlan.isconnected():
            self.wlan.active(True)
            self.wlan.connect()
            if not self.wlan.isconnected():
                raise OSError("Wi-Fi link down")

    def mqtt_tls(self):
        # type: () -> object
        """The MQTT link's SSLContext (None: cleartext), made once per boot (tlsconf.py)."""
        if self._tls is None and self.cfg["tls"]:
            from tendril_fw import tlsconf  # a cleartext node never pays its heap

            self._tls = tlsconf.context(self.cfg)
        return self._tls

    def link_up(self):
        # type: () -> bool
        return self.wlan.isconnected()

    def log(self, text):
        # type: (str) -> None
        print("[%.3f] %s" % (self.now(), text))

# Board for an ESP32 running MicroPython: relay on a GPIO, meter from the utility
# meter's pulse LED (an optical pickup on a GPIO), Wi-Fi, NTP, config.json on flash.
#
# Board-specific settings live under the config's "board" object:
#   wifi_ssid, wifi_password        the customer's Wi-Fi
#   relay_pin (default 26)          GPIO driving the relay (1 = load on)
#   pulse_pin (default 27)          GPIO of the meter's pulse pickup (meter)
#   pulses_per_kwh (default 1000)   the meter's LED constant (imp/kWh)
#   ntp_host (default pool.ntp.org)
#   override_pin (optional)         a latching switch to ground: closed = load forced ON
#                                   locally (wins over the cloud), open = cloud in control
# The outbox backlog and seq counters live in state_dir (default /state on LittleFS).
# This file cannot run on the unix port (no `network`, no machine.Pin there).

import asyncio
import gc
import os
import time

import machine
import network
import ntptime

import tendril_wire as tw
from tendril_fw import config, wifi
from tendril_fw.uptime import Uptime

# The port's epoch: 2000 on ESP32. Converted to unix seconds only via tendril_wire.
EPOCH_YEAR = time.gmtime(0)[0]
BOOT_REASONS = {machine.PWRON_RESET: "power_on", machine.HARD_RESET: "hard_reset",
                machine.WDT_RESET: "watchdog", machine.DEEPSLEEP_RESET: "deep_sleep",
                machine.SOFT_RESET: "soft_reset"}


class Board:
    def __init__(self, path="config.json"):
        self.cfg = config.load(path)
        if not self.cfg["state_dir"]:
            self.cfg["state_dir"] = "/state"
        hw = self.cfg["board"]
        self._boot_reason = BOOT_REASONS.get(machine.reset_cause(), "unknown")
        self.monotonic = Uptime()  # real seconds since boot
        self.override_pin = None
        if hw.get("override_pin") is not None:
            self.override_pin = machine.Pin(hw["override_pin"], machine.Pin.IN, machine.Pin.PULL_UP)
        self.read_override = self._read_override if self.override_pin is not None else None
        self.wlan = network.WLAN(network.STA_IF)
        self.synced = False
        self._tls = None  # mqtt_tls: made at the first connect, after NTP (cert dates)
        self.relay_pin = None
        if self.cfg["type"] == tw.DEVICE_RELAY:
            # Drive the safe default before anything else: the output is undefined until now.
            self.relay_pin = machine.Pin(hw.get("relay_pin", 26), machine.Pin.OUT,
                                         value=self.cfg["safe_default"])
        else:
            self.pulses = 0
            self.pulses_per_kwh = hw.get("pulses_per_kwh", 1000)
            self._last_ticks = time.ticks_ms()
            self.pulse_pin = machine.Pin(hw.get("pulse_pin", 27), machine.Pin.IN, machine.Pin.PULL_UP)
            self.pulse_pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=self._pulse)

    def _pulse(self, _pin):
        self.pulses += 1  # IRQ context: no allocation

    # ------------------------------------------------------------ clock

    def now(self):
        return tw.to_unix_time(time.time(), EPOCH_YEAR)

    async def sleep(self, device_seconds):
        await asyncio.sleep(max(0.0, device_seconds))

    # ------------------------------------------------------------ I/O

    def read_power(self):
        """Average power since the previous call, from meter pulses."""
        state = machine.disable_irq()
        pulses, self.pulses = self.pulses, 0
        machine.enable_irq(state)
        ticks = time.ticks_ms()
        dt_s = time.ticks_diff(ticks, self._last_ticks) / 1000
        self._last_ticks = ticks
        if dt_s <= 0:
            return 0.0
        return pulses / self.pulses_per_kwh * 1000.0 * 3600.0 / dt_s

    def watchdog(self, timeout_s):
        return machine.WDT(timeout=int(timeout_s * 1000))

    def boot_reason(self):
        return self._boot_reason

    # The pins are None only on boards without them, where these are never called
    # (read_override is None, a meter has no relay): no run-time check needed.
    def _read_override(self):
        return 1 if self.override_pin.value() == 0 else None  # pyright: ignore[reportOptionalMemberAccess]

    def set_relay(self, state):
        self.relay_pin.value(1 if state else 0)  # pyright: ignore[reportOptionalMemberAccess]

    def free_heap(self):
        gc.collect()
        return gc.mem_free()

    def random(self):
        return int.from_bytes(os.urandom(4), "big") / 4294967296

    async def network_up(self):
        await wifi.network_up(self, ntptime)

    def mqtt_tls(self):
        """The MQTT link's SSLContext (None: cleartext), made once per boot (tlsconf.py)."""
        if self._tls is None and self.cfg["tls"]:
            from tendril_fw import tlsconf  # a cleartext node never pays its heap

            self._tls = tlsconf.context(self.cfg)
        return self._tls

    def link_up(self):
        return self.wlan.isconnected()

    def log(self, text):
        print("[%d] %s" % (self.now(), text))

# Board for an ESP32 in bench mode (hardware in the loop): the product firmware runs
# unchanged on the real chip, with its real Wi-Fi, MQTT session, flash, clock and
# watchdog, but its sensors and its relay are the HIL bench's, over the framed bench
# link (tendril_fw.bench_link) on a UART; the bench can also cut and restore its network.
# The frame handling is tendril_fw.bench_mode (shared with the unix bench board), the
# UART side tendril_fw.bench_uart.
#
# Settings under the config's "board" object (config.json on flash):
#   wifi_ssid, wifi_password        Wi-Fi that reaches the bench's broker
#   ntp_host (default pool.ntp.org)
#   bench_uart (default 1)          UART id of the link; not the console's UART (UART0 on
#                                   most boards), or the log lines land on the link
#   bench_tx (17), bench_rx (16)    its pins (to a USB-serial adapter: /dev/ttyUSB*)
#   bench_baud (default 115200)     the bench's --baud
#   relay_pin (optional)            still driven, so an LED shows the output
#   pulses_per_kwh (default 1000)   for the bench's "pulses" input
# Sensor inputs (meter power or pulses, the local button) come from the bench; there is
# no pulse IRQ and no override pin in bench mode. This file cannot run on the unix port.

import asyncio
import gc
import os
import time

import machine
import network
import ntptime

import tendril_wire as tw
from tendril_fw import bench_mode as bm
from tendril_fw import bench_uart
from tendril_fw import config, wifi
from tendril_fw.uptime import Uptime

EPOCH_YEAR = time.gmtime(0)[0]
RX_BUFFER = 2048  # two full frames: the bench may send a request while a reply is in flight
BOOT_REASONS = {machine.PWRON_RESET: "power_on", machine.HARD_RESET: "hard_reset",
                machine.WDT_RESET: "watchdog", machine.DEEPSLEEP_RESET: "deep_sleep",
                machine.SOFT_RESET: "soft_reset"}


class Board:
    def __init__(self, path="config.json", uart=None):
        self.cfg = config.load(path)
        if not self.cfg["state_dir"]:
            self.cfg["state_dir"] = "/state"
        hw = self.cfg["board"]
        if not hw.get("wifi_ssid"):
            raise config.ConfigError("board.wifi_ssid is required: the device reaches the bench's broker over Wi-Fi")
        try:
            link = bench_uart.uart_settings(hw)
        except bench_uart.BenchConfigError as exc:
            raise config.ConfigError(str(exc))
        self._boot_reason = BOOT_REASONS.get(machine.reset_cause(), "unknown")
        self.monotonic = Uptime()  # real seconds since boot
        self.relay_pin = None
        if hw.get("relay_pin") is not None:
            # Drive the safe default before anything else: the output is undefined until now.
            self.relay_pin = machine.Pin(hw["relay_pin"], machine.Pin.OUT, value=self.cfg["safe_default"])
        self.wlan = network.WLAN(network.STA_IF)
        self.synced = False
        # timeout=0: a read returns what has arrived, so the event loop never waits on the UART
        self.uart = uart if uart is not None else machine.UART(
            link["id"], baudrate=link["baud"], tx=link["tx"], rx=link["rx"], rxbuf=RX_BUFFER, timeout=0)
        self.bench = bm.BenchMode(self.uart, self, self.cfg, self._boot_reason)
        self.read_override = self.bench.read_override
        self._link_task = None
        # The bench's network cut: new connections fail, a live socket fails on its next
        # write or read, link_up() turns false. Wi-Fi itself stays associated.
        asyncio.open_connection = bm.gate_connections(asyncio.open_connection, self.bench)

    # ------------------------------------------------------------ bench link

    def _ensure_link(self):
        if self._link_task is None:
            self._link_task = asyncio.create_task(self._serve_link())

    async def _serve_link(self):
        # Wait for one byte through asyncio (no busy polling), then take what the UART holds.
        reader = asyncio.StreamReader(self.uart)
        while True:
            if self.bench.pending is not None:
                await asyncio.sleep(bm.RETRY_S)  # the node's tasks free some heap meanwhile
                self.bench.retry()
                continue
            try:
                data = await reader.read(1)
            except OSError as exc:
                self.log("bench: link read failed: %r" % (exc,))
                await asyncio.sleep(0.05)
                continue
            if not data:
                await asyncio.sleep(0.01)
                continue
            try:
                self.bench.feed(data)
                bench_uart.poll(self.bench, self.uart)
            except MemoryError:  # while decoding: those bytes are lost, the link goes on
                gc.collect()
                self.bench.no_memory += 1

    def block(self, seconds):
        time.sleep(seconds)  # blocks the event loop on purpose: the watchdog must bite

    # ------------------------------------------------------------ clock

    def now(self):
        return tw.to_unix_time(time.time(), EPOCH_YEAR)

    async def sleep(self, device_seconds):
        self._ensure_link()
        await asyncio.sleep(max(0.0, device_seconds))

    # ------------------------------------------------------------ the node's hardware

    def read_power(self):
        # the monotonic clock: time.time() has whole seconds here and steps at NTP sync
        return self.bench.read_power(self.monotonic())

    def set_relay(self, state):
        if self.relay_pin is not None:
            self.relay_pin.value(1 if state else 0)
        self.bench.set_relay(state)

    def watchdog(self, timeout_s):
        return machine.WDT(timeout=int(timeout_s * 1000))

    def boot_reason(self):
        return self._boot_reason

    def free_heap(self):
        gc.collect()
        return gc.mem_free()

    def random(self):
        return int.from_bytes(os.urandom(4), "big") / 4294967296

    async def network_up(self):
        self._ensure_link()
        if not self.bench.net_up:
            raise OSError("network cut by the bench")
        await wifi.network_up(self, ntptime)

    def link_up(self):
        return self.bench.net_up and self.wlan.isconnected()

    def log(self, text):
        print("[%d] %s" % (self.now(), text))

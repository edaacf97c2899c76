# Board for bench mode (hardware in the loop): the firmware runs unchanged, but its
# sensors and its relay are the HIL bench's, over a framed serial link
# (tendril_fw.bench_link). The bench sets the inputs (meter power or pulses, indoor
# temperature, EV plugged, the local button), sees every relay change as it happens,
# reads the device's counters, and can cut and restore the device's network.
#
# On the unix port the link is an inherited pty master (fd in TENDRIL_BENCH_FD; the
# bench opens the slave path with pyserial exactly like /dev/ttyUSB0). What the frames
# do is tendril_fw.bench_mode, the same code boards/esp32_bench runs on a UART; this
# board adds only the pty, the simulated clock and the host shims.
#
#   TENDRIL_FW_CONFIG  path of the config JSON (tendril_fw.config)
#   TENDRIL_CLOCK      "real_origin,sim_origin,speed" as on the unix board; absent = wall clock
#   TENDRIL_BENCH_FD   file descriptor of the link
#
# `machine` is the unix board's host shim (WDT that kills the process, reset cause in
# state_dir): boards/unix follows boards/bench on MICROPYPATH.

import asyncio
import gc
import os
import random
import select
import time

import machine
from tendril_fw import bench_link as bl
from tendril_fw import bench_mode as bm
from tendril_fw import config
from tendril_fw.flashlog import makedirs
from tendril_fw.uptime import Uptime

BOOT_REASONS = {machine.PWRON_RESET: "power_on", machine.WDT_RESET: "watchdog"}


class Board:
    def __init__(self, config_path=None, clock=None, link_fd=None):
        # type: (str | None, str | None, int | None) -> None
        path = config_path or os.getenv("TENDRIL_FW_CONFIG")
        if not path:
            raise config.ConfigError("set TENDRIL_FW_CONFIG to the path of the node's config JSON")
        self.cfg = config.load(path)
        fd = link_fd if link_fd is not None else os.getenv("TENDRIL_BENCH_FD")
        if fd is None:
            raise config.ConfigError("bench mode needs TENDRIL_BENCH_FD (the serial link)")
        self.link = open(int(fd), "r+b")
        self.real_origin, self.sim_origin, self.speed = config.parse_clock(
            clock if clock is not None else os.getenv("TENDRIL_CLOCK"))
        self._link_task = None  # type: object
        if self.cfg["state_dir"]:
            makedirs(self.cfg["state_dir"])
            machine.RESET_FILE = self.cfg["state_dir"] + "/reset_cause"
        self._boot_reason = BOOT_REASONS.get(machine.reset_cause(), "unknown")
        self.monotonic = Uptime()  # real seconds since boot
        self.bench = bm.BenchMode(self.link, self, self.cfg, self._boot_reason)
        self.read_override = self.bench.read_override
        # The bench's network cut: new connections fail, a live socket fails on its next
        # write or read, link_up() turns false.
        asyncio.open_connection = bm.gate_connections(asyncio.open_connection, self.bench)

    # ------------------------------------------------------------ link

    def _ensure_link(self):
        # type: () -> None
        if self._link_task is None:
            self._link_task = asyncio.create_task(self._serve_link())

    async def _serve_link(self):
        # type: () -> None
        # The unix port's file reads block until `n` bytes arrive, so wait for one byte
        # through asyncio, then take only what poll says is already there.
        reader = asyncio.StreamReader(self.link)
        ready = select.poll()
        ready.register(self.link, select.POLLIN)
        while True:
            if self.bench.pending is not None:
                await asyncio.sleep(bm.RETRY_S)  # the node's tasks free some heap meanwhile
                self.bench.retry()
                continue
            data = await reader.read(1)
            if not data:
                await asyncio.sleep(0.05)  # the bench side is closed; wait for it to return
                continue
            try:
                while len(data) < bl.MAX_FRAME and ready.poll(0):
                    data += self.link.read(1)
                self.bench.feed(data)
            except MemoryError:  # while reading or decoding: those bytes are lost, the link goes on
                gc.collect()
                self.bench.no_memory += 1

    def block(self, seconds):
        # type: (float) -> None
        time.sleep(seconds)  # blocks the event loop on purpose: the watchdog must bite

    # ------------------------------------------------------------ the node's hardware

    def boot_reason(self):
        # type: () -> str
        return self._boot_reason

    def watchdog(self, timeout_s):
        # type: (float) -> machine.WDT
        return machine.WDT(timeout=int(timeout_s * 1000))

    def now(self):
        # type: () -> float
        return self.sim_origin + (time.time() - self.real_origin) * self.speed

    async def sleep(self, device_seconds):
        # type: (float) -> None
        self._ensure_link()
        await asyncio.sleep(max(0.0, device_seconds) / self.speed)

    def read_power(self):
        # type: () -> float
        # device seconds: pulses at a sped-up clock count against the time the plant saw
        return self.bench.read_power(self.now())

    def set_relay(self, state):
        # type: (int) -> None
        self.bench.set_relay(state)

    def free_heap(self):
        # type: () -> int | None
        mem_free = getattr(gc, "mem_free", None)
        return mem_free() if mem_free is not None else None

    def random(self):
        # type: () -> float
        return random.random()

    async def network_up(self):
        # type: () -> None
        self._ensure_link()
        if not self.bench.net_up:
            raise OSError("network cut by the bench")

    def link_up(self):
        # type: () -> bool
        """Polled by the uplink: a cut ends the live session at once (the ESP32's Wi-Fi stack does)."""
        return self.bench.net_up

    def log(self, text):
        # type: (str) -> None
        print("[%.3f] %s" % (self.now(), text))

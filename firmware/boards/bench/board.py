# Board for bench mode (hardware in the loop): the firmware runs unchanged, but its
# sensors and its relay are the HIL bench's, over a framed serial link
# (tendril_fw.bench_link). The bench sets the inputs (meter power or pulses, indoor
# temperature, EV plugged, the local button), sees every relay change as it happens,
# reads the device's counters, and can cut and restore the device's network.
#
# On the unix port the link is an inherited pty master (fd in TENDRIL_BENCH_FD; the
# bench opens the slave path with pyserial exactly like /dev/ttyUSB0). An ESP32 in
# bench mode would take the same frames on a UART; that wiring is not written yet.
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
from tendril_fw import config
from tendril_fw.flashlog import makedirs
from tendril_fw.uptime import Uptime

BOOT_REASONS = {machine.PWRON_RESET: "power_on", machine.WDT_RESET: "watchdog"}
INPUTS = ("power_w", "pulses", "temp_c", "ev_plugged", "button")
_open_connection = asyncio.open_connection
_net = [True]  # the device's network (Wi-Fi) is up; the bench cuts and restores it
EHOSTUNREACH = 113


class _CutStream:
    """A TCP stream that fails, as a dropped Wi-Fi link does, while the bench has the network cut:
    writes raise, and data that arrives after the cut is never handed to the firmware."""

    def __init__(self, stream):
        # type: (object) -> None
        self._stream = stream

    def __getattr__(self, name):
        # type: (str) -> object
        return getattr(self._stream, name)

    def _check(self):
        # type: () -> None
        if not _net[0]:
            raise OSError(EHOSTUNREACH)

    def write(self, data):
        # type: (bytes) -> object
        self._check()
        return self._stream.write(data)  # type: ignore[attr-defined]

    async def drain(self):
        # type: () -> None
        self._check()
        await self._stream.drain()  # type: ignore[attr-defined]

    async def readexactly(self, n):
        # type: (int) -> bytes
        data = await self._stream.readexactly(n)  # type: ignore[attr-defined]
        self._check()
        return data


async def _cuttable_open_connection(host, port):
    # type: (str, int) -> tuple[object, object]
    if not _net[0]:
        raise OSError(EHOSTUNREACH)
    reader, writer = await _open_connection(host, port)
    return _CutStream(reader), _CutStream(writer)


asyncio.open_connection = _cuttable_open_connection



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
        self.endpoint = bl.Endpoint()
        self.inputs = {"power_w": 0.0, "pulses": None, "temp_c": None, "ev_plugged": None, "button": None}
        self.pulses_per_kwh = self.cfg["board"].get("pulses_per_kwh", 1000)
        self._pulses_at = None  # type: tuple[int, float] | None
        self._power = 0.0
        self.relay = None  # type: int | None
        self.net_up = True
        self.net_cuts = 0
        self.tx_errors = 0
        self._link_task = None  # type: object
        if self.cfg["state_dir"]:
            makedirs(self.cfg["state_dir"])
            machine.RESET_FILE = self.cfg["state_dir"] + "/reset_cause"
        self._boot_reason = BOOT_REASONS.get(machine.reset_cause(), "unknown")
        self.monotonic = Uptime()  # real seconds since boot
        self.send({"ev": bl.EV_BOOT, "device": self.cfg["device"], "fw": self.cfg["fw_version"],
                   "boot": self._boot_reason, "now": self.now()})

    # ------------------------------------------------------------ link

    def send(self, msg):
        # type: (dict[str, object]) -> None
        _seq, frame = self.endpoint.encode(msg)
        try:
            self.link.write(frame)
        except OSError:
            self.tx_errors += 1  # nobody listening: the bench is away, the device goes on

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
            data = await reader.read(1)
            if not data:
                await asyncio.sleep(0.05)  # the bench side is closed; wait for it to return
                continue
            while len(data) < bl.MAX_FRAME and ready.poll(0):
                data += self.link.read(1)
            for seq, msg in self.endpoint.feed(data):
                try:
                    reply = self.handle(msg)
                except (ValueError, TypeError, KeyError) as exc:
                    reply = {"ok": False, "error": repr(exc)[:120]}
                reply["re"] = seq
                self.send(reply)

    def handle(self, msg):
        # type: (dict[str, object]) -> dict[str, object]
        """Apply one bench request; returns the reply (without "re")."""
        op = msg.get("op")
        if op == bl.OP_PING:
            return {"ok": True}
        if op == bl.OP_SET:
            for name in msg:
                if name != "op" and name not in INPUTS:
                    return {"ok": False, "error": "unknown input %r" % (name,)}
            for name in msg:
                if name != "op":
                    self.inputs[name] = msg[name]
            return {"ok": True}
        if op == bl.OP_GET:
            counters = self.endpoint.counters()
            counters["tx_errors"] = self.tx_errors
            counters["net_cuts"] = self.net_cuts
            return {"ok": True, "relay": self.relay, "inputs": self.inputs, "now": self.now(),
                    "net_up": self.net_up, "boot": self._boot_reason, "site": self.cfg["site"],
                    "device": self.cfg["device"],
                    "fw": self.cfg["fw_version"], "counters": counters, "free_heap": self.free_heap()}
        if op == bl.OP_NET:
            self.set_network(bool(msg.get("up")))
            return {"ok": True, "net_up": self.net_up}
        if op == bl.OP_HANG:
            self.log("bench: blocking the event loop for %s s" % (msg.get("s"),))
            time.sleep(float(msg.get("s", 0)))  # type: ignore[arg-type]
            return {"ok": True}
        return {"ok": False, "error": "unknown op %r" % (op,)}

    def set_network(self, up):
        # type: (bool) -> None
        if up == self.net_up:
            return
        self.net_up = up
        _net[0] = up
        if up:
            self.log("bench: network restored")
            return
        self.net_cuts += 1
        self.log("bench: network cut")

    # ------------------------------------------------------------ the node's hardware

    def boot_reason(self):
        # type: () -> str
        return self._boot_reason

    def watchdog(self, timeout_s):
        # type: (float) -> machine.WDT
        return machine.WDT(timeout=int(timeout_s * 1000))

    def read_override(self):
        # type: () -> int | None
        button = self.inputs["button"]
        return button if button in (0, 1) else None

    def now(self):
        # type: () -> float
        return self.sim_origin + (time.time() - self.real_origin) * self.speed

    async def sleep(self, device_seconds):
        # type: (float) -> None
        self._ensure_link()
        await asyncio.sleep(max(0.0, device_seconds) / self.speed)

    def read_power(self):
        # type: () -> float
        """Site power: the bench's power_w, or the average since the last read from its pulse count."""
        pulses = self.inputs["pulses"]
        if not isinstance(pulses, int):
            self._pulses_at = None
            self._power = float(self.inputs["power_w"] or 0.0)  # type: ignore[arg-type]
            return self._power
        now = self.now()
        if self._pulses_at is not None and now > self._pulses_at[1]:
            count = pulses - self._pulses_at[0]
            self._power = count / self.pulses_per_kwh * 1000.0 * 3600.0 / (now - self._pulses_at[1])
        self._pulses_at = (pulses, now)
        return self._power

    def set_relay(self, state):
        # type: (int) -> None
        self.relay = 1 if state else 0
        self.send({"ev": bl.EV_RELAY, "relay": self.relay, "t": self.now()})

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
        if not self.net_up:
            raise OSError("network cut by the bench")

    def link_up(self):
        # type: () -> bool
        """Polled by the uplink: a cut ends the live session at once (the ESP32's Wi-Fi stack does)."""
        return self.net_up

    def log(self, text):
        # type: (str) -> None
        print("[%.3f] %s" % (self.now(), text))

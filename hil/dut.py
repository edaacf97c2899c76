"""Devices under test, labgrid-style: one protocol, one driver per way of reaching a board.

- `UnixPortDriver`: the firmware under the MicroPython unix port in bench mode
  (firmware/boards/bench), its serial link a pseudo-terminal pair. The harness keeps the pty
  master (handed to each firmware process as TENDRIL_BENCH_FD) and opens the slave path with
  pyserial exactly as it would open /dev/ttyUSB0, so the bench's port survives a power cycle.
  Power cycle = kill the process and start it again; a process that dies by itself (its
  watchdog) is restarted by a supervisor, as the chip's reset would.
- `SerialDriver`: a real ESP32 on /dev/ttyUSB*, baud configurable. Power cycling needs a
  hook: a command run with the shell's argument splitting, e.g. a USB relay
  (`usbrelay HW554_1=0 && sleep 1 && usbrelay HW554_1=1`) or a PoE/USB hub port toggle
  (`uhubctl -l 1-1 -p 2 -a cycle`). Without one, power_cycle() raises PowerCycleUnavailable.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
import tty
from pathlib import Path
from typing import Protocol

import serial  # type: ignore[import-untyped]  # pyserial ships no stubs (types-pyserial)

from tendril_transactive.edge.firmware_process import (
    FirmwareConfig,
    find_micropython,
    firmware_argv,
    firmware_env,
    micropython_path,
    precompile,
)
from tendril_transactive.edge.resources import FIRMWARE_DIR
from tendril_transactive.hil.link import BenchLink

DEFAULT_BAUD = 115200
READ_TIMEOUT_S = 0.05
BOOT_LOOP_S = 0.5  # pyserial read timeout: bounds how long the reader thread blocks


class PowerCycleUnavailable(RuntimeError):
    """The driver has no way to cut the board's power (no hook configured)."""


class DeviceUnderTest(Protocol):
    """What a scenario needs of a board, whichever way it is connected."""

    name: str

    @property
    def link(self) -> BenchLink: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def power_cycle(self) -> None: ...

    def resets(self) -> int:
        """Restarts the bench did not ask for (watchdog) seen so far."""
        ...

    def log_text(self) -> str: ...


def bench_micropython_path(firmware_dir: Path = FIRMWARE_DIR) -> str:
    """MICROPYPATH for bench mode: the bench board first, the unix board's `machine` shim after it."""
    return micropython_path(firmware_dir, board="bench")


def precompile_bench(dest: Path, firmware_dir: Path = FIRMWARE_DIR) -> str:
    """The library, the bench board and the unix `machine` shim as .mpy under `dest`, as deployed
    (compiling source at import needs more heap than an ESP32 has); returns MICROPYPATH."""
    return precompile(dest, firmware_dir, board="bench")


def parse_device(spec: str) -> tuple[str, str | None]:
    """`unix` or `serial:/dev/ttyUSB0` -> (kind, port); ValueError with the accepted forms."""
    if spec == "unix":
        return "unix", None
    if spec.startswith("serial:") and len(spec) > len("serial:"):
        return "serial", spec[len("serial:"):]
    raise ValueError(f"device must be 'unix' or 'serial:/dev/ttyUSBn', got {spec!r}")


class _LinkedDriver:
    """What every driver shares: its bench link, there once the device is started."""

    name: str
    _link: BenchLink | None = None

    @property
    def link(self) -> BenchLink:
        if self._link is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._link


class UnixPortDriver(_LinkedDriver):
    def __init__(self, config: FirmwareConfig, workdir: Path, clock_env: str | None = None,
                 binary: str | None = None, heapsize: str | None = None, precompiled: bool = False) -> None:
        self.config = config
        self.heapsize = heapsize  # e.g. "52wK": an ESP32-sized heap (MicroPython -X heapsize)
        self.precompiled = precompiled  # run .mpy from mpy-cross, as deployed; needed with a small heap
        self._path = bench_micropython_path()
        self.name = f"unix:{config.device}"
        self.workdir = Path(workdir)
        self.clock_env = clock_env
        self.binary = binary or find_micropython()
        self.config_path = self.workdir / f"{config.device}.json"
        self.log_path = self.workdir / f"{config.device}.log"
        self.state_dir = config.state_dir if config.state_dir is not None else self.workdir / "flash"
        self.proc: subprocess.Popen[bytes] | None = None
        self._master: int | None = None
        self._link = None
        self._resets = 0
        self._spawned = 0.0
        self._restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.tty_path = ""

    def resets(self) -> int:
        return self._resets

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write(self.config_path, self.state_dir)
        if self.precompiled:
            self._path = precompile_bench(self.workdir / "mpy")
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing before pyserial configures the port
        self.tty_path = os.ttyname(slave)
        self._master = master
        port = serial.Serial(self.tty_path, DEFAULT_BAUD, timeout=READ_TIMEOUT_S)
        os.close(slave)  # pyserial holds its own descriptor of the slave
        self._link = BenchLink(port)
        self._spawn()
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name=f"supervise-{self.name}", daemon=True)
        self._supervisor.start()

    def _spawn(self) -> None:
        assert self._master is not None
        env = firmware_env(self._path, self.config_path, self.clock_env, {"TENDRIL_BENCH_FD": str(self._master)})
        self._spawned = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(firmware_argv(self.binary, self.heapsize), stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                         pass_fds=(self._master,))

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                proc = self.proc
                dead = proc is not None and proc.poll() is not None and not self._stopping.is_set()
                # A boot loop (crash at import, bad config) restarts at most twice a second.
                if dead and time.monotonic() - self._spawned > BOOT_LOOP_S:
                    self._resets += 1
                    self._spawn()
            time.sleep(0.02)

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)

    def power_cycle(self) -> None:
        with self._lock:
            self._kill()
            self._restarts += 1
            self._spawn()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2.0)
        with self._lock:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    self._kill()
        if self._link is not None:
            self._link.close()
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SerialDriver(_LinkedDriver):
    """A real board on a serial port; the board must run the firmware in bench mode."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD, power_cycle_cmd: str | None = None,
                 power_cycle_timeout_s: float = 30.0) -> None:
        if not port or not port.startswith("/dev/"):
            raise ValueError(f"serial port must be a device path like /dev/ttyUSB0, got {port!r}")
        if baud not in serial.Serial.BAUDRATES:
            raise ValueError(f"baud {baud} is not a standard rate ({', '.join(map(str, serial.Serial.BAUDRATES))})")
        self.port = port
        self.baud = baud
        self.name = f"serial:{port}"
        self.power_cycle_argv = shlex.split(power_cycle_cmd) if power_cycle_cmd else None
        self.power_cycle_timeout_s = power_cycle_timeout_s
        self._link = None

    def resets(self) -> int:
        return 0  # a real board resets itself; the boot event's reason tells why

    def start(self) -> None:
        self._link = BenchLink(serial.Serial(self.port, self.baud, timeout=READ_TIMEOUT_S))

    def power_cycle(self) -> None:
        if self.power_cycle_argv is None:
            raise PowerCycleUnavailable(f"{self.name}: no power-cycle hook (pass --power-cycle-cmd, e.g. a USB relay)")
        subprocess.run(self.power_cycle_argv, check=True, timeout=self.power_cycle_timeout_s)

    def stop(self) -> None:
        if self._link is not None:
            self._link.close()

    def log_text(self) -> str:
        return ""  # the board's log goes to its own console

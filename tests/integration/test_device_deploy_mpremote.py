"""`tendril device deploy` with the real mpremote against the MicroPython unix port's REPL.

No ESP32 here: the "board" is `micropython` (unix port) whose REPL sits on a pseudo-terminal
made by socat, its working directory standing in for the board's flash. mpremote drives it
exactly as a board: raw REPL, then its filesystem commands. Two differences, both in what
this can show: mpremote must `resume` (its usual soft reset sends Ctrl-D, which ends the
unix port's process), and the final `reset` (machine.reset()) does nothing here, since the
unix port has no machine.reset: the REPL reports the AttributeError and stays up.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tendril_wire

from tendril_transactive.cloud.cli.main import main
from tendril_transactive.cloud.devices import deploy as device_deploy
from tendril_transactive.cloud.devices.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
PTY_TIMEOUT_S = 10.0
MPREMOTE_TIMEOUT_S = 120.0
SETTINGS = {"broker_host": "10.0.0.2", "broker_port": 1883, "min_off_s": 300,
            "board": {"wifi_ssid": "home", "wifi_password": "pw"}}


@pytest.fixture()
def board(tmp_path: Path, micropython: str, socat: str) -> Iterator[tuple[str, Path]]:
    """(serial port, flash folder) of a unix-port REPL on a pty."""
    flash = tmp_path / "flash"
    flash.mkdir()
    port = tmp_path / "tty"
    env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
    with (tmp_path / "socat.log").open("wb") as log:
        proc = subprocess.Popen([socat, f"PTY,raw,echo=0,link={port}", f"EXEC:{micropython},pty,raw,echo=0,stderr"],
                                cwd=flash, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PTY_TIMEOUT_S
        while not port.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"socat made no pty within {PTY_TIMEOUT_S} s: {(tmp_path / 'socat.log').read_text()}")
            time.sleep(0.05)
        yield str(port), flash
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def remote(mpremote: str, port: str, code: str) -> str:
    """Run `code` on the board through mpremote; its printed output."""
    done = subprocess.run([mpremote, "connect", port, "resume", "exec", code], capture_output=True, text=True,
                          timeout=MPREMOTE_TIMEOUT_S)
    assert done.returncode == 0, f"mpremote exec failed: {done.stdout}\n{done.stderr}"
    return done.stdout


def deploy(registry: Path, port: str, build: Path, settings: Path, *extra: str) -> int:
    return main(["device", "--registry", str(registry), "deploy", "--site", "s1", "--device", "pump",
                 "--port", port, "--settings", str(settings), "--build", str(build), "--resume", *extra])


def test_mpremote_executes_on_the_unix_port_repl(board: tuple[str, Path], mpremote: str) -> None:
    port, _ = board
    assert remote(mpremote, port, "print(1+1)").strip() == "2"


def test_deploy_copies_compiled_firmware_board_and_config(
        board: tuple[str, Path], mpremote: str, mpy_cross: str, tmp_path: Path) -> None:
    port, flash = board
    reg = Registry(tmp_path / "reg")
    made = reg.add("s1", "pump", "relay")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    build = tmp_path / "build"

    assert deploy(reg.root, port, build, settings) == 0

    for rel in device_deploy.library_sources("esp32", FIRMWARE):
        mpy = rel.with_suffix(".mpy")
        assert (flash / "lib" / mpy).read_bytes() == (build / "lib" / mpy).read_bytes(), mpy
    assert not list((flash / "lib" / "tendril_fw").glob("bench_*")), "a production board gets no bench modules"
    assert (flash / "board.py").read_bytes() == (FIRMWARE / "boards" / "esp32" / "board.py").read_bytes()
    assert (flash / "main.py").read_bytes() == (FIRMWARE / "main.py").read_bytes()
    config = json.loads((flash / "config.json").read_text())
    assert config["key_hex"] == made.key_hex and config["password"] == made.mqtt_password
    assert config["min_off_s"] == 300 and config["board"]["wifi_ssid"] == "home"
    assert not (build / "config.json").exists(), "the secrets must not stay in the build folder"

    # On the board: the deployed .mpy load (same bytecode version) and the config parses.
    out = remote(mpremote, port, "import sys, json\nsys.path.insert(0, 'lib')\n"
                                 "from tendril_fw import config, node\n"
                                 "c = config.parse(json.load(open('config.json')))\n"
                                 "print(c['site'], c['device'], c['type'], len(c['key']), node.__file__)")
    assert out.split() == ["s1", "pump", "relay", "32", "lib/tendril_fw/node.mpy"]


def test_redeploy_replaces_the_library_and_keeps_the_flash_state(
        board: tuple[str, Path], mpremote: str, mpy_cross: str, tmp_path: Path) -> None:
    """Stale modules and sources go (a .py would shadow its .mpy); state_dir stays (seq counters)."""
    port, flash = board
    reg = Registry(tmp_path / "reg")
    reg.add("s1", "pump", "relay")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    (flash / "lib" / "tendril_fw").mkdir(parents=True)
    (flash / "lib" / "tendril_fw" / "gone.mpy").write_bytes(b"old")
    (flash / "lib" / "tendril_fw" / "bench_mode.mpy").write_bytes(b"old")  # it was a bench board before
    (flash / "lib" / "tendril_fw" / "node.py").write_text("raise ImportError('stale source')\n")
    (flash / "lib" / "tendril_wire.py").write_text("raise ImportError('stale source')\n")
    (flash / "lib" / "other.py").write_text("x = 1\n")
    (flash / "state").mkdir()
    (flash / "state" / "seq").write_text("128")

    assert deploy(reg.root, port, tmp_path / "build", settings, "--no-reset") == 0

    names = sorted(p.name for p in (flash / "lib" / "tendril_fw").iterdir())
    assert names == sorted(m.with_suffix(".mpy").name for m in device_deploy.library_sources("esp32", FIRMWARE)[1:])
    assert not any(name.startswith("bench_") for name in names)
    assert not (flash / "lib" / "tendril_wire.py").exists() and (flash / "lib" / "tendril_wire.mpy").exists()
    assert (flash / "lib" / "other.py").read_text() == "x = 1\n"
    assert (flash / "state" / "seq").read_text() == "128"
    out = remote(mpremote, port, "import sys\nsys.path.insert(0, 'lib')\nimport tendril_wire\n"
                                 "print(tendril_wire.device_topic('s1', 'pump', 'cmd'))")
    assert out.strip() == tendril_wire.device_topic("s1", "pump", "cmd")

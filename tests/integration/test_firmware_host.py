"""edge.firmware_process as the one place that runs firmware on a host: the config file that
holds key_hex is 0600 however it was before (issue 13 finding 8), and the unix and bench boards
get their modules and MICROPYPATH from the same helpers the deploy tool compiles with."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from tendril_transactive.edge.firmware_process import (
    CompileError,
    FirmwareConfig,
    FirmwareProcess,
    board_sources,
    compile_mpy,
    micropython_path,
    precompile,
    write_config,
)
from tendril_transactive.edge.resources import FIRMWARE_DIR

pytestmark = [pytest.mark.integration, pytest.mark.firmware]


def _relay(tmp_path: Path) -> FirmwareConfig:
    return FirmwareConfig(site="s1", device="r1", type="relay", broker_host="127.0.0.1", broker_port=1,
                          key=secrets.token_bytes(16), relay_file=tmp_path / "r1.relay")


def test_config_with_the_key_is_written_owner_only_even_over_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text("{}")
    path.chmod(0o644)  # an older tool's file
    write_config(path, {"key_hex": "00" * 16})
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().count("key_hex") == 1


def test_firmware_process_writes_its_config_0600_and_the_node_boots_from_it(tmp_path: Path, micropython: str) -> None:
    config = _relay(tmp_path)
    proc = FirmwareProcess(config, tmp_path / "node")
    proc.start()
    try:
        assert proc.config_path.stat().st_mode & 0o777 == 0o600
        assert config.key.hex() in proc.config_path.read_text()
        # the node parsed it: the relay writes its safe default at boot (no broker needed)
        deadline = time.monotonic() + 20.0
        while not (config.relay_file is not None and config.relay_file.exists()):
            if time.monotonic() > deadline or not proc.alive:
                pytest.fail(f"relay never booted from its 0600 config\n{proc.log_text()[-2000:]}")
            time.sleep(0.05)
        assert config.relay_file.read_text() == "0"
    finally:
        proc.stop()


def test_bench_board_modules_and_path(tmp_path: Path, mpy_cross: str) -> None:
    bench = [p.relative_to(FIRMWARE_DIR / "boards").as_posix() for p in board_sources("bench")]
    assert "bench/board.py" in bench and "unix/machine.py" in bench and "unix/board.py" not in bench
    parts = micropython_path(board="bench").split(":")
    assert parts[0] == ".frozen" and parts.index(str(FIRMWARE_DIR / "boards" / "bench")) < parts.index(
        str(FIRMWARE_DIR / "boards" / "unix"))
    path = precompile(tmp_path / "mpy", board="bench")
    assert sorted(p.name for p in (tmp_path / "mpy" / "board").iterdir()) == ["board.mpy", "machine.mpy"]
    assert (tmp_path / "mpy" / "lib" / "tendril_fw" / "seqstore.mpy").exists()
    assert path.split(":")[:3] == [".frozen", str(tmp_path / "mpy" / "lib"), str(tmp_path / "mpy" / "board")]
    with pytest.raises(ValueError, match="host board"):
        micropython_path(board="esp32")


def test_a_module_mpy_cross_refuses_is_named(tmp_path: Path, mpy_cross: str) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def f(:\n")
    with pytest.raises(CompileError, match=r"broken\.py"):
        compile_mpy([(bad, tmp_path / "out" / "broken.py")], compiler=mpy_cross)

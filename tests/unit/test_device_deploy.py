"""`tendril device deploy`: the device's config from the registry, and the planned mpremote commands."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from tendril_transactive.cloud.cli.main import main
from tendril_transactive.cloud.devices import deploy as device_deploy
from tendril_transactive.cloud.devices.deploy import DeployError, device_config, mpremote_commands
from tendril_transactive.cloud.devices.registry import Registry

pytestmark = pytest.mark.unit

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
SETTINGS: dict[str, Any] = {"broker_host": "10.0.0.2", "broker_port": 1883, "min_off_s": 300,
                            "board": {"wifi_ssid": "home", "wifi_password": "pw", "relay_pin": 25}}


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg")
    reg.add("s1", "pump", "relay")
    return reg


def test_config_takes_identity_and_secrets_from_the_registry(registry: Registry) -> None:
    doc = device_config(registry, "s1", "pump", SETTINGS)
    made = registry.secrets_for("s1", "pump")
    assert doc["key_hex"] == made.key_hex and doc["password"] == made.mqtt_password
    assert (doc["site"], doc["device"], doc["type"], doc["username"]) == ("s1", "pump", "relay", "s1.pump")
    assert doc["min_off_s"] == 300 and doc["board"]["relay_pin"] == 25


def test_a_registry_with_a_broker_ca_deploys_tls_trusting_it(registry: Registry) -> None:
    """Issue 13: the registry's CA (made by mosquitto-config) goes onto the board, and TLS is on
    unless the settings turn it off; an operator's own CA in the settings wins."""
    import datetime

    from tendril_transactive.cloud.devices import broker_tls

    ca = broker_tls.registry_ca(registry.root, datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC))
    plain = {k: v for k, v in SETTINGS.items() if k != "broker_port"}
    doc = device_config(registry, "s1", "pump", plain)
    assert doc["tls"] is True and doc["broker_port"] == 8883
    assert doc["ca"] == ca.cert.decode() and "PRIVATE KEY" not in doc["ca"]
    assert "ca" not in device_config(registry, "s1", "pump", {**SETTINGS, "tls": False})
    own = device_config(registry, "s1", "pump", {**SETTINGS, "ca": "/flash/own-ca.pem"})
    assert own["ca"] == "/flash/own-ca.pem" and own["broker_port"] == 1883


def test_a_registry_without_a_broker_ca_leaves_tls_to_the_settings(registry: Registry) -> None:
    doc = device_config(registry, "s1", "pump", SETTINGS)
    assert "tls" not in doc and "ca" not in doc


@pytest.mark.parametrize("key", device_deploy.FROM_REGISTRY)
def test_settings_cannot_override_identity_or_secrets(registry: Registry, key: str) -> None:
    with pytest.raises(DeployError, match=f"may not set {key}.*device registry"):
        device_config(registry, "s1", "pump", {**SETTINGS, key: "x"})


@pytest.mark.parametrize(("site", "device", "settings", "board", "message"), [
    ("s1", "other", SETTINGS, "esp32", "'other' at site 's1' is not registered"),
    ("s1", "pump", {**SETTINGS, "min_of_s": 1}, "esp32", "unknown config key 'min_of_s'"),
    ("s1", "pump", {k: v for k, v in SETTINGS.items() if k != "broker_host"}, "esp32", "missing.*'broker_host'"),
    ("s1", "pump", {**SETTINGS, "min_off_s": -1}, "esp32", "min_off_s must be a number >= 0"),
    ("s1", "pump", {**SETTINGS, "board": {"wifi_password": ""}}, "esp32_bench", "needs board.wifi_ssid"),
    ("s1", "pump", {**SETTINGS, "board": {"wifi_ssid": "home"}}, "esp32", "needs board.wifi_password"),
    ("s1", "pump", SETTINGS, "unix", "board must be one of esp32, esp32_bench"),
])
def test_bad_deployments_are_refused_with_a_reason(registry: Registry, site: str, device: str,
                                                   settings: dict[str, Any], board: str, message: str) -> None:
    with pytest.raises(DeployError, match=message):
        device_config(registry, site, device, settings, board)


def _is_bench(module: Path) -> bool:
    return module.name.startswith("bench_")


def test_the_bench_board_gets_every_module_of_the_firmware_core() -> None:
    modules = device_deploy.library_sources("esp32_bench", FIRMWARE)
    assert modules[0] == Path("tendril_wire.py")
    on_disk = {p.relative_to(FIRMWARE / "lib") for p in (FIRMWARE / "lib" / "tendril_fw").glob("*.py")}
    assert set(modules[1:]) == on_disk and Path("tendril_fw/node.py") in on_disk
    assert {m.name for m in modules if _is_bench(m)} == {"bench_link.py", "bench_mode.py", "bench_uart.py"}


def test_a_production_board_gets_the_core_without_the_bench_modules() -> None:
    every = device_deploy.library_sources("esp32_bench", FIRMWARE)
    assert device_deploy.library_sources("esp32", FIRMWARE) == [m for m in every if not _is_bench(m)]


def test_library_sources_refuses_an_unknown_board() -> None:
    with pytest.raises(DeployError, match="board must be one of"):
        device_deploy.library_sources("unix", FIRMWARE)


def _imported_modules(source: Path) -> set[str]:
    """tendril_fw modules `source` imports, anywhere in it (a lazy import in a method counts) but
    for `if TYPE_CHECKING:` blocks, which the device never runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module == "tendril_fw":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tendril_fw."):
            found.add(str(node.module).split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tendril_fw."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source.read_text()))
    return found


@pytest.mark.parametrize("board", device_deploy.BOARDS)
def test_every_module_the_board_can_import_is_deployed(board: str) -> None:
    """The bench filter must not leave a production board short: follow the imports from main.py
    and the board's board.py through the package, and each one reached must be on the copy list."""
    deployed = {m.stem for m in device_deploy.library_sources(board, FIRMWARE)[1:]}
    package = FIRMWARE / "lib" / "tendril_fw"
    todo = _imported_modules(FIRMWARE / "main.py") | _imported_modules(FIRMWARE / "boards" / board / "board.py")
    reached: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo |= _imported_modules(package / f"{name}.py")
    assert {"node", "config", "wifi"} <= reached
    assert reached <= deployed, f"{board} imports {sorted(reached - deployed)} but deploy does not copy them"
    assert any(name.startswith("bench_") for name in reached) == (board == "esp32_bench")


def _planned_package(out: str) -> list[str]:
    """The files the dry run's copy session puts into lib/tendril_fw/."""
    argv = shlex.split(out)
    end = argv.index(":lib/tendril_fw/")
    start = max(i for i in range(end) if argv[i] == "cp") + 1
    return [Path(a).name for a in argv[start:end]]


@pytest.mark.parametrize("board", device_deploy.BOARDS)
def test_dry_run_plans_the_bench_modules_only_for_the_bench_board(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str], board: str) -> None:
    (tmp_path / "settings.json").write_text(json.dumps(SETTINGS))
    rc = main(["device", "--registry", str(registry.root), "deploy", "--site", "s1", "--device", "pump",
               "--port", "/dev/ttyUSB0", "--settings", str(tmp_path / "settings.json"), "--board", board,
               "--build", str(tmp_path / "build"), "--dry-run"])
    assert rc == 0
    planned = _planned_package(capsys.readouterr().out)
    assert "node.mpy" in planned and "wifi.mpy" in planned
    bench = sorted(name for name in planned if name.startswith("bench_"))
    assert bench == (["bench_link.mpy", "bench_mode.mpy", "bench_uart.mpy"] if board == "esp32_bench" else [])


def test_one_session_copies_everything_then_a_second_resets() -> None:
    build = Path("/b")
    modules = [Path("tendril_wire.py"), Path("tendril_fw/__init__.py"), Path("tendril_fw/node.py")]
    copy, reset = mpremote_commands("mpremote", "/dev/ttyUSB0", build, modules)
    assert copy == ["mpremote", "connect", "/dev/ttyUSB0", "exec", device_deploy.PREPARE_LIB,
                    "+", "fs", "cp", "/b/lib/tendril_wire.mpy", ":lib/",
                    "+", "fs", "cp", "/b/lib/tendril_fw/__init__.mpy", "/b/lib/tendril_fw/node.mpy", ":lib/tendril_fw/",
                    "+", "fs", "cp", "/b/board.py", ":board.py",
                    "+", "fs", "cp", "/b/main.py", ":main.py",
                    "+", "fs", "cp", "/b/config.json", ":config.json"]
    assert reset == ["mpremote", "connect", "/dev/ttyUSB0", "reset"]
    resumed = mpremote_commands("mpremote", "/dev/pts/3", build, modules, resume=True, reset=False)
    assert len(resumed) == 1 and resumed[0][:4] == ["mpremote", "connect", "/dev/pts/3", "resume"]
    assert resumed[0][4:] == copy[3:]


def test_the_board_is_prepared_without_touching_its_flash_state() -> None:
    """The prepare step may only touch the library: state_dir holds seq counters and the backlog."""
    script = device_deploy.PREPARE_LIB
    compile(script, "prepare", "exec")  # valid Python (MicroPython parses the same subset)
    removed = [line for line in script.splitlines() if "remove" in line or "rmdir" in line]
    assert removed and all("lib/tendril_" in line or "os.remove(n)" in line for line in removed)
    assert "state" not in script


def test_dry_run_prints_the_exact_commands_and_writes_nothing(registry: Registry, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.json").write_text(json.dumps(SETTINGS))
    rc = main(["device", "--registry", str(registry.root), "deploy", "--site", "s1", "--device", "pump",
               "--port", "/dev/ttyUSB0", "--settings", "settings.json", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    build = tmp_path / "build" / "deploy" / "s1.pump"
    try:
        mpremote = device_deploy.find_mpremote()
    except DeployError:
        mpremote = "mpremote"
    expected = mpremote_commands(mpremote, "/dev/ttyUSB0", build, device_deploy.library_sources("esp32"))
    assert out == device_deploy.show(expected) + "\n"
    assert shlex.split(out.split(" exec ")[0])[1:] == ["connect", "/dev/ttyUSB0"]
    assert not (tmp_path / "build").exists()
    made = registry.secrets_for("s1", "pump")
    assert made.key_hex not in out and made.mqtt_password not in out


def test_cli_reports_a_bad_deployment_without_a_traceback(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["device", "--registry", str(registry.root), "deploy", "--site", "s1", "--device", "pump",
               "--port", "/dev/ttyUSB0", "--broker-host", "10.0.0.2", "--broker-port", "1883", "--dry-run"])
    assert rc == 2
    assert "needs board.wifi_ssid" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    rc = main(["device", "--registry", str(registry.root), "deploy", "--site", "s1", "--device", "pump",
               "--port", "/dev/ttyUSB0", "--settings", str(tmp_path / "bad.json"), "--dry-run"])
    assert rc == 2
    assert "settings must be a JSON object" in capsys.readouterr().err

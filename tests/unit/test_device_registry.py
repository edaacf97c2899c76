"""Device registry and Mosquitto auth files: validation, secrecy, and the hash format."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import tendril_wire as wire

from tendril_transactive.cloud.devices.mosquitto import ServiceUser, acl_text, password_line
from tendril_transactive.cloud.devices.registry import DeviceRecord, Registry, RegistryError

pytestmark = pytest.mark.unit


def test_add_persists_devices_and_keeps_secrets_private(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    made = reg.add("site-1", "pump", "relay")
    assert len(made.key) == 32 and len(made.mqtt_password) >= 24
    assert "hidden" in repr(made) and made.key_hex not in repr(made)
    again = Registry(tmp_path)
    assert ("site-1", "pump") in again
    assert again.secrets_for("site-1", "pump") == made
    secret_file = tmp_path / "secrets" / "site-1.pump.json"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert made.key_hex not in (tmp_path / "devices.json").read_text()


def test_two_devices_never_share_a_key(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    a, b = reg.add("s", "a", "meter"), reg.add("s", "b", "meter")
    assert a.key_hex != b.key_hex and a.mqtt_password != b.mqtt_password


@pytest.mark.parametrize(("site", "device", "type_", "message"), [
    ("Site", "d", "meter", "invalid id"),
    ("s", "d/x", "meter", "invalid id"),
    ("s", "d", "toaster", "device type must be one of"),
])
def test_bad_devices_are_refused_with_a_reason(tmp_path: Path, site: str, device: str, type_: str,
                                               message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        Registry(tmp_path).add(site, device, type_)


def test_duplicates_and_unknown_devices_are_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.add("s", "d", "meter")
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("s", "d", "relay")
    with pytest.raises(RegistryError, match="not registered"):
        reg.remove("s", "other")
    reg.remove("s", "d")
    assert not (tmp_path / "secrets" / "s.d.json").exists()


def test_a_corrupt_registry_file_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "devices.json").write_text(json.dumps({"version": 1, "devices": [{"site": "s"}]}))
    with pytest.raises(RegistryError, match="device #0 must have site, device and type"):
        Registry(tmp_path)
    (tmp_path / "devices.json").write_text("{")
    with pytest.raises(RegistryError, match="not a readable JSON"):
        Registry(tmp_path)


def test_acl_grants_each_device_only_its_own_topics() -> None:
    text = acl_text([DeviceRecord("s1", "pump", "relay")], [ServiceUser("tendril-ingest", "x", "ingest")])
    block = text.split("\n\n")[0].splitlines()
    assert block[0] == "user s1.pump"
    assert f"topic read {wire.device_topic('s1', 'pump', wire.CMD)}" in block
    assert f"topic write {wire.device_topic('s1', 'pump', wire.TELEMETRY)}" in block
    assert not any("+" in line or "#" in line for line in block)
    with pytest.raises(ValueError, match="unknown service role"):
        acl_text([], [ServiceUser("x", "y", "admin")])


def test_password_line_matches_mosquitto_passwd(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not found: install the Debian package 'mosquitto'")
    subprocess.run([tool, "-c", "-b", str(tmp_path / "pw"), "alice", "s3cret"], check=True)
    theirs = (tmp_path / "pw").read_text().strip()
    salt = base64.b64decode(theirs.split("$")[3])
    assert password_line("alice", "s3cret", salt=salt) == theirs
    with pytest.raises(ValueError, match="may not contain"):
        password_line("a:b", "x")

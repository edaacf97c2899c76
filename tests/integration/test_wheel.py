"""A built wheel (`pip install tendril_transactive-*.whl`, not an editable checkout) works on its own: it
carries the wire contract, the firmware tree and the bundled data, and the CLI finds them.
The wheel is unpacked and put first on the path, so nothing can come from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_contract_firmware_and_data(tmp_path: Path, mpy_cross: str) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
         str(REPO)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("tendril_transactive-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("TENDRIL_CLOCK", None)

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    # one import root and the firmware's own top-level modules, nothing generic (issue 12)
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"tendril_transactive", "tendril_wire.py", "tendril_fw"}
    root = site / "tendril_transactive"
    where = run("-c", "import tendril_transactive.edge as edge, tendril_wire, tendril_fw.node; "
                      "from tendril_transactive.edge.resources import DATA_DIR, FIRMWARE_DIR; "
                      "print(edge.__file__, tendril_wire.__file__, tendril_fw.node.__file__, FIRMWARE_DIR, DATA_DIR)")
    paths = [Path(p) for p in where.split()]
    assert all(p.is_relative_to(site) for p in paths), where
    assert paths[3] == root / "resources" / "firmware" and (paths[3] / "main.py").is_file()
    assert not (site / "edge").exists() and not (site / "cloud").exists()
    bill = run("-m", "tendril_transactive.cloud.cli", "bill", "--site", "coastal", "--month", "2024-03",
               "--out", str(tmp_path / "bill"))
    assert "202.45" in bill, bill  # the bundled Green Button file, tariff and prices (README, "A monthly bill")
    path = run("-c", f"from pathlib import Path; from tendril_transactive.edge.firmware_process import precompile; "
                     f"print(precompile(Path({str(tmp_path / 'mpy')!r})))")  # fmt: skip
    assert str(root / "resources" / "firmware") in path
    assert (tmp_path / "mpy" / "lib" / "tendril_fw" / "node.mpy").is_file()

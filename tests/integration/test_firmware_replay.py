"""Issue 13 finding 4 against the real firmware (MicroPython unix port) and Mosquitto: after a
legitimate OFF and a reboot (the process killed and started again over the same flash
directory), replaying the old, still valid ON is refused and the relay stays off."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
import tendril_wire as tw
from test_firmware_safety import SITE, Watcher, wait_file

from tendril_transactive.edge.firmware_process import FirmwareConfig, FirmwareProcess
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.firmware]

DEVICE = "pump-replay"


def test_an_old_on_replayed_after_reboot_is_refused_and_the_relay_stays_off(
    mosquitto: Mosquitto, tmp_path: Path, micropython: str,
) -> None:
    key = secrets.token_bytes(32)
    relay_file = tmp_path / "pump.relay"
    config = FirmwareConfig(site=SITE, device=DEVICE, type="relay", broker_host=LOOPBACK,
                            broker_port=mosquitto.port, key=key, telemetry_s=5.0, state_s=30.0,
                            relay_file=relay_file)
    proc = FirmwareProcess(config, tmp_path / "node")
    watcher = Watcher(mosquitto.port, DEVICE)
    log = lambda: proc.log_text()[-3000:]  # noqa: E731

    def ack_for(cmd_id: str) -> dict[str, object]:
        return watcher.wait_for(f"ack of {cmd_id}", lambda k, m: k == tw.ACK and m["id"] == cmd_id, log)

    def online() -> None:
        watcher.wait_for("online", lambda k, m: k == tw.STATUS and m["state"] == tw.ONLINE, log)

    try:
        proc.start()
        online()
        now = time.time()
        # demo commands live 70 minutes: the old ON is still unexpired when it is replayed
        old_on = tw.encode(tw.CMD, tw.make_command(key, SITE, DEVICE, "on-1", 1, now, now + 4200, 1))
        off = tw.encode(tw.CMD, tw.make_command(key, SITE, DEVICE, "off-2", 2, now + 1, now + 4200, 0))
        watcher.publish(DEVICE, old_on)
        assert ack_for("on-1")["ok"] is True
        wait_file(relay_file, "1")
        watcher.publish(DEVICE, off)
        assert ack_for("off-2")["ok"] is True
        wait_file(relay_file, "0")

        proc.kill()  # power cut: no goodbye, the broker publishes the will
        watcher.wait_for("offline", lambda k, m: k == tw.STATUS and m["state"] == tw.OFFLINE, log)
        proc.start()  # boots over the same flash (state_dir)
        online()

        watcher.publish(DEVICE, old_on)
        replayed_on = ack_for("on-1")
        assert (replayed_on["ok"], replayed_on["reason"], replayed_on["relay"]) == (False, tw.REFUSE_OUT_OF_ORDER, 0)
        watcher.publish(DEVICE, off)
        replayed_off = ack_for("off-2")
        assert (replayed_off["ok"], replayed_off["reason"]) == (False, tw.REFUSE_REPLAYED)
        assert relay_file.read_text() == "0"
        # the next legitimate command is still obeyed
        fresh = tw.make_command(key, SITE, DEVICE, "on-3", 3, time.time(), time.time() + 600, 1)
        watcher.publish(DEVICE, tw.encode(tw.CMD, fresh))
        assert ack_for("on-3")["ok"] is True
        wait_file(relay_file, "1")
        assert (proc.state_dir / "cmd_seq").exists()  # what refused the replays: the flash
    finally:
        watcher.close()
        proc.stop()

"""The bench link under damage: corrupted and truncated frames, injected both ways through a real
pty, are counted and ignored -- never applied -- and the link keeps working."""

from __future__ import annotations

import os
import secrets
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]
from tendril_fw.bench_link import Endpoint, encode_frame

from tendril_transactive.edge.clock import SimClock
from tendril_transactive.edge.firmware_process import FirmwareConfig
from tendril_transactive.hil.dut import SerialDriver, UnixPortDriver
from tendril_transactive.hil.link import LinkTimeout
from tendril_transactive.hil.servers import LOOPBACK, Mosquitto

pytestmark = pytest.mark.hil


@pytest.fixture()
def relay_dut(tmp_path: Path, mosquitto: Mosquitto, micropython: str) -> Iterator[UnixPortDriver]:
    config = FirmwareConfig(site="hil", device="linktest", type="relay", broker_host=LOOPBACK,
                            broker_port=mosquitto.port, key=secrets.token_bytes(32),
                            relay_file=tmp_path / "relay.out", telemetry_s=10.0, reconnect_max_s=1.0)
    dut = UnixPortDriver(config, tmp_path / "dut", SimClock(sim_origin=1.767e9, speed=10).env_value(), micropython)
    dut.start()
    try:
        dut.link.wait_event("boot", 10.0)
        yield dut
    finally:
        dut.stop()


def _flip(frame: bytes, pos: int) -> bytes:
    bad = bytearray(frame)
    bad[pos] ^= 0x01
    return bytes(bad)


def test_device_counts_and_ignores_corrupt_and_truncated_frames(relay_dut: UnixPortDriver) -> None:
    link = relay_dut.link
    assert link.ping() < 1.0
    assert relay_dut.config_path.stat().st_mode & 0o777 == 0o600  # it holds key_hex (issue 13 finding 8)
    before = link.get()["counters"]
    # Frames that would press the button and change the meter reading if they were misread.
    press = encode_frame(900, b'{"op": "set", "button": 1, "power_w": 9999}')
    corrupt = [_flip(press, pos) for pos in (0, 5, 20, len(press) - 3)]  # seq, payload, payload, crc
    truncated_then_good = press[:25] + encode_frame(901, b'{"op": "set", "button": 0}')  # joined: bad CRC
    overrun = b"\xff" * 3000 + b"\n"
    link.write_raw(b"".join(corrupt) + truncated_then_good + overrun + b"not a frame at all\n")
    state = link.get()  # a good request after the damage is answered
    counters = state["counters"]
    assert state["inputs"]["button"] is None and state["inputs"]["power_w"] == 0.0, "a damaged frame was applied"
    assert state["relay"] == 0
    dropped = {k: counters[k] - before[k] for k in ("bad_crc", "malformed", "overrun")}
    assert dropped["bad_crc"] + dropped["malformed"] == len(corrupt) + 2  # + the joined one + the text line
    assert dropped["overrun"] == 1
    assert counters["frames"] - before["frames"] == 1  # only the get itself


def test_tail_of_a_frame_that_never_ends_does_not_hang_the_device(relay_dut: UnixPortDriver) -> None:
    link = relay_dut.link
    link.write_raw(encode_frame(5, b'{"op": "set", "button": 1}')[:12])  # no LF, ever
    with pytest.raises(LinkTimeout):
        link.get(timeout=0.5)  # its request joins the unfinished line: dropped, so no reply
    state = link.get()  # the next one is clean again
    assert state["inputs"]["button"] is None
    assert state["counters"]["bad_crc"] + state["counters"]["malformed"] >= 1


def test_bench_counts_and_ignores_damaged_frames_from_a_device(tmp_path: Path) -> None:
    """SerialDriver on a pty slave path (as on /dev/ttyUSB0); a fake device on the master answers
    after sending damaged frames first."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    device = Endpoint()
    stop = threading.Event()

    def fake_device() -> None:
        while not stop.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            for seq, _msg in device.feed(data):
                _s, good = device.encode({"re": seq, "ok": True})
                relay = device.encode({"ev": "relay", "relay": 1, "t": 1.0})[1]
                os.write(master, _flip(relay, 3) + good[:-1] + b"\r\n" + b"12 {} deadbeef\n" + good[:9])

    thread = threading.Thread(target=fake_device, daemon=True)
    thread.start()
    driver = SerialDriver(path, baud=115200)
    driver.start()
    try:
        assert driver.link.ping() < 5.0
        counts = driver.link.counters()
        assert counts["bad_crc"] == 2 and counts["frames"] == 1  # flipped event, fake CRC; one good reply
        assert driver.link.history == [], "a damaged event reached the bench"
    finally:
        stop.set()
        driver.stop()
        os.close(master)
        os.close(slave)


def test_serial_driver_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="device path"):
        SerialDriver("COM3")
    with pytest.raises(ValueError, match="baud"):
        SerialDriver("/dev/ttyUSB0", baud=123)
    from tendril_transactive.hil.dut import PowerCycleUnavailable

    with pytest.raises(PowerCycleUnavailable, match="power-cycle hook"):
        SerialDriver("/dev/ttyUSB0").power_cycle()
    SerialDriver("/dev/ttyUSB0", power_cycle_cmd="true").power_cycle()  # the hook runs
    with pytest.raises(serial.SerialException):
        SerialDriver("/dev/ttyUSB-nonexistent").start()

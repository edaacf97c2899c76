# The ESP32 boards' network: joining the access point, then the clock from NTP. The board
# injects its network.WLAN and the ntptime module, so this stays free of `network` and
# `machine` (the unix port's link is a shim with nothing to join, its clock the host's).

import asyncio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

JOIN_TIMEOUT_S = 20


async def join(wlan, ssid, password, timeout_s):
    # type: (Any, str, str, float) -> None
    """Connect `wlan` unless it already is; OSError if it has not within `timeout_s`."""
    if wlan.isconnected():
        return
    wlan.active(True)
    wlan.connect(ssid, password)
    for _ in range(int(timeout_s * 10)):
        if wlan.isconnected():
            return
        await asyncio.sleep(0.1)
    raise OSError("Wi-Fi %r did not connect" % ssid)


async def network_up(board, ntptime):
    # type: (Any, Any) -> None
    """A board's network_up(): join the config's access point (board.wlan), then set the clock
    by NTP once per boot (board.synced). OSError from either: the uplink retries."""
    hw = board.cfg["board"]
    await join(board.wlan, hw["wifi_ssid"], hw["wifi_password"], JOIN_TIMEOUT_S)
    if not board.synced:
        # Readings before NTP would carry a 2000-01-01 timestamp, which the wire
        # contract rejects; the session does not start until the clock is right.
        ntptime.host = hw.get("ntp_host", "pool.ntp.org")
        ntptime.settime()
        board.synced = True

# Joining the access point, for the ESP32 boards: the board injects its network.WLAN, so this
# stays free of the `network` module (the unix port's link is a shim with nothing to join).

import asyncio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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

# Firmware entry point, the same on every board: `board` is the board's own module
# (firmware/boards/<name>/board.py, copied to the device's root on an ESP32).
#
# Memory: imports run one at a time with a collection in between, and the collector
# runs early (gc.threshold) rather than when the heap is exhausted, so the small ESP32
# heap does not fragment into pieces too small for the MQTT buffers.

import gc
import sys

gc.collect()
if hasattr(gc, "threshold"):
    gc.threshold(4096)

import asyncio  # noqa: E402

gc.collect()
import board  # noqa: E402

gc.collect()
from tendril_fw.config import ConfigError  # noqa: E402
from tendril_fw.node import Node  # noqa: E402

gc.collect()


def main():
    # type: () -> None
    try:
        hw = board.Board()
    except ConfigError as exc:
        print("tendril: bad configuration:", exc)
        sys.exit(2)
    hw.log("tendril %s %s %s/%s starting" % (hw.cfg["fw_version"], hw.cfg["type"], hw.cfg["site"],
                                             hw.cfg["device"]))
    node = Node(hw, hw.cfg)
    gc.collect()
    asyncio.run(node.run())


main()

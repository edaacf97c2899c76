# Firmware entry point, the same on every board: `board` is the board's own module
# (firmware/boards/<name>/board.py, copied to the device's root on an ESP32).
#
# Memory: imports run one at a time with a collection in between, and the collector
# runs early (gc.threshold) rather than only when the heap is exhausted, so a small
# ESP32 heap does not fragment into pieces too small for the MQTT buffers.

import gc
import sys

gc.collect()
if hasattr(gc, "threshold"):  # collect after 1/16 of the heap was allocated
    gc.threshold(max(4096, (gc.mem_free() + gc.mem_alloc()) // 16))

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

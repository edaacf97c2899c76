# Firmware entry point, the same on every board: `board` is the board's own module
# (firmware/boards/<name>/board.py, copied to the device's root on an ESP32).
#
# Memory: imports run one at a time with a collection in between, the collector runs
# early (gc.threshold) rather than only when the heap is exhausted, so a small ESP32
# heap does not fragment into pieces too small for the MQTT buffers, and the config
# checker (~6 KB of code) is unloaded once the config is parsed.

import gc
import sys

gc.collect()
if hasattr(gc, "threshold"):  # collect after 1/16 of the heap was allocated
    gc.threshold(max(4096, (gc.mem_free() + gc.mem_alloc()) // 16))

import asyncio  # noqa: E402

gc.collect()
import board  # noqa: E402

# The contract's market, agent and Home Assistant parts (~2 KB of heap) go before the rest loads.
__import__("tendril_wire").trim_for_device()
gc.collect()
from tendril_fw.node import Node  # noqa: E402

gc.collect()


def boot():
    # type: () -> Node
    from tendril_fw.config import ConfigError

    try:
        hw = board.Board()
    except ConfigError as exc:
        print("tendril: bad configuration:", exc)
        sys.exit(2)
    hw.log("tendril %s %s %s/%s starting" % (hw.cfg["fw_version"], hw.cfg["type"], hw.cfg["site"],
                                             hw.cfg["device"]))
    return Node(hw, hw.cfg)


def unload(name):
    # type: (str) -> None
    """Drop a module nothing needs any more, so the collector can free its code."""
    sys.modules.pop(name, None)
    package, _, attr = name.rpartition(".")
    if package in sys.modules and hasattr(sys.modules[package], attr):
        delattr(sys.modules[package], attr)


node = boot()
board.config = None  # the board module's reference, used only while parsing
unload("tendril_fw.config")
gc.collect()
asyncio.run(node.run())

# Firmware entry point, the same on every board: `board` is the board's own module
# (firmware/boards/<name>/board.py, copied to the device's root on an ESP32).

import asyncio
import sys

import board
from tendril_fw.config import ConfigError
from tendril_fw.node import Node


def main():
    # type: () -> None
    try:
        hw = board.Board()
    except ConfigError as exc:
        print("tendril: bad configuration:", exc)
        sys.exit(2)
    hw.log("tendril %s %s %s/%s starting" % (hw.cfg["fw_version"], hw.cfg["type"], hw.cfg["site"],
                                             hw.cfg["device"]))
    asyncio.run(Node(hw, hw.cfg).run())


main()

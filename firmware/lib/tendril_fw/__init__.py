# Tendril firmware core: pure logic shared by the ESP32 and the MicroPython unix port.
#
# Nothing in this package imports `machine` or `network`: hardware, sockets' addresses
# and the device clock come from the board object handed to `node.Node`. Every module
# runs unchanged under CPython 3.11 and MicroPython (no typing at run time).

# Test helper shared by CPython and MicroPython: a fresh "flash" directory.
# MicroPython: LittleFS (vfs.VfsLfs2) on a RAM block device whose power can be cut
# after a given number of block writes. CPython: a temporary host directory.

import os

try:
    import vfs
except ImportError:
    vfs = None

_mounts = [0]


class PowerCut(OSError):
    pass


class RamBlockDevice:
    """LittleFS block device in RAM; `cut_after` = block writes left before power fails."""

    def __init__(self, block_size=512, blocks=128):
        self.block_size = block_size
        self.data = bytearray(block_size * blocks)
        self.cut_after = None

    def readblocks(self, block, buf, offset=0):
        # No slicing: LittleFS may read while the heap is locked (e.g. from a finaliser).
        start = block * self.block_size + offset
        data = self.data
        for i in range(len(buf)):
            buf[i] = data[start + i]

    def writeblocks(self, block, buf, offset=None):
        start = block * self.block_size + (offset or 0)
        if self.cut_after is not None:
            if self.cut_after < 0:
                # Power is off: nothing reaches the flash. Silent, because GC finalisers of
                # the old boot's files call this with the heap locked (no exception object).
                return
            if self.cut_after == 0:
                # The write during which power fails lands only half-way: a torn program.
                half = len(buf) // 2
                self.data[start:start + half] = buf[:half]
                self.cut_after = -1
                raise PowerCut(5, "power cut mid-write")
            self.cut_after -= 1
        self.data[start:start + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // self.block_size
        if op == 5:
            return self.block_size
        if op == 6:
            return 0
        return None


def fresh_dir():
    """(path, block device or None): an empty directory on the test's flash."""
    _mounts[0] += 1
    if vfs is not None:
        dev = RamBlockDevice()
        vfs.VfsLfs2.mkfs(dev)
        point = f"/tflash{_mounts[0]}"
        vfs.mount(vfs.VfsLfs2(dev), point)
        return point, dev
    import tempfile

    return tempfile.mkdtemp(prefix="tendril-fw-"), None


def remount(point, dev):
    """Reboot after a power cut: mount the same flash content afresh; returns the new device.

    The old device object stays powered off for good: file objects of the previous "boot"
    may still be finalised by the GC later and must not write into the new one.
    """
    dev.cut_after = -1
    fresh = RamBlockDevice(dev.block_size, 0)
    fresh.data = dev.data
    vfs.umount(point)
    vfs.mount(vfs.VfsLfs2(fresh), point)
    return fresh


def file_size(path):
    return os.stat(path)[6]

# Flash wear of the relay's replay guard (tendril_fw.seqstore.AcceptedSeq), measured on the
# real LittleFS (vfs.VfsLfs2, MicroPython's own build of it, block_cycles = 100) over a RAM
# block device with an ESP32's geometry: 4096-byte erase sectors, the 2 MiB "vfs" partition
# of a 4 MB board, mkfs/mount defaults as MicroPython's ESP32 port uses them.
#
#   MICROPYPATH=.frozen:firmware/lib micropython -X heapsize=8M firmware/tools/flash_wear.py [saves]
#
# Prints erases per save and the most-erased sector; firmware/README.md ("Flash wear")
# turns that into years at the demo's command rate.

import sys

import vfs
from tendril_fw.seqstore import AcceptedSeq, SeqCounter

BLOCK = 4096
BLOCKS = 512  # 2 MiB


class CountingFlash:
    def __init__(self):
        self.data = bytearray(BLOCK * BLOCKS)
        self.erases = [0] * BLOCKS
        self.programmed = 0

    def readblocks(self, block, buf, offset=0):
        start = block * BLOCK + offset
        buf[:] = self.data[start:start + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        start = block * BLOCK + (offset or 0)
        self.data[start:start + len(buf)] = buf
        self.programmed += len(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return BLOCKS
        if op == 5:
            return BLOCK
        if op == 6:
            self.erases[arg] += 1
            return 0
        return None


def main(saves):
    flash = CountingFlash()
    # the stubs type block devices as vfs.AbstractBlockDev, a class MicroPython does not
    # have at run time: any object with readblocks/writeblocks/ioctl is one
    vfs.VfsLfs2.mkfs(flash)  # pyright: ignore[reportArgumentType]
    vfs.mount(vfs.VfsLfs2(flash), "/w")  # pyright: ignore[reportArgumentType]
    # a node's flash as it is in service: telemetry seq counters beside the guard
    SeqCounter("/w/seq").take()
    SeqCounter("/w/state_seq").take()
    guard = AcceptedSeq("/w/cmd_seq")
    base = sum(flash.erases)
    base_prog = flash.programmed
    for seq in range(1, saves + 1):
        guard.save(seq)
    total = sum(flash.erases) - base
    worst = max(flash.erases)
    used = sum(1 for n in flash.erases if n)
    print("saves %d: erases %d (%.3f per save), programmed %d B (%.0f per save)" % (
        saves, total, total / saves, flash.programmed - base_prog, (flash.programmed - base_prog) / saves))
    print("sectors erased at least once: %d of %d; most-erased sector: %d erases (%.4f per save)" % (
        used, BLOCKS, worst, worst / saves))
    assert AcceptedSeq("/w/cmd_seq").seq == saves


main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)

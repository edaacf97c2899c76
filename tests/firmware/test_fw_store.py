# Flash tier of the outbox, the persistent seq counter and the relay's replay guard.
# Under MicroPython these run on LittleFS (vfs.VfsLfs2 on a RAM block device) and the
# power-cut tests cut the block device mid-write; under CPython on a host directory,
# with torn files made by hand.

import os

import fw_flash
from tendril_fw import flashlog, seqstore
from tendril_fw.flashlog import FlashLog, frame
from tendril_fw.outbox import Outbox
from tendril_fw.seqstore import AcceptedSeq, SeqCounter


def rec(i):
    return ('{"seq": ' + str(i) + ', "pad": "' + "x" * (i % 37) + '"}').encode()


def drain(q):
    out = []
    while len(q):
        ident, payload = q.peek()
        out.append(payload)
        q.remove_through(ident)
    return out


def test_flash_log_keeps_order_across_segments_and_reopen():
    path, _dev = fw_flash.fresh_dir()
    log = FlashLog(path + "/q", seg_records=4)
    log.append_many([rec(i) for i in range(3)])
    log.append_many([rec(i) for i in range(3, 10)])
    log.pop()
    assert len(log) == 9 and log.peek() == rec(1)
    again = FlashLog(path + "/q", seg_records=4)  # reboot: undelivered records are still there
    got = []
    while len(again):
        got.append(again.peek())
        again.pop()
    # the head segment's delivered record comes again after a reboot (at least once)
    assert got == [rec(i) for i in range(10)]
    assert [n for n in os.listdir(path + "/q") if n.endswith(".log")] == []


def test_outbox_spills_ram_to_flash_in_order_and_drops_oldest_when_full():
    path, _dev = fw_flash.fresh_dir()
    q = Outbox(10, ram_max=3, flash=FlashLog(path + "/q", seg_records=4))
    kept = [q.push(rec(i)) for i in range(14)]
    assert kept == [True] * 10 + [False] * 4
    assert q.dropped == 4 and len(q) == 10 and len(q.flash) > 0
    assert drain(q) == [rec(i) for i in range(4, 14)]


def test_outbox_delivery_of_an_item_dropped_in_flight_removes_nothing_newer():
    path, _dev = fw_flash.fresh_dir()
    q = Outbox(3, ram_max=1, flash=FlashLog(path + "/q"))
    q.push(rec(0))
    q.push(rec(1))
    in_flight = q.peek()[0]
    q.push(rec(2))
    q.push(rec(3))  # drops rec(0), the one being sent
    q.remove_through(in_flight)
    assert drain(q) == [rec(1), rec(2), rec(3)]


def test_torn_tail_record_is_ignored_and_never_appended_after():
    path, _dev = fw_flash.fresh_dir()
    log = FlashLog(path + "/q", seg_records=100)
    log.append_many([rec(i) for i in range(5)])
    seg = path + "/q/" + next(n for n in os.listdir(path + "/q") if n.endswith(".log"))
    torn = frame(rec(5))
    for cut in range(1, len(torn)):  # every place a write can be cut inside one record
        with open(seg, "rb") as f:
            intact = f.read()
        with open(seg, "ab") as f:
            f.write(torn[:cut])
        again = FlashLog(path + "/q", seg_records=100)
        assert again.damaged == 1 and len(again) == 5, cut
        again.append_many([rec(99)])  # goes to a new segment, after the damage
        got = []
        while len(again):
            got.append(again.peek())
            again.pop()
        assert got == [rec(i) for i in range(5)] + [rec(99)], cut
        # put the intact segment back for the next cut position
        with open(seg, "wb") as f:
            f.write(intact)
        log = FlashLog(path + "/q", seg_records=100)
        assert len(log) == 5


class _TornFile:
    """A file whose power fails after `budget` more bytes (CPython stand-in for a cut block device)."""

    def __init__(self, f, budget):
        self.f = f
        self.budget = budget

    def write(self, data):
        if len(data) > self.budget[0]:
            self.f.write(data[:self.budget[0]])
            self.budget[0] = 0
            raise OSError(5, "power cut mid-write")
        self.budget[0] -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _torn_open(budget):
    def torn_open(path, mode="r"):
        f = open(path, mode)  # noqa: SIM115 - closed by the caller's with-block
        return _TornFile(f, budget) if mode == "ab" else f

    return torn_open


def test_power_cut_in_the_middle_of_a_flash_write_keeps_earlier_records():
    # MicroPython: LittleFS on a RAM block device whose power fails after N block writes
    # (the last one torn half-way). CPython: the append itself is cut after N bytes.
    path, dev = fw_flash.fresh_dir()
    log = FlashLog(path + "/q", seg_records=8)
    log.append_many([rec(i) for i in range(20)])
    image = bytes(dev.data) if dev is not None else None
    batch = [rec(i) for i in range(20, 26)]
    batch_bytes = sum(len(frame(r)) for r in batch)
    cuts = range(0, 12) if dev is not None else range(0, batch_bytes, 7)
    cuts_that_failed = 0
    for cut in cuts:
        if dev is not None:
            dev.data[:] = image
            dev = fw_flash.remount(path, dev)
        log = FlashLog(path + "/q", seg_records=8)
        assert len(log) == 20
        budget = [cut]
        if dev is not None:
            dev.cut_after = cut
        else:
            flashlog.open = _torn_open(budget)
        try:
            log.append_many(batch)
        except OSError:
            cuts_that_failed += 1
        finally:
            if dev is None:
                del flashlog.open
        if dev is not None:
            dev = fw_flash.remount(path, dev)  # power back on: a fresh boot over the same flash
        recovered = FlashLog(path + "/q", seg_records=8)
        got = []
        while len(recovered):
            got.append(recovered.peek())
            recovered.pop()
        # the earlier 20 are intact and in order; of the interrupted batch only whole
        # records survive, in order (LittleFS commits a file on close: all or nothing)
        assert got[:20] == [rec(i) for i in range(20)], cut
        assert got[20:] == batch[:len(got) - 20], (cut, got[20:])
        if dev is not None:
            assert got[20:] in ([], batch), (cut, got[20:])
        recovered.append_many([rec(50)])
        assert recovered.peek() == rec(50) and len(recovered) == 1
        if dev is None:  # back to the 20 records for the next cut
            recovered.pop()
            log = FlashLog(path + "/q", seg_records=8)
            log.append_many([rec(i) for i in range(20)])
    assert cuts_that_failed >= 5  # the cuts really hit the write


def test_seq_counter_survives_reboot_without_repeating():
    path, _dev = fw_flash.fresh_dir()
    first = SeqCounter(path + "/seq", block=4)
    taken = [first.take() for _ in range(6)]
    assert taken == [0, 1, 2, 3, 4, 5]
    second = SeqCounter(path + "/seq", block=4)  # power cut: the rest of the block is skipped
    assert second.take() == 8
    third = SeqCounter(path + "/seq", block=4)
    assert third.take() == 12
    assert SeqCounter(None).take() == 0


def test_seq_counter_reads_a_garbled_file_as_the_temporary_copy():
    path, _dev = fw_flash.fresh_dir()
    with open(path + "/seq", "w") as f:
        f.write("garbage")
    with open(path + "/seq.tmp", "w") as f:
        f.write("40")
    assert SeqCounter(path + "/seq").take() == 40


def test_a_segment_lost_at_run_time_is_counted_as_dropped():
    path, _dev = fw_flash.fresh_dir()
    q = Outbox(100, ram_max=2, flash=FlashLog(path + "/q", seg_records=2))
    for i in range(7):
        q.push(rec(i))
    head_seg = sorted(n for n in os.listdir(path + "/q") if n.endswith(".log"))[0]
    os.remove(path + "/q/" + head_seg)  # flash failure under the running node
    ident, payload = q.peek()
    assert payload == rec(2) and q.dropped == 2 and len(q) == 5
    q.remove_through(ident)
    assert drain(q) == [rec(i) for i in range(3, 7)]


def test_a_full_flash_drops_oldest_counted_and_the_queue_keeps_working():
    path, _dev = fw_flash.fresh_dir()
    logged = []
    q = Outbox(100, ram_max=2, flash=FlashLog(path + "/q"), log=logged.append)
    real_open = open

    def full_open(p, mode="r"):
        if mode == "ab":
            raise OSError(28, "ENOSPC")
        return real_open(p, mode)

    flashlog.open = full_open
    try:
        kept = [q.push(rec(i)) for i in range(5)]
    finally:
        del flashlog.open
    assert kept == [True, True, False, False, False]
    assert q.dropped == 3 and q.flash_errors == 3 and len(logged) == 3 and "flash append failed" in logged[0]
    assert drain(q) == [rec(3), rec(4)]
    q.push(rec(5))  # flash works again: nothing is stuck
    q.push(rec(6))
    q.push(rec(7))
    assert len(q.flash) == 2 and drain(q) == [rec(5), rec(6), rec(7)]


def test_accepted_command_seq_survives_reboot():
    path, _dev = fw_flash.fresh_dir()
    first = AcceptedSeq(path + "/cmd_seq")
    assert first.seq is None and not first.damaged  # first boot: nothing accepted yet
    assert first.save(7) and first.save(12)
    assert first.writes == 2 and first.seq == 12
    again = AcceptedSeq(path + "/cmd_seq")  # reboot
    assert again.seq == 12 and again.writes == 0 and not again.damaged


def test_accepted_command_seq_damaged_file_is_never_read_as_a_number():
    path, _dev = fw_flash.fresh_dir()
    store = AcceptedSeq(path + "/cmd_seq")
    store.save(1234)
    with open(path + "/cmd_seq", "rb") as f:
        good = f.read()
    # a flipped bit in the value ("1234" -> "1034") fails the CRC instead of lowering the seq
    bad = bytearray(good)
    bad[-3] ^= 0x02
    with open(path + "/cmd_seq", "wb") as f:
        f.write(bad)
    damaged = AcceptedSeq(path + "/cmd_seq")
    assert damaged.seq is None and damaged.damaged
    # a whole tmp copy (a write cut before its rename) is used when the file is bad
    with open(path + "/cmd_seq.tmp", "wb") as f:
        f.write(frame(b"1240"))
    assert AcceptedSeq(path + "/cmd_seq").seq == 1240


def test_power_cut_while_saving_the_accepted_seq_keeps_the_old_or_the_new_value():
    # MicroPython: LittleFS whose power fails after N block writes (the last one torn).
    # CPython: the tmp file's write is cut after N bytes, so the rename never happens.
    path, dev = fw_flash.fresh_dir()
    AcceptedSeq(path + "/cmd_seq").save(41)
    image = bytes(dev.data) if dev is not None else None
    new_bytes = len(frame(b"42"))
    cuts = range(0, 12) if dev is not None else range(0, new_bytes)
    failed = completed = 0
    real_open = open
    for cut in cuts:
        if dev is not None:
            dev.data[:] = image
            dev = fw_flash.remount(path, dev)
            dev.cut_after = cut
        else:
            budget = [cut]

            def torn_open(p, mode="r", budget=budget):
                f = real_open(p, mode)
                return _TornFile(f, budget) if mode == "wb" else f

            seqstore.open = torn_open
        try:
            saved = AcceptedSeq(path + "/cmd_seq").save(42)
        finally:
            if dev is None:
                del seqstore.open
        if dev is not None:
            dev = fw_flash.remount(path, dev)  # power back on
        after = AcceptedSeq(path + "/cmd_seq")
        # a finished save is on flash; a cut one left the old value or, cut after the
        # rename, the new one: never a torn or missing value
        assert after.seq == 42 if saved else after.seq in (41, 42), (cut, saved, after.seq)
        assert not after.damaged, cut
        if saved:
            completed += 1
        else:
            failed += 1
            if dev is None:
                assert after.seq == 41, cut  # the torn tmp is ignored, the file is untouched
        if dev is None:  # back to 41 for the next cut
            for name in os.listdir(path):
                os.remove(path + "/" + name)
            AcceptedSeq(path + "/cmd_seq").save(41)
    assert failed >= 2, failed  # the cuts really hit the write
    assert dev is None or completed >= 1  # and a late enough cut lets it finish

"""Dedup window: what counts as a duplicate, pending vs committed, and the journal on disk."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tendril_transactive.cloud.ingest.dedup import SNAPSHOT_FILE, DedupJournal, DedupWindow, Key

pytestmark = pytest.mark.unit

T = "tendril/v1/s1/m1/telemetry"
U = "tendril/v1/s1/r1/telemetry"
SEC = 1_000_000_000
BASE = 1_717_000_000 * SEC


def key(seq: int, stream: str = T, stamp: int | None = None) -> Key:
    return stream, seq, BASE + seq * 10 * SEC if stamp is None else stamp


def offer(window: DedupWindow, k: Key) -> bool:
    return window.check_and_hold(*k)


def test_a_committed_message_is_a_duplicate_and_other_streams_are_not_affected() -> None:
    w = DedupWindow(8)
    assert not offer(w, key(1))
    w.commit([key(1)])
    assert offer(w, key(1))
    assert not offer(w, key(1, U))  # same seq, another device
    assert not offer(w, key(2))


def test_a_pending_message_is_a_duplicate_until_released() -> None:
    w = DedupWindow(8)
    assert not offer(w, key(5))
    assert offer(w, key(5))  # a redelivery while the original is still on its way to the store
    assert w.pending == 1
    w.release([key(5)])  # that batch was abandoned: the broker will deliver it again
    assert not offer(w, key(5))


def test_same_seq_with_another_timestamp_is_a_new_reading_after_a_reboot() -> None:
    w = DedupWindow(8)
    w.commit([key(seq) for seq in range(5)])
    rebooted = key(3, stamp=BASE + 99_999 * SEC)
    assert not offer(w, rebooted)
    w.commit([rebooted])
    assert offer(w, rebooted)
    assert not offer(w, key(3, stamp=BASE + 3 * 10 * SEC + 1))  # a different reading, not a copy


def test_out_of_order_messages_within_the_window_are_accepted_once() -> None:
    w = DedupWindow(16)
    order = [3, 1, 2, 0, 7, 5, 6, 4]
    for seq in order:
        assert not offer(w, key(seq))
        w.commit([key(seq)])
    assert all(offer(w, key(seq)) for seq in order)


def test_older_than_the_window_is_let_through_for_the_stores_overwrite() -> None:
    w = DedupWindow(4)
    w.commit([key(seq) for seq in range(10)])
    assert offer(w, key(9)) and offer(w, key(6))
    assert not offer(w, key(5))  # evicted: a late copy goes to the store, which overwrites it


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DedupWindow(0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.integers(0, 3)), max_size=200))
def test_never_drops_a_reading_it_has_not_seen(readings: list[tuple[int, int, int]]) -> None:
    """Whatever arrives, a message is only called a duplicate if that exact (stream, seq, time) was
    seen: the window may forget (size), but never confuses two readings."""
    w = DedupWindow(32)
    seen: set[Key] = set()
    for stream, seq, epoch in readings:
        k = (f"s/{stream}", seq, epoch * 10**12 + seq)
        if offer(w, k):
            assert k in seen
        else:
            w.commit([k])
            seen.add(k)


# ------------------------------------------------------------------ journal


def test_the_journal_restores_committed_keys_only(tmp_path: Path) -> None:
    w = DedupWindow(64)
    j = DedupJournal(w, tmp_path)
    j.load()
    offer(w, key(1))
    offer(w, key(2))
    w.commit([key(1)])
    j.record([key(1)])  # key 2 stays pending: not durable, so not remembered
    j.close()

    again = DedupWindow(64)
    DedupJournal(again, tmp_path).load()
    assert offer(again, key(1))
    assert not offer(again, key(2))


def test_compaction_keeps_everything_and_deletes_old_journals(tmp_path: Path) -> None:
    w = DedupWindow(64)
    j = DedupJournal(w, tmp_path, min_compact_bytes=1)
    j.load()
    keys = [key(seq, stream) for stream in (T, U) for seq in range(50)]
    for k in keys[:60]:
        w.commit([k])
        j.record([k])
    assert j.wants_compaction
    data, done = j.start_compaction()
    for k in keys[60:]:  # committed while the snapshot is written
        w.commit([k])
        j.record([k])
    j.finish_compaction(data, done)
    j.close()
    assert (tmp_path / SNAPSHOT_FILE).exists()
    assert len(list(tmp_path.glob("dedup-*.log"))) == 1

    again = DedupWindow(64)
    DedupJournal(again, tmp_path).load()
    assert all(offer(again, k) for k in keys)


def test_a_torn_journal_tail_loses_only_the_torn_batch(tmp_path: Path) -> None:
    w = DedupWindow(64)
    j = DedupJournal(w, tmp_path)
    j.load()
    j.record([key(1), key(2)])
    j.record([key(3)])
    j.close()
    (path,) = tmp_path.glob("dedup-*.log")
    path.write_bytes(path.read_bytes()[:-5])  # killed in the middle of the last write

    again = DedupWindow(64)
    DedupJournal(again, tmp_path).load()
    assert offer(again, key(1)) and offer(again, key(2))
    assert not offer(again, key(3))


def test_garbage_on_disk_is_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / SNAPSHOT_FILE).write_bytes(b"not a snapshot")
    (tmp_path / "dedup-1.log").write_bytes(b"X garbage")
    w = DedupWindow(8)
    DedupJournal(w, tmp_path).load()
    assert len(w) == 0
    assert "unreadable" in caplog.text and "damaged" in caplog.text


def test_a_snapshot_taken_with_another_window_size_is_resized(tmp_path: Path) -> None:
    w = DedupWindow(256)
    recent = [key(seq) for seq in range(100, 120)]
    w.commit(recent)
    small = DedupWindow(32)
    small.restore(w.snapshot())
    assert all(offer(small, k) for k in recent)


def test_random_commit_order_gives_the_same_window() -> None:
    keys = [key(seq, stream, BASE + random.Random(seq).randrange(10**12)) for stream in (T, U) for seq in range(200)]
    a, b = DedupWindow(16), DedupWindow(16)
    a.commit(keys)
    shuffled = list(keys)
    random.Random(8).shuffle(shuffled)
    b.commit(shuffled)
    assert a.snapshot() == b.snapshot()  # replaying journals in any order restores the same state

"""Outage spool: order, durability across reopen, torn and damaged records, limits, cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tendril_transactive.cloud.ingest.spool import Record, Spool, SpoolFull

pytestmark = pytest.mark.unit


def record(n: int, lines: int = 3) -> Record:
    body = "\n".join(f"m,site=s f={n}.{i} {n * 1000 + i}" for i in range(lines)).encode()
    return Record(body, lines, tuple(float(n) + i / 10 for i in range(lines)), health_lines=n % 2)


def drain(spool: Spool) -> list[Record]:
    out = []
    while (rec := spool.peek()) is not None:
        out.append(rec)
        spool.pop()
    return out


def test_records_come_back_in_order_with_everything_they_carry(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    assert spool.empty and spool.peek() is None
    sent = [record(n) for n in range(5)]
    for rec in sent:
        spool.append(rec)
    assert (spool.depth_records, spool.depth_lines) == (5, 15)
    assert spool.depth_bytes > sum(len(r.body) for r in sent)
    assert drain(spool) == sent
    assert spool.empty and spool.depth_bytes == 0
    assert list(tmp_path.glob("*.seg")) == []  # nothing replayed is kept


def test_a_reopened_spool_resumes_at_the_first_record_not_yet_stored(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    for n in range(6):
        spool.append(record(n))
    spool.pop()
    spool.pop()
    spool.close()  # or a crash: appends were already fdatasync'ed

    again = Spool(tmp_path)
    assert again.depth_records == 4
    assert drain(again) == [record(n) for n in range(2, 6)]


def test_segments_roll_over_and_are_deleted_once_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=400, fsync=False)
    for n in range(12):
        spool.append(record(n))
    assert len(list(tmp_path.glob("*.seg"))) > 2
    for _ in range(6):
        spool.pop()
    spool.close()
    again = Spool(tmp_path, segment_bytes=400)
    assert [r.body for r in drain(again)] == [record(n).body for n in range(6, 12)]
    again.append(record(99))  # and it keeps going after being emptied
    assert drain(Spool(tmp_path)) == [record(99)]


def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    for n in range(3):
        spool.append(record(n))
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    segment.write_bytes(segment.read_bytes()[:-7])  # the process died in the middle of a write

    again = Spool(tmp_path)
    assert drain(again) == [record(0), record(1)]
    again.append(record(7))  # appending after the cut gives a clean file
    assert drain(Spool(tmp_path)) == [record(7)]


def test_a_damaged_record_in_an_older_segment_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, segment_bytes=200, fsync=False)
    for n in range(4):
        spool.append(record(n))
    spool.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[30] ^= 0xFF  # a flipped bit inside the first record's body
    first.write_bytes(bytes(data))

    again = Spool(tmp_path, segment_bytes=200)
    assert again.damaged_bytes > 0 and "damaged record" in caplog.text
    assert record(0) not in drain(again)


def test_a_full_spool_refuses_more(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=300, fsync=False)
    spool.append(record(0))
    spool.append(record(1))
    with pytest.raises(SpoolFull, match="full"):
        for n in range(2, 10):
            spool.append(record(n))
    spool.pop()
    spool.append(record(50))  # room again after replay

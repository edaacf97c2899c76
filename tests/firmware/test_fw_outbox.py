# The RAM outbox: FIFO, bounded, drops the oldest and counts it.

from tendril_fw.outbox import RamQueue


def test_fifo_order_and_delivery():
    q = RamQueue(3)
    for p in (b"a", b"b"):
        assert q.push(p) is True
    ident, payload = q.peek()
    assert payload == b"a" and len(q) == 2
    q.remove_through(ident)
    assert q.peek()[1] == b"b" and len(q) == 1


def test_overflow_drops_oldest_and_counts():
    q = RamQueue(3)
    kept = [q.push(str(i).encode()) for i in range(10)]
    assert kept == [True] * 3 + [False] * 7
    assert len(q) == 3 and q.dropped == 7
    assert q.peek()[1] == b"7"


def test_delivery_of_an_item_dropped_while_in_flight_removes_nothing_newer():
    q = RamQueue(2)
    q.push(b"0")
    in_flight = q.peek()[0]
    q.push(b"1")
    q.push(b"2")  # drops b"0", the one being sent
    q.remove_through(in_flight)
    assert [q.peek()[1], len(q)] == [b"1", 2]


def test_capacity_must_be_positive():
    try:
        RamQueue(0)
    except ValueError:
        return
    raise AssertionError("RamQueue(0) accepted")

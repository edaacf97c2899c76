# Bench link frames: round trip, and every kind of damage is counted and dropped, never misread.
# Shared with MicroPython (tests/firmware/mp_runner.py): no pytest here.

from tendril_fw.bench_link import MAX_FRAME, SEQ_MOD, Endpoint, FrameDecoder, LinkError, encode_frame


def _frames(n, start=0):
    return [encode_frame(start + i, ('{"op": "set", "power_w": %d}' % (100 * i)).encode()) for i in range(n)]


def test_round_trip_byte_by_byte():
    dec = FrameDecoder()
    got = []
    for frame in _frames(5):
        for i in range(len(frame)):
            got += dec.feed(frame[i:i + 1])
    assert [seq for seq, _ in got] == [0, 1, 2, 3, 4]
    assert got[2][1] == b'{"op": "set", "power_w": 200}'
    assert dec.counts["frames"] == 5 and dec.counts["bad_crc"] == 0 and dec.counts["gaps"] == 0


def test_every_single_bit_flip_is_dropped_and_counted():
    frame = encode_frame(7, b'{"op": "set", "relay": 1}')
    for pos in range(len(frame) - 1):  # the LF itself is framing, flipping it is tested below
        for bit in (1, 4, 32):
            bad = bytearray(frame)
            bad[pos] ^= bit
            dec = FrameDecoder()
            got = dec.feed(bytes(bad) + b"\n")
            assert got == [], (pos, bit, got)
            assert dec.counts["bad_crc"] + dec.counts["malformed"] >= 1, (pos, bit)


def test_truncated_frame_is_dropped_and_the_next_one_survives_after_it():
    a, b, c = _frames(3)
    dec = FrameDecoder()
    # a loses its tail (and its LF): it runs into b, the joined line fails the CRC
    got = dec.feed(a[:10] + b + c)
    assert [seq for seq, _ in got] == [2]
    assert dec.counts["bad_crc"] == 1
    assert dec.counts["frames"] == 1


def test_truncated_tail_waits_then_is_discarded_on_request():
    a, b = _frames(2)
    dec = FrameDecoder()
    assert [s for s, _ in dec.feed(a + b[:5])] == [0]
    assert dec.discard_partial() == 5
    assert dec.counts["malformed"] == 1
    assert [s for s, _ in dec.feed(_frames(1, 1)[0])] == [1]


def test_missing_frames_count_as_gaps_and_a_step_back_as_restart():
    f = _frames(6)
    dec = FrameDecoder()
    dec.feed(f[0] + f[1] + f[4] + f[5])
    assert dec.counts["gaps"] == 2
    dec.feed(_frames(1)[0])  # the peer rebooted: seq 0 again
    assert dec.counts["restarts"] == 1


def test_seq_wraps_without_counting_a_gap():
    dec = FrameDecoder()
    dec.feed(encode_frame(SEQ_MOD - 1, b"{}") + encode_frame(0, b"{}"))
    assert dec.counts["gaps"] == 0 and dec.counts["restarts"] == 0 and dec.counts["frames"] == 2


def test_overrun_without_newline_is_dropped_until_the_next_line():
    dec = FrameDecoder()
    junk = b"x" * (MAX_FRAME + 10)
    assert dec.feed(junk) == []
    assert dec.feed(b"more junk\n" + _frames(1)[0]) == [(0, b'{"op": "set", "power_w": 0}')]
    assert dec.counts["overrun"] == 1


def test_noise_lines_and_blank_lines():
    dec = FrameDecoder()
    got = dec.feed(b"\n\r\nWDT: not fed\nabc def 12345678\n" + _frames(1)[0])
    assert len(got) == 1
    assert dec.counts["malformed"] == 2 and dec.counts["bad_crc"] == 0


def test_encoder_refuses_newlines_and_oversize():
    for payload in (b"a\nb", b"a\rb", b"x" * MAX_FRAME):
        try:
            encode_frame(0, payload)
        except LinkError:
            continue
        raise AssertionError("accepted %r" % payload[:20])


def test_endpoint_json_messages_and_non_object_payloads():
    a = Endpoint()
    b = Endpoint()
    s0, f0 = a.encode({"op": "get"})
    s1, f1 = a.encode({"op": "net", "up": False})
    bad = encode_frame(2, b"[1, 2]") + encode_frame(3, b"not json")
    got = b.feed(f0 + bad + f1)
    assert [m for _, m in got] == [{"op": "get"}, {"op": "net", "up": False}]
    assert (s0, s1) == (0, 1)
    assert b.counters()["malformed"] == 2

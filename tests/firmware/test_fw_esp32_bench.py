# Bench mode core (tendril_fw.bench_mode) and its UART side (tendril_fw.bench_uart), as the
# ESP32 bench board uses them: frames in apply inputs, relay changes go out as frames,
# damage is counted and ignored. The UART is a fake (a byte queue with machine.UART's
# any/read/write); the bench side is the real bench_link Endpoint. Shared with MicroPython
# (tests/firmware/mp_runner.py): no pytest.

import asyncio

from tendril_fw import bench_link as bl
from tendril_fw import bench_mode as bm
from tendril_fw import bench_uart

CFG = {"site": "s1", "device": "r1", "fw_version": "1.2.3", "board": {"pulses_per_kwh": 1000}}


class FakeUart:
    """Stands in for machine.UART: rx holds what the bench sent, tx what the device wrote."""

    def __init__(self):
        self.rx = b""
        self.tx = b""
        self.broken = False
        self.heap_full = False

    def any(self):
        return len(self.rx)

    def read(self, n):
        if not self.rx:
            return None  # machine.UART with timeout=0 and nothing waiting
        data, self.rx = self.rx[:n], self.rx[n:]
        return data

    def write(self, data):
        if self.broken:
            raise OSError(5)
        if self.heap_full:
            raise MemoryError("memory allocation failed")
        self.tx += data
        return len(data)


class FakeHost:
    def __init__(self):
        self.clock = 1000.0
        self.lines = []
        self.blocked = []

    def now(self):
        return self.clock

    def free_heap(self):
        return 4096

    def log(self, text):
        self.lines.append(text)

    def block(self, seconds):
        self.blocked.append(seconds)


def _from_device(uart, bench):
    msgs = [msg for _seq, msg in bench.feed(uart.tx)]
    uart.tx = b""
    return msgs


def _device(boot="power_on"):
    """A bench mode and the bench's end of its link, the boot event already taken off the link."""
    uart = FakeUart()
    host = FakeHost()
    mode = bm.BenchMode(uart, host, CFG, boot)
    bench = bl.Endpoint()
    assert [m["ev"] for m in _from_device(uart, bench)] == ["boot"]
    return uart, host, mode, bench


def _request(uart, mode, bench, msg):
    seq, frame = bench.encode(msg)
    uart.rx += frame
    bench_uart.poll(mode, uart)
    replies = [m for m in _from_device(uart, bench) if m.get("re") == seq]
    assert len(replies) == 1, replies
    return replies[0]


def test_boot_event_names_device_firmware_and_reason():
    uart = FakeUart()
    bm.BenchMode(uart, FakeHost(), CFG, "watchdog")
    assert _from_device(uart, bl.Endpoint()) == [{"ev": "boot", "device": "r1", "fw": "1.2.3", "boot": "watchdog",
                                                  "now": 1000.0}]


def test_set_frame_applies_inputs_and_is_answered():
    uart, _host, mode, bench = _device()
    reply = _request(uart, mode, bench, {"op": "set", "power_w": 1500.5, "button": 1, "temp_c": 19.5})
    assert reply["ok"] is True
    assert mode.read_power(10.0) == 1500.5
    assert mode.read_override() == 1
    assert mode.inputs["temp_c"] == 19.5
    _request(uart, mode, bench, {"op": "set", "button": None})
    assert mode.read_override() is None


def test_unknown_input_is_refused_and_applies_nothing():
    uart, _host, mode, bench = _device()
    reply = _request(uart, mode, bench, {"op": "set", "power_w": 900, "relay": 1})
    assert reply["ok"] is False and "relay" in reply["error"]
    assert mode.inputs["power_w"] == 0.0
    assert _request(uart, mode, bench, {"op": "warp"})["error"] == "unknown op 'warp'"


def test_relay_change_goes_out_as_a_frame_with_the_device_clock():
    uart, host, mode, bench = _device()
    host.clock = 1234.5
    mode.set_relay(1)
    mode.set_relay(0)
    assert _from_device(uart, bench) == [{"ev": "relay", "relay": 1, "t": 1234.5},
                                         {"ev": "relay", "relay": 0, "t": 1234.5}]
    assert bench.counters()["frames"] == 3 and bench.counters()["gaps"] == 0  # the boot event and these two
    assert _request(uart, mode, bench, {"op": "get"})["relay"] == 0


def test_corrupt_frame_is_counted_and_ignored_and_the_next_one_applies():
    uart, _host, mode, bench = _device()
    assert _request(uart, mode, bench, {"op": "ping"})["ok"] is True
    _seq, frame = bench.encode({"op": "set", "power_w": 7000})
    bad = bytearray(frame)
    bad[frame.find(b"7000")] = ord("9")  # "set power_w 9000": the CRC no longer matches
    uart.rx += bytes(bad)
    assert bench_uart.poll(mode, uart) == 0
    assert _from_device(uart, bench) == []  # no reply: the bench times out, never misreads
    assert mode.inputs["power_w"] == 0.0
    uart.rx += b"garbage without a crc\n"
    bench_uart.poll(mode, uart)
    reply = _request(uart, mode, bench, {"op": "get"})
    assert reply["counters"]["bad_crc"] == 1
    assert reply["counters"]["malformed"] == 1
    assert reply["counters"]["gaps"] == 1  # the corrupt frame's seq never arrived
    assert reply["counters"]["frames"] == 2  # the ping and this get
    assert _request(uart, mode, bench, {"op": "set", "power_w": 7000})["ok"] is True
    assert mode.read_power(1.0) == 7000.0


def test_frame_split_across_reads_waits_for_its_end():
    uart, _host, mode, bench = _device()
    seq, frame = bench.encode({"op": "set", "ev_plugged": True})
    uart.rx += frame[:9]
    assert bench_uart.poll(mode, uart) == 0 and mode.inputs["ev_plugged"] is None
    uart.rx += frame[9:]
    assert bench_uart.poll(mode, uart) == 1 and mode.inputs["ev_plugged"] is True
    assert [m["re"] for m in _from_device(uart, bench)] == [seq]


def test_poll_takes_at_most_its_budget():
    uart, _host, mode, bench = _device()
    for i in range(3):
        uart.rx += bench.encode({"op": "set", "power_w": i})[1]
    one = len(uart.rx) // 3
    assert bench_uart.poll(mode, uart, budget=one) == 1
    assert bench_uart.poll(mode, uart) == 2 and mode.inputs["power_w"] == 2
    assert bench_uart.poll(mode, uart) == 0


def test_get_reports_state_counters_and_heap():
    uart, _host, mode, bench = _device()
    mode.set_relay(1)
    reply = _request(uart, mode, bench, {"op": "get"})
    assert reply["relay"] == 1 and reply["net_up"] is True and reply["boot"] == "power_on"
    assert reply["site"] == "s1" and reply["device"] == "r1" and reply["fw"] == "1.2.3"
    assert reply["free_heap"] == 4096 and reply["now"] == 1000.0
    assert reply["counters"]["tx_errors"] == 0 and reply["counters"]["net_cuts"] == 0
    assert reply["counters"]["no_memory"] == 0


def test_request_that_runs_out_of_heap_loses_its_reply_not_the_link():
    uart, _host, mode, bench = _device()
    uart.heap_full = True
    uart.rx += bench.encode({"op": "set", "power_w": 12})[1]
    assert bench_uart.poll(mode, uart) == 0
    assert mode.inputs["power_w"] == 12 and mode.no_memory == 1
    assert mode.pending is None  # a set is not answered late: a newer one may follow it
    uart.heap_full = False
    assert _request(uart, mode, bench, {"op": "ping"})["ok"] is True


def test_a_get_that_finds_the_heap_full_is_answered_when_there_is_room():
    uart, host, mode, bench = _device()

    def no_heap():
        raise MemoryError("memory allocation failed")

    host.free_heap = no_heap
    uart.rx += bench.encode({"op": "get"})[1] + bench.encode({"op": "set", "power_w": 12})[1]
    assert bench_uart.poll(mode, uart) == 1
    assert [m["re"] for m in _from_device(uart, bench)] == [1]  # the set's reply; the get waits
    assert mode.inputs["power_w"] == 12 and mode.no_memory == 1 and mode.pending is not None
    mode.retry()  # still full: it waits on
    assert _from_device(uart, bench) == [] and mode.no_memory == 2 and mode.pending is not None
    host.free_heap = lambda: 512
    mode.retry()
    replies = _from_device(uart, bench)
    assert [(m["re"], m["free_heap"], m["counters"]["no_memory"]) for m in replies] == [(0, 512, 2)]
    assert mode.pending is None
    mode.retry()  # nothing pending: nothing sent
    assert _from_device(uart, bench) == []


def test_a_get_the_heap_never_has_room_for_is_given_up():
    uart, _host, mode, bench = _device()
    uart.heap_full = True
    uart.rx += bench.encode({"op": "get"})[1]
    bench_uart.poll(mode, uart)
    tries = 0
    while mode.pending is not None:
        mode.retry()
        tries += 1
        assert tries <= bm.RETRIES, "retried without end"
    assert tries == bm.RETRIES and mode.no_memory == bm.RETRIES + 1
    uart.heap_full = False
    assert _from_device(uart, bench) == []
    assert _request(uart, mode, bench, {"op": "get"})["counters"]["no_memory"] == bm.RETRIES + 1


def test_net_cut_and_restore_are_counted_once_each():
    uart, host, mode, bench = _device()
    assert _request(uart, mode, bench, {"op": "net", "up": False}) == {"ok": True, "net_up": False, "re": 0}
    _request(uart, mode, bench, {"op": "net", "up": False})
    assert mode.net_up is False and mode.net_cuts == 1
    _request(uart, mode, bench, {"op": "net", "up": True})
    assert mode.net_up is True and mode.net_cuts == 1
    assert host.lines == ["bench: network cut", "bench: network restored"]


def test_hang_blocks_through_the_host_and_a_bad_duration_is_refused():
    uart, host, mode, bench = _device()
    assert _request(uart, mode, bench, {"op": "hang", "s": 2.5})["ok"] is True
    assert host.blocked == [2.5]
    reply = _request(uart, mode, bench, {"op": "hang", "s": "long"})
    assert reply["ok"] is False and host.blocked == [2.5]


def test_write_failure_is_counted_and_the_device_goes_on():
    uart, _host, mode, bench = _device()
    uart.broken = True
    mode.set_relay(1)
    assert mode.relay == 1 and mode.tx_errors == 1
    uart.broken = False
    assert _request(uart, mode, bench, {"op": "get"})["counters"]["tx_errors"] == 1


def test_pulses_give_average_power_on_the_clock_the_board_passes():
    uart, _host, mode, bench = _device()
    _request(uart, mode, bench, {"op": "set", "pulses": 100})
    assert mode.read_power(0.0) == 0.0  # first reading: no interval yet
    _request(uart, mode, bench, {"op": "set", "pulses": 105})
    assert mode.read_power(3.6) == 5000.0  # 5 Wh in 3.6 s (1000 imp/kWh)
    _request(uart, mode, bench, {"op": "set", "pulses": True, "power_w": 42})
    assert mode.read_power(7.2) == 42.0  # a bool is not a pulse count


def test_uart_settings_defaults_and_refusals():
    assert bench_uart.uart_settings({}) == {"id": 1, "tx": 17, "rx": 16, "baud": 115200}
    assert bench_uart.uart_settings({"bench_uart": 2, "bench_tx": 4, "bench_rx": 5, "bench_baud": 921600}) == {
        "id": 2, "tx": 4, "rx": 5, "baud": 921600}
    for bad, word in (({"bench_baud": 115201}, "bench_baud"), ({"bench_uart": "1"}, "bench_uart"),
                      ({"bench_tx": 16}, "differ"), ({"bench_rx": -1}, "bench_rx"),
                      ({"bench_uart": True}, "bench_uart")):
        try:
            bench_uart.uart_settings(bad)
        except bench_uart.BenchConfigError as exc:
            assert word in str(exc), (bad, str(exc))
        else:
            raise AssertionError("accepted " + repr(bad))


class FakeStream:
    def __init__(self):
        self.written = b""

    def write(self, data):
        self.written += data

    async def drain(self):
        pass

    async def readexactly(self, n):
        return b"x" * n


def test_network_gate_refuses_connections_and_fails_live_streams_while_cut():
    _uart, _host, mode, _bench = _device()
    opened = []

    async def open_connection(host, port):
        opened.append((host, port))
        return FakeStream(), FakeStream()

    gated = bm.gate_connections(open_connection, mode)

    async def scenario():
        reader, writer = await gated("10.0.0.2", 1883)
        writer.write(b"ok")
        await writer.drain()
        assert await reader.readexactly(2) == b"xx"
        mode.set_network(False)
        for attempt in (lambda: writer.write(b"lost"), writer.drain, lambda: reader.readexactly(1),
                        lambda: gated("10.0.0.2", 1883)):
            try:
                result = attempt()
                if result is not None and not isinstance(result, int):
                    await result
            except OSError as exc:
                assert exc.args[0] == bm.EHOSTUNREACH
            else:
                raise AssertionError("worked while the network was cut")
        assert writer.written == b"ok"  # forwarded attribute: what reached the real stream

    asyncio.run(scenario())
    assert opened == [("10.0.0.2", 1883)]

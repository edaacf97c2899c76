# Node plumbing that needs no broker: config checks, backoff, the producer's schedule
# and the outbox overflow count, driven by a virtual device clock.

import asyncio
import json

import fw_flash
import tendril_wire as tw
from tendril_fw import config
from tendril_fw.node import Node, backoff_delay, next_due

T0 = 1700000000.0


def raw_config(**extra):
    raw = {"site": "s1", "device": "m1", "type": "meter", "broker_host": "127.0.0.1",
           "broker_port": 1, "key_hex": "00" * 16}
    raw.update(extra)
    return raw


def config_error(raw):
    try:
        config.parse(raw)
    except config.ConfigError as exc:
        return str(exc)
    raise AssertionError(f"config accepted: {raw!r}")


def test_config_defaults_and_key():
    cfg = config.parse(raw_config(telemetry_s=5))
    assert cfg["key"] == b"\x00" * 16
    assert cfg["telemetry_s"] == 5 and cfg["state_s"] == config.DEFAULTS["state_s"]


def test_config_errors_name_the_problem():
    assert "missing config key 'broker_host'" in config_error(
        {k: v for k, v in raw_config().items() if k != "broker_host"})
    assert "unknown config key 'colour'" in config_error(raw_config(colour="red"))
    assert "telemetry_s" in config_error(raw_config(telemetry_s=0))
    assert "telemetry_s" in config_error(raw_config(telemetry_s="5"))
    assert "type" in config_error(raw_config(type="toaster"))
    assert "site" in config_error(raw_config(site="Bad/Site"))
    assert "key_hex" in config_error(raw_config(key_hex="zz"))
    assert "at least 16" in config_error(raw_config(key_hex="00"))
    assert "safe_default" in config_error(raw_config(safe_default=2))
    assert "broker_port" in config_error(raw_config(broker_port=True))
    assert "JSON object" in config_error([1])


def test_backoff_grows_is_capped_and_jittered():
    assert backoff_delay(0, 30, 0.0) == 0.25
    assert backoff_delay(0, 30, 0.999) < 0.5
    assert backoff_delay(3, 30, 0.0) == 2.0
    assert backoff_delay(50, 30, 0.0) == 15.0
    assert backoff_delay(50, 30, 0.9999) < 30.0


def test_next_due_skips_missed_ticks():
    assert next_due(100.0, 10.0, 105.0) == 110.0
    assert next_due(100.0, 10.0, 137.0) == 147.0


class _Stop(Exception):
    pass


class VirtualBoard:
    """A device whose clock only moves when the node sleeps; stops the node at `end`."""

    def __init__(self, end, power_w=1800.0):
        self.t = T0
        self.mono = 0.0
        self.end = end
        self.power_w = power_w
        self.lines = []

    def now(self):
        return self.t

    def monotonic(self):
        return self.mono

    async def sleep(self, d):
        if self.t + d > self.end:
            raise _Stop()
        self.t += d
        self.mono += d
        await asyncio.sleep(0)

    def read_power(self):
        return self.power_w

    def free_heap(self):
        return 12345

    def random(self):
        return 0.5

    def log(self, text):
        self.lines.append(text)


def run_producer(node):
    try:  # noqa: SIM105 - MicroPython has no contextlib
        asyncio.run(node._produce())
    except _Stop:
        pass


def test_outbox_overflow_while_offline_drops_oldest_and_is_reported():
    board = VirtualBoard(end=T0 + 200)
    cfg = config.parse(raw_config(telemetry_s=10, state_s=1000, queue_max=5))
    node = Node(board, cfg)
    node.boot(board.now())
    run_producer(node)
    assert node.outbox.dropped == 15 and len(node.outbox) == 5
    records = []
    while len(node.outbox):
        ident, payload = node.outbox.peek()
        records.append(tw.decode(tw.TELEMETRY, payload))
        node.outbox.remove_through(ident)
    assert [r["seq"] for r in records] == [15, 16, 17, 18, 19]
    assert [r["ts"] for r in records] == [T0 + 160, T0 + 170, T0 + 180, T0 + 190, T0 + 200]
    assert abs(records[-1]["energy_wh"] - 1800.0 * 200 / 3600) < 1e-9
    assert any("dropped oldest" in line for line in board.lines)
    node.state(board.now())
    state = tw.decode(tw.STATE, node.uplink._state)
    assert state["dropped"] == 15 and state["free_heap"] == 12345 and state["fw"] == "0.0.0"
    assert state["queue"] == 0 and state["uptime_s"] == 200 and state["boot"] == "unknown"


def test_state_records_follow_state_period():
    board = VirtualBoard(end=T0 + 95)
    node = Node(board, config.parse(raw_config(telemetry_s=1000, state_s=30)))
    node.boot(board.now())
    states = []
    original = node.state

    def capture(now):
        original(now)
        states.append(json.loads(node.uplink._state)["ts"])

    node.state = capture
    run_producer(node)
    assert states == [T0, T0 + 30, T0 + 60, T0 + 90]


class UnsyncedBoard(VirtualBoard):
    """Boots at the ESP32 epoch; the second network_up() sets the clock (NTP)."""

    def __init__(self):
        VirtualBoard.__init__(self, end=T0 + 100)
        self.t = tw.to_unix_time(5.0, 2000)
        self.attempts = 0

    async def network_up(self):
        self.attempts += 1
        if self.attempts == 1:
            raise OSError("Wi-Fi down")
        self.t = T0


def test_node_waits_for_a_valid_clock_before_reading_it():
    board = UnsyncedBoard()
    node = Node(board, config.parse(raw_config()))
    asyncio.run(node._wait_for_clock())
    assert board.attempts == 2 and board.now() == T0
    assert any("Wi-Fi down" in line for line in board.lines)


class SteppingBoard(VirtualBoard):
    """Boots on the ESP32 epoch; NTP steps the clock to true time T0 + uptime at uptime 50 s."""

    def __init__(self):
        VirtualBoard.__init__(self, end=0)
        self.t = tw.to_unix_time(5.0, 2000)

    async def sleep(self, d):
        if self.mono + d > 100:
            raise _Stop()
        self.mono += d
        self.t = T0 + self.mono if self.mono >= 50 else self.t + d
        await asyncio.sleep(0)


def test_records_before_clock_sync_are_stamped_unsynced_and_corrected_at_sync():
    board = SteppingBoard()
    node = Node(board, config.parse(raw_config(telemetry_s=10, state_s=1000)))
    run_producer(node)
    records = []
    while len(node.outbox):
        ident, payload = node.outbox.peek()
        records.append(tw.decode(tw.TELEMETRY, payload))
        node.outbox.remove_through(ident)
    assert [r["seq"] for r in records] == list(range(10))
    assert [r["ts"] for r in records] == [T0 + 10 * (k + 1) for k in range(10)]
    assert [r.get("unsynced", False) for r in records] == [True] * 4 + [False] * 6
    # the register integrated 1800 W over real uptime, not over the 24-year clock step
    assert [round(r["energy_wh"], 6) for r in records] == [5.0 * (k + 1) for k in range(10)]
    assert any("clock synced" in line for line in board.lines)


class RelayBoard(VirtualBoard):
    def __init__(self):
        VirtualBoard.__init__(self, end=T0 + 100)
        self.outputs = []

    def set_relay(self, state):
        self.outputs.append(state)


def relay_node(state_dir):
    board = RelayBoard()
    cfg = config.parse(raw_config(device="r1", type="relay", state_dir=state_dir))
    node = Node(board, cfg)
    node.boot(board.now())
    node._arm_fallback = lambda: None  # no event loop here; expiry is tested in test_fw_relay
    return board, node


def command(node, seq, state):
    cmd = tw.make_command(node.cfg["key"], node.site, node.device, f"c{seq}", seq, T0, T0 + 4200, state)
    node._on_message(tw.device_topic(node.site, node.device, tw.CMD), tw.encode(tw.CMD, cmd), 1, False)
    return cmd, tw.decode(tw.ACK, node.uplink._acks[-1])


class LateSwitchBoard(RelayBoard):
    """The output moves 30 s after the command was decided (a slow flash write on a busy host)."""

    def set_relay(self, state):
        self.t += 30.0
        self.outputs.append(state)


def test_the_minimum_on_time_counts_from_when_the_output_moved():
    path, _dev = fw_flash.fresh_dir()
    board = LateSwitchBoard()
    node = Node(board, config.parse(raw_config(device="r1", type="relay", state_dir=path, min_on_s=120.0)))
    node.boot(board.now())
    node._arm_fallback = lambda: None
    _, ack = command(node, 1, 1)  # decided at T0, the output on at T0 + 30
    assert ack["ok"] and board.outputs == [1]
    board.t = T0 + 125.0  # 125 s after the decision, only 95 s after the output moved
    _, ack = command(node, 2, 0)
    assert not ack["ok"] and ack["reason"] == tw.REFUSE_MIN_ON and board.outputs == [1]
    board.t = T0 + 150.0
    _, ack = command(node, 3, 0)
    assert ack["ok"] and board.outputs == [1, 0]


def test_relay_node_refuses_a_replay_after_reboot_and_writes_flash_only_on_accept():
    path, _dev = fw_flash.fresh_dir()
    board, node = relay_node(path)
    old_on, ack = command(node, 1, 1)
    assert ack["ok"] and board.outputs == [1]
    _, ack = command(node, 2, 0)
    assert ack["ok"] and board.outputs == [1, 0]
    node._on_message(tw.device_topic(node.site, node.device, tw.CMD), tw.encode(tw.CMD, old_on), 1, False)
    assert node.accepted.writes == 2  # the refused replay wrote nothing
    board, node = relay_node(path)  # reboot with the same flash
    topic = tw.device_topic(node.site, node.device, tw.CMD)
    node._on_message(topic, tw.encode(tw.CMD, old_on), 1, False)
    ack = tw.decode(tw.ACK, node.uplink._acks[-1])
    assert not ack["ok"] and ack["reason"] == tw.REFUSE_OUT_OF_ORDER and ack["relay"] == 0
    assert board.outputs == [] and node.relay.relay == 0 and node.accepted.writes == 0
    _, ack = command(node, 3, 1)  # the next legitimate command still works
    assert ack["ok"] and board.outputs == [1]

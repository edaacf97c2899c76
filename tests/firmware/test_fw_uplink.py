# The uplink's send order: acks, then state, then live telemetry, then the backlog oldest
# first at no more than replay_per_s per real second.

import asyncio
import time

from tendril_fw import config
from tendril_fw.outbox import Outbox
from tendril_fw.uplink import Uplink


def _now():
    return time.ticks_ms() / 1000.0 if hasattr(time, "ticks_ms") else time.monotonic()


class Board:
    monotonic = staticmethod(_now)

    def log(self, text):
        pass


class FakeClient:
    """Records what the sender publishes, and when; stops the sender after `limit` messages."""

    connected = True

    def __init__(self, limit):
        self.sent = []
        self.limit = limit
        self.done = asyncio.Event()

    async def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic.rsplit("/", 1)[1], payload, _now()))
        if len(self.sent) >= self.limit:
            self.done.set()
            await asyncio.sleep(3600)

    def abort(self, reason):
        pass


def make(rate):
    cfg = config.parse({"site": "s1", "device": "m1", "type": "meter", "broker_host": "127.0.0.1",
                        "broker_port": 1, "key_hex": "00" * 16, "replay_per_s": rate})
    return Uplink(Board(), cfg, Outbox(100))


async def drive(up, client, after_start=None):
    up.client = client
    task = asyncio.create_task(up._send(client))
    await asyncio.sleep(0)
    if after_start is not None:
        after_start()
    await asyncio.wait_for(client.done.wait(), 10)
    task.cancel()


def test_backlog_is_replayed_in_order_no_faster_than_the_rate():
    up = make(50.0)
    for i in range(6):
        up.outbox.push(b"old%d" % i)
    client = FakeClient(6)
    asyncio.run(drive(up, client))
    assert [p for _k, p, _t in client.sent] == [b"old%d" % i for i in range(6)]
    gaps = [client.sent[i + 1][2] - client.sent[i][2] for i in range(len(client.sent) - 1)]
    assert min(gaps) >= 1 / 50.0 - 0.002, gaps  # the limiter's floor, not a speed claim
    # the sixth is still waiting for its PUBACK, so it is still queued
    assert up.replayed == 5 and len(up.outbox) == 1


def test_live_readings_and_acks_overtake_the_backlog():
    up = make(5.0)
    for i in range(4):
        up.outbox.push(b"old%d" % i)
    client = FakeClient(4)

    def arrive():
        up.telemetry(b"live0")  # connected: goes out at once
        up.ack(b"ack0")

    asyncio.run(drive(up, client, arrive))
    sent = [(k, p) for k, p, _t in client.sent]
    assert sent[:3] == [("telemetry", b"old0"), ("ack", b"ack0"), ("telemetry", b"live0")], sent
    assert sent[3] == ("telemetry", b"old1")
    assert up.live == [] and len(up.outbox) == 3  # old1 in flight, old2, old3


def test_live_readings_park_in_the_outbox_when_the_session_ends():
    up = make(5.0)
    up.outbox.push(b"old0")
    up.client = FakeClient(99)
    up.telemetry(b"live0")
    up.telemetry(b"live1")
    up.client = None
    up._park_live()
    out = []
    while len(up.outbox):
        ident, payload = up.outbox.peek()
        out.append(payload)
        up.outbox.remove_through(ident)
    assert out == [b"old0", b"live0", b"live1"] and up.live == []

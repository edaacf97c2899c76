# The MQTT client against a scripted peer that misbehaves on purpose: a real broker
# always answers, so retransmission and dead-link detection need a peer that does not.
# (The integration tests run the same client against real Mosquitto.)

import asyncio

from tendril_fw import mqtt_packets as mp
from tendril_fw.mqtt_client import MQTTClient, MQTTError

BASE_PORT = 39170


async def read_packet(reader):
    first = (await reader.readexactly(1))[0]
    header = b""
    while True:
        header += await reader.readexactly(1)
        found = mp.decode_varint(header)
        if found is not None:
            break
    body = await reader.readexactly(found[0]) if found[0] else b""
    return first >> 4, first & 0x0F, body


class Peer:
    """Answers CONNECT; drops the first `drop_pubacks` PUBACKs; never answers PINGREQ."""

    def __init__(self, drop_pubacks):
        self.drop_pubacks = drop_pubacks
        self.publishes = []
        self.pings = 0
        self.server = None
        self.port = 0

    async def start(self):
        for port in range(BASE_PORT, BASE_PORT + 50):
            try:
                self.server = await asyncio.start_server(self.handle, "127.0.0.1", port)
            except OSError:
                continue
            self.port = port
            return
        raise AssertionError("no free port for the scripted peer")

    async def handle(self, reader, writer):
        try:
            while True:
                kind, flags, body = await read_packet(reader)
                if kind == mp.CONNECT:
                    writer.write(mp.connack(False, 0))
                elif kind == mp.PUBLISH:
                    topic, payload, _qos, _retain, dup, pid = mp.decode_publish(flags, body)
                    self.publishes.append((topic, payload, dup, pid))
                    if self.drop_pubacks:
                        self.drop_pubacks -= 1
                        continue
                    writer.write(mp.puback(pid))
                elif kind == mp.PINGREQ:
                    self.pings += 1
                    continue
                await writer.drain()
        except (EOFError, OSError):
            pass

    def close(self):
        self.server.close()


def test_qos1_publish_retransmits_with_dup_and_same_packet_id():
    async def scenario():
        peer = Peer(drop_pubacks=1)
        await peer.start()
        client = MQTTClient("t1", "127.0.0.1", peer.port, keepalive=0, ack_timeout=0.3, retries=2)
        await client.connect()
        await client.publish("a/b", b"payload", 1)
        client.abort("done")
        peer.close()
        return peer.publishes, client.retransmits, client.nodelay

    publishes, retransmits, nodelay = asyncio.run(scenario())
    assert retransmits == 1
    assert len(publishes) == 2
    assert publishes[0][2] is False and publishes[1][2] is True  # dup only on the retry
    assert publishes[0][3] == publishes[1][3]
    assert publishes[0][:2] == publishes[1][:2] == ("a/b", b"payload")
    assert nodelay is True


def test_publish_gives_up_and_closes_when_no_puback_ever_comes():
    async def scenario():
        peer = Peer(drop_pubacks=99)
        await peer.start()
        client = MQTTClient("t2", "127.0.0.1", peer.port, keepalive=0, ack_timeout=0.2, retries=1)
        await client.connect()
        try:
            await client.publish("a/b", b"x", 1)
        except MQTTError as exc:
            error = str(exc)
        else:
            error = None
        peer.close()
        return error, client.connected, len(peer.publishes)

    error, connected, sent = asyncio.run(scenario())
    assert error is not None and "no PUBACK" in error
    assert connected is False and sent == 2


def test_missing_pingresp_closes_the_connection():
    async def scenario():
        peer = Peer(drop_pubacks=0)
        await peer.start()
        client = MQTTClient("t3", "127.0.0.1", peer.port, keepalive=1)
        await client.connect()
        try:
            await asyncio.wait_for(client.wait_closed(), 10)
        except MQTTError as exc:
            error = str(exc)
        peer.close()
        return error, client.connected, peer.pings

    error, connected, pings = asyncio.run(scenario())
    assert "no PINGRESP" in error and connected is False and pings == 1

# Everything that leaves the device: the MQTT session, reconnects, and the order in
# which queued messages go out.
#
#   reconnect  capped exponential backoff with jitter between sessions; every session
#              is persistent (clean_session=0) and re-subscribes anyway, so commands
#              flow whether or not the broker kept the session.
#   session    last will "offline" (retained), subscribe, then "online" (retained),
#              keepalive pings, TCP_NODELAY (all in MQTTClient).
#   sender     the only publisher while connected, one message in flight: acks, then the
#              latest state, then live telemetry, then the backlog replayed oldest first
#              at no more than `replay_per_s` messages per real second, so a long outage
#              does not flood the broker nor hold live readings back.
#
# Telemetry produced while connected is "live" (RAM, at most LIVE_MAX); everything else
# waits in the outbox (RAM, then flash). Live items are always newer than every outbox
# item, and move to the outbox tail when the session ends, so nothing is lost and the
# backlog stays in seq order. A message leaves only once PUBACKed: at least once.

import asyncio

import tendril_wire as tw
from tendril_fw.mqtt_client import MQTTClient, MQTTError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BACKOFF_BASE_S = 0.5
MAX_PENDING_ACKS = 16
LIVE_MAX = 8
LINK_POLL_S = 0.2  # real seconds


def backoff_delay(attempt, cap, rnd):
    # type: (int, float, float) -> float
    """Real seconds to wait before reconnect attempt `attempt` (0-based); rnd in [0, 1).

    Half fixed, half random ("equal jitter"): a fleet that lost the broker together
    does not come back in lockstep, yet no device retries too eagerly.
    """
    delay = min(cap, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return delay / 2 + delay / 2 * rnd


class Uplink:
    def __init__(self, board, cfg, outbox, on_message=None, subscriptions=(), beat=None):
        # type: (Any, dict[str, Any], Any, Any, tuple[str, ...], Any) -> None
        self.board = board
        self.cfg = cfg
        self.outbox = outbox
        self.on_message = on_message
        self.subscriptions = subscriptions
        self.beat = beat  # beat(name, within_real_s): tells the health check we are alive
        self.site = cfg["site"]
        self.device = cfg["device"]
        self.client = None  # type: MQTTClient | None
        self.connects = 0
        self.reconnects = 0
        self.replayed = 0
        self.live = []  # type: list[bytes]
        self._acks = []  # type: list[bytes]
        self._state = None  # type: bytes | None
        self._wake = asyncio.Event()
        self._replay_gap = 1.0 / cfg["replay_per_s"]
        self._next_replay = 0.0

    def topic(self, kind):
        # type: (str) -> str
        return tw.device_topic(self.site, self.device, kind)

    def queued(self):
        # type: () -> int
        return len(self.outbox) + len(self.live)

    # ------------------------------------------------------------ what to send

    def telemetry(self, payload):
        # type: (bytes) -> bool
        """Queue one telemetry payload; False if the full outbox dropped its oldest item."""
        kept = True
        if self.client is not None and self.client.connected:
            self.live.append(payload)
            if len(self.live) > LIVE_MAX:  # the link is stalling: let the outbox hold it
                kept = self._park_live()
        else:
            kept = self.outbox.push(payload)
        self._wake.set()
        return kept

    def state(self, payload):
        # type: (bytes) -> None
        self._state = payload  # only the latest state matters
        self._wake.set()

    def ack(self, payload):
        # type: (bytes) -> None
        self._acks.append(payload)
        if len(self._acks) > MAX_PENDING_ACKS:
            self._acks.pop(0)
        self._wake.set()

    def _park_live(self):
        # type: () -> bool
        kept = True
        for payload in self.live:
            kept = self.outbox.push(payload) and kept
        self.live = []
        return kept

    # ------------------------------------------------------------ connection

    def _alive(self, within):
        # type: (float) -> None
        if self.beat is not None:
            self.beat("uplink", within)

    async def run(self):
        # type: () -> None
        attempt = 0
        while True:
            connected_before = self.connects
            self._alive(self.cfg["keepalive_s"] + 30.0)
            try:
                await self._session()
            except Exception as exc:  # whatever broke, the device must come back
                self.board.log("session ended: %r" % (exc,))
            finally:
                self.client = None
                self._park_live()
            if self.connects != connected_before:
                attempt = 0
            delay = backoff_delay(attempt, self.cfg["reconnect_max_s"], self.board.random())
            attempt += 1
            self.board.log("reconnecting in %.2f s" % delay)
            self._alive(delay + 30.0)
            await asyncio.sleep(delay)

    def _tls(self):
        # type: () -> Any
        # The board makes the TLS context; a board without `mqtt_tls` must not quietly fall
        # back to cleartext when the config asks for TLS.
        make = getattr(self.board, "mqtt_tls", None)
        if make is None:
            if self.cfg["tls"]:
                raise MQTTError("config says tls but this board cannot make a TLS connection")
            return None
        return make()

    async def _session(self):
        # type: () -> None
        await self.board.network_up()
        client = MQTTClient(
            "tendril-%s-%s" % (self.site, self.device), self.cfg["broker_host"], self.cfg["broker_port"],
            keepalive=self.cfg["keepalive_s"], clean_session=False,
            username=self.cfg["username"], password=self.cfg["password"],
            will=(self.topic(tw.STATUS), tw.status_payload(False), 1, True),
            on_message=self.on_message, ack_timeout=self.cfg["ack_timeout_s"],
            ssl=self._tls(), server_hostname=self.cfg["server_hostname"])
        await client.connect()
        sender = watch = None
        try:
            # Subscribe first: "online" promises that commands sent from now on arrive.
            for topic in self.subscriptions:
                await client.subscribe(topic, 1)
            # logged before "online" goes out, so whoever sees "online" finds the line
            self.board.log("connected to %s:%d nodelay=%s session_present=%s backlog=%d" % (
                client.host, client.port, client.nodelay, client.session_present, len(self.outbox)))
            await client.publish(self.topic(tw.STATUS), tw.status_payload(True), 1, True)
            self.connects += 1
            self.reconnects = self.connects - 1
            self.client = client
            sender = asyncio.create_task(self._send(client))
            link = getattr(self.board, "link_up", None)
            if link is not None:
                watch = asyncio.create_task(self._watch_link(client, link))
            await client.wait_closed()
        finally:
            if sender is not None:
                sender.cancel()
            if watch is not None:
                watch.cancel()
            client.abort("session ended")

    async def _watch_link(self, client, link_up):
        # type: (MQTTClient, Any) -> None
        # Losing Wi-Fi ends the session at once (as the ESP32's network stack does),
        # rather than after a keepalive of silence.
        while client.connected:
            if not link_up():
                client.abort("Wi-Fi link down")
                return
            await asyncio.sleep(LINK_POLL_S)

    # ------------------------------------------------------------ sender

    async def _send(self, client):
        # type: (MQTTClient) -> None
        monotonic = self.board.monotonic
        link_up = getattr(self.board, "link_up", None)
        try:
            while True:
                self._wake.clear()
                # A publish never starts on a link already known to be down: between two polls
                # of the link watcher it could reach the broker while its PUBACK is lost with the
                # session, and the record would then be sent twice.
                if link_up is not None and not link_up():
                    client.abort("Wi-Fi link down")
                    return
                # Each turn takes at most one idle wait (keepalive) or one publish with retries.
                self._alive(self.cfg["keepalive_s"] + self.cfg["ack_timeout_s"] * 4 + 10.0)
                if self._acks:
                    await client.publish(self.topic(tw.ACK), self._acks[0], 1)
                    self._acks.pop(0)
                elif self._state is not None:
                    payload = self._state
                    self._state = None
                    await client.publish(self.topic(tw.STATE), payload, 1)
                elif self.live:
                    payload = self.live[0]
                    await client.publish(self.topic(tw.TELEMETRY), payload, 1)
                    if self.live and self.live[0] is payload:
                        self.live.pop(0)
                elif len(self.outbox):
                    wait = self._next_replay - monotonic()
                    if wait > 0:
                        try:
                            await asyncio.wait_for(self._wake.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                        continue
                    item = self.outbox.peek()
                    await client.publish(self.topic(tw.TELEMETRY), item[1], 1)
                    self.outbox.remove_through(item[0])
                    self.replayed += 1
                    self._next_replay = max(self._next_replay, monotonic()) + self._replay_gap
                else:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.cfg["keepalive_s"] or 30)
                    except asyncio.TimeoutError:
                        pass
        except MQTTError as exc:
            client.abort(str(exc))

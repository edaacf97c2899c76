# The node's async main loop, for a meter or a relay.
#
# Three concerns run side by side:
#   producer  - on the device clock: samples, telemetry into the outbox, state records;
#               it never waits for the network, so readings survive an outage.
#   session   - one MQTT connection: last will, online status, command subscription,
#               then a single sender drains acks, state and the outbox in order.
#   reconnect - capped exponential backoff with jitter between sessions.
#
# The board supplies everything physical (duck-typed):
#   now() -> unix seconds on the device clock     async sleep(device_seconds)
#   read_power() -> W (meter)                      set_relay(0|1) (relay)
#   free_heap() -> int | None                      random() -> float in [0, 1)
#   async network_up() (Wi-Fi etc.; may raise)     log(text)

import asyncio

import tendril_wire as tw
from tendril_fw.meter import MeterNode
from tendril_fw.mqtt_client import MQTTClient, MQTTError
from tendril_fw.outbox import RamQueue
from tendril_fw.relay import RelayNode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BACKOFF_BASE_S = 0.5
MAX_PENDING_ACKS = 16


def backoff_delay(attempt, cap, rnd):
    # type: (int, float, float) -> float
    """Real seconds to wait before reconnect attempt `attempt` (0-based); rnd in [0, 1).

    Half fixed, half random ("equal jitter"): a fleet that lost the broker together
    does not come back in lockstep, yet no device retries too eagerly.
    """
    delay = min(cap, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return delay / 2 + delay / 2 * rnd


def next_due(due, period, now):
    # type: (float, float, float) -> float
    """The next tick after `due`; ticks missed while busy are skipped, not bunched."""
    due += period
    return due if due > now else now + period


class Node:
    def __init__(self, board, cfg, outbox=None):
        # type: (Any, dict[str, Any], Any) -> None
        self.board = board
        self.cfg = cfg
        self.site = cfg["site"]
        self.device = cfg["device"]
        self.is_relay = cfg["type"] == tw.DEVICE_RELAY
        self.outbox = outbox if outbox is not None else RamQueue(cfg["queue_max"])
        self.boot_time = 0.0
        self.meter = None if self.is_relay else MeterNode()
        self.relay = None  # type: RelayNode | None  # created by boot(), on a valid clock
        self.reconnects = 0
        self.connects = 0
        self.client = None  # type: MQTTClient | None
        self._state_seq = 0
        self._pending_state = None  # type: bytes | None
        self._acks = []  # type: list[bytes]
        self._wake = asyncio.Event()
        self._watch = None  # type: Any

    def topic(self, kind):
        # type: (str) -> str
        return tw.device_topic(self.site, self.device, kind)

    # ------------------------------------------------------------ main loop

    def boot(self, now):
        # type: (float) -> None
        """Start device-time state at `now`, a valid wall-clock time."""
        self.boot_time = now
        if self.is_relay:
            cfg = self.cfg
            self.relay = RelayNode(cfg["key"], now, cfg["safe_default"], cfg["min_on_s"], cfg["min_off_s"],
                                   cfg["relay_load_w"])

    async def run(self):
        # type: () -> None
        if self.is_relay:
            self.board.set_relay(self.cfg["safe_default"])
        await self._wait_for_clock()
        self.boot(self.board.now())
        asyncio.create_task(self._produce())
        attempt = 0
        while True:
            connected_before = self.connects
            try:
                await self._session()
            except Exception as exc:  # whatever broke, the device must come back
                self.board.log("session ended: %r" % (exc,))
            finally:
                self.client = None
            if self.connects != connected_before:
                attempt = 0
            delay = backoff_delay(attempt, self.cfg["reconnect_max_s"], self.board.random())
            attempt += 1
            self.board.log("reconnecting in %.2f s" % delay)
            await asyncio.sleep(delay)

    async def _wait_for_clock(self):
        # type: () -> None
        # An ESP32 boots at 2000-01-01 until NTP (in network_up) sets it; records
        # stamped before that would be rejected, and a meter would integrate the jump.
        attempt = 0
        while self.board.now() < tw.MIN_TS:
            try:
                await self.board.network_up()
            except Exception as exc:
                self.board.log("network/clock not ready: %r" % (exc,))
            if self.board.now() >= tw.MIN_TS:
                return
            await asyncio.sleep(backoff_delay(attempt, self.cfg["reconnect_max_s"], self.board.random()))
            attempt += 1

    async def _session(self):
        # type: () -> None
        await self.board.network_up()
        client = MQTTClient(
            "tendril-%s-%s" % (self.site, self.device), self.cfg["broker_host"], self.cfg["broker_port"],
            keepalive=self.cfg["keepalive_s"], clean_session=False,
            username=self.cfg["username"], password=self.cfg["password"],
            will=(self.topic(tw.STATUS), tw.status_payload(False), 1, True),
            on_message=self._on_message, ack_timeout=self.cfg["ack_timeout_s"])
        await client.connect()
        sender = None
        try:
            # Subscribe first: "online" promises that commands sent from now on arrive.
            if self.relay is not None:
                await client.subscribe(self.topic(tw.CMD), 1)
            await client.publish(self.topic(tw.STATUS), tw.status_payload(True), 1, True)
            self.connects += 1
            self.reconnects = self.connects - 1
            self.client = client
            self.board.log("connected to %s:%d nodelay=%s session_present=%s" % (
                client.host, client.port, client.nodelay, client.session_present))
            sender = asyncio.create_task(self._send(client))
            await client.wait_closed()
        finally:
            if sender is not None:
                sender.cancel()
            client.abort("session ended")

    async def _send(self, client):
        # type: (MQTTClient) -> None
        # The only publisher while connected: one message in flight keeps telemetry in
        # order, and an item leaves the outbox only after its PUBACK.
        try:
            while True:
                self._wake.clear()
                if self._acks:
                    await client.publish(self.topic(tw.ACK), self._acks[0], 1)
                    self._acks.pop(0)
                elif self._pending_state is not None:
                    payload = self._pending_state
                    self._pending_state = None
                    await client.publish(self.topic(tw.STATE), payload, 1)
                elif len(self.outbox):
                    item = self.outbox.peek()
                    await client.publish(self.topic(tw.TELEMETRY), item[1], 1)
                    self.outbox.remove_through(item[0])
                else:
                    await self._wake.wait()
        except MQTTError as exc:
            client.abort(str(exc))

    # ------------------------------------------------------------ producer

    async def _produce(self):
        # type: () -> None
        tel_s = self.cfg["telemetry_s"]
        state_s = self.cfg["state_s"]
        sample_s = self.cfg["sample_s"] or tel_s
        now = self.board.now()
        if self.meter is not None:
            self.meter.sample(now, self.board.read_power())
        next_tel = now + tel_s
        next_state = now
        next_sample = now + sample_s
        while True:
            now = self.board.now()
            if self.meter is not None and (now >= next_sample or now >= next_tel):
                self.meter.sample(now, self.board.read_power())
                next_sample = now + sample_s
            if now >= next_tel:
                self._telemetry(now)
                next_tel = next_due(next_tel, tel_s, now)
            if now >= next_state:
                self._state(now)
                next_state = next_due(next_state, state_s, now)
            due = min(next_tel, next_state, next_sample if self.meter is not None else next_tel)
            await self.board.sleep(max(0.0, due - self.board.now()))

    def _telemetry(self, now):
        # type: (float) -> None
        source = self.meter if self.meter is not None else self.relay
        assert source is not None
        payload = tw.encode(tw.TELEMETRY, source.telemetry(now))
        if not self.outbox.push(payload):
            self.board.log("outbox full: dropped oldest telemetry (%d so far)" % self.outbox.dropped)
        self._wake.set()

    def _state(self, now):
        # type: (float) -> None
        msg = {"v": tw.VERSION, "seq": self._state_seq, "ts": now, "fw": self.cfg["fw_version"],
               "uptime_s": now - self.boot_time, "queue": len(self.outbox),
               "dropped": self.outbox.dropped, "reconnects": self.reconnects}  # type: dict[str, Any]
        heap = self.board.free_heap()
        if heap is not None:
            msg["free_heap"] = heap
        if self.relay is not None:
            msg["relay"] = self.relay.relay
        self._state_seq += 1
        self._pending_state = tw.encode(tw.STATE, msg)  # only the latest state matters
        self._wake.set()

    # ------------------------------------------------------------ commands

    def _on_message(self, topic, payload, qos, retain):
        # type: (str, bytes, int, bool) -> None
        if self.relay is None or topic != self.topic(tw.CMD):
            return
        now = self.board.now()
        before = self.relay.relay
        ack = self.relay.handle_payload(now, self.site, self.device, payload)
        self.board.log("cmd %s seq=%d: %s" % (ack["id"], ack["seq"], ack["reason"]))
        if self.relay.relay != before:
            self._output_changed(now)
        if ack["ok"]:
            self._arm_fallback()
        self._acks.append(tw.encode(tw.ACK, ack))
        if len(self._acks) > MAX_PENDING_ACKS:
            self._acks.pop(0)
        self._wake.set()

    def _output_changed(self, now):
        # type: (float) -> None
        assert self.relay is not None
        self.board.set_relay(self.relay.relay)
        self._telemetry(now)  # report a switch at once, not at the next period

    def _arm_fallback(self):
        # type: () -> None
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.create_task(self._fallback())

    async def _fallback(self):
        # type: () -> None
        # Sleeps on the device clock until the command in force lapses, then returns
        # the relay to its safe state (re-armed by every accepted command).
        relay = self.relay
        assert relay is not None
        while True:
            deadline = relay.deadline()
            if deadline is None:
                return
            now = self.board.now()
            if now < deadline:
                await self.board.sleep(deadline - now)
                continue
            if relay.tick(now):
                self.board.log("command expired: relay back to safe default %d" % relay.relay)
                self._output_changed(now)
            elif relay.deadline() == deadline:
                return  # nothing left to wait for

# The node: what a meter or relay does on the device clock, for the uplink to send.
#
# Coroutines side by side:
#   producer  samples, telemetry, state on the device clock; never waits for the
#             network, so readings survive an outage (they wait in the outbox).
#   uplink    MQTT session, reconnects and send order (tendril_fw.uplink).
#   override  polls the local button (relay): the person at the load wins.
#   health    feeds the watchdog only while producer and uplink keep their promises.
#
# Time: until the clock is synced (NTP on ESP32) records are stamped on the device's
# raw clock, kept in RAM and marked unsynced; at sync the jump is measured against the
# monotonic clock and added to them. Only then do they get encoded (the contract
# rejects pre-2020 stamps) and queued. The meter's energy register never integrates
# the jump.
#
# The board supplies everything physical (duck-typed):
#   now() -> unix seconds on the device clock     async sleep(device_seconds)
#   monotonic() -> real seconds, never steps       speed: device s per real s (default 1)
#   read_power() -> W (meter)                      set_relay(0|1) (relay)
#   read_override: None, or () -> None|0|1         watchdog(timeout_s) -> obj with feed()
#   free_heap() -> int | None                      random() -> float in [0, 1)
#   boot_reason() -> str (optional)                async network_up() (may raise)   log(text)

import asyncio
import gc

import tendril_wire as tw
from tendril_fw.flashlog import FlashLog
from tendril_fw.health import Liveness
from tendril_fw.meter import MeterNode
from tendril_fw.outbox import Outbox
from tendril_fw.relay import RelayNode
from tendril_fw.seqstore import AcceptedSeq, SeqCounter
from tendril_fw.uplink import Uplink, backoff_delay

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ("Node", "backoff_delay", "next_due")

UNSYNCED_MAX = 64  # records held in RAM until the clock is synced
OVERRIDE_POLL_S = 0.2  # real seconds between reads of the local button (a person's reaction time)
SLACK_S = 10.0  # real seconds a loop may overrun its promise before the watchdog starves


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
        state_dir = cfg.get("state_dir")
        if outbox is None:
            flash = FlashLog(state_dir + "/outbox") if state_dir else None
            outbox = Outbox(cfg["queue_max"], cfg["ram_queue_max"], flash, board.log)
        self.outbox = outbox
        self.seqs = SeqCounter(state_dir + "/seq" if state_dir else None)
        self.state_seqs = SeqCounter(state_dir + "/state_seq" if state_dir else None)
        # relay: the last accepted command's seq, so a replay is refused after a reboot too
        self.accepted = AcceptedSeq(state_dir + "/cmd_seq") if self.is_relay and state_dir else None
        if self.accepted is not None and self.accepted.seq is None and self.accepted.damaged:
            board.log("cmd_seq on flash is damaged: replays refused from RAM only until the next command")
        self.speed = getattr(board, "speed", 1.0)
        self.boot_mono = board.monotonic()
        reason = getattr(board, "boot_reason", None)
        self.boot_reason = reason() if reason is not None else "unknown"
        self.meter = None if self.is_relay else MeterNode()
        self.relay = None  # type: RelayNode | None  # created at clock sync
        self.synced = False
        self.clock_step = 0.0
        self.unsynced = []  # type: list[dict[str, Any]]
        self.unsynced_dropped = 0
        self._last_raw = None  # type: float | None
        self._last_mono = 0.0
        self.liveness = Liveness()
        subs = (tw.device_topic(self.site, self.device, tw.CMD),) if self.is_relay else ()
        self.uplink = Uplink(board, cfg, self.outbox, self._on_message, subs, self._beat)
        self._watch = None  # type: Any

    def _beat(self, name, within):
        # type: (str, float) -> None
        self.liveness.beat(name, self.board.monotonic(), within)

    # ------------------------------------------------------------ main loop

    async def run(self):
        # type: () -> None
        if self.is_relay:
            self.board.set_relay(self.cfg["safe_default"])
        asyncio.create_task(self._health())
        asyncio.create_task(self._produce())
        await self._wait_for_clock()
        if self.is_relay:
            asyncio.create_task(self._watch_override())
        await self.uplink.run()

    async def _wait_for_clock(self):
        # type: () -> None
        # An ESP32 boots at 2000-01-01 until NTP (in network_up) sets it.
        attempt = 0
        while True:
            self._beat("uplink", self.cfg["reconnect_max_s"] + 60.0)
            if self.board.now() < tw.MIN_TS:
                try:
                    await self.board.network_up()
                except Exception as exc:
                    self.board.log("network/clock not ready: %r" % (exc,))
            if self.check_sync(self.board.now()):
                return
            await asyncio.sleep(backoff_delay(attempt, self.cfg["reconnect_max_s"], self.board.random()))
            attempt += 1

    def check_sync(self, now):
        # type: (float) -> bool
        """Notice the clock becoming valid; stamp what waited with the measured jump."""
        if self.synced:
            return True
        mono = self.board.monotonic()
        if now < tw.MIN_TS:
            self._last_raw, self._last_mono = now, mono
            return False
        jump = 0.0
        if self._last_raw is not None:
            jump = now - (self._last_raw + (mono - self._last_mono) * self.speed)
            self.board.log("clock synced: stepped %.3f s" % jump)
        self.synced = True
        self.clock_step = jump
        if self.meter is not None and self.meter.last_t is not None:
            self.meter.last_t += jump  # the register must not integrate the step
        self.boot(now)
        waiting, self.unsynced = self.unsynced, []
        for msg in waiting:
            msg["ts"] += jump
            msg["unsynced"] = True
            self._queue(msg)
        return True

    def boot(self, now):
        # type: (float) -> None
        """Start wall-clock state at `now`, a synced time."""
        if self.is_relay and self.relay is None:
            cfg = self.cfg
            self.relay = RelayNode(cfg["key"], now, cfg["safe_default"], cfg["min_on_s"], cfg["min_off_s"],
                                   cfg["relay_load_w"], cfg["max_switches_per_hour"],
                                   self.accepted.seq if self.accepted is not None else None)

    # ------------------------------------------------------------ producer

    async def _produce(self):
        # type: () -> None
        tel_s = self.cfg["telemetry_s"]
        sample_s = self.cfg["sample_s"] or tel_s
        now = self.board.now()
        self.check_sync(now)
        if self.meter is not None:
            self.meter.sample(now, self.board.read_power())
        next_tel = now + tel_s
        next_state = now
        next_sample = now + sample_s
        while True:
            due = None
            try:
                next_tel, next_state, next_sample = self._produce_once(next_tel, next_state, next_sample)
                due = min(next_tel, next_state, next_sample if self.meter is not None else next_tel)
            except MemoryError as exc:
                # Out of heap for a moment (a burst of traffic): retry soon, keep the node alive.
                gc.collect()
                self.board.log("producer: %r" % (exc,))
            wait = tel_s / 4 if due is None else max(0.0, due - self.board.now())
            self._beat("producer", wait / self.speed + SLACK_S)
            await self.board.sleep(wait)

    def _produce_once(self, next_tel, next_state, next_sample):
        # type: (float, float, float) -> tuple[float, float, float]
        tel_s = self.cfg["telemetry_s"]
        state_s = self.cfg["state_s"]
        sample_s = self.cfg["sample_s"] or tel_s
        now = self.board.now()
        if not self.synced and self.check_sync(now):
            # the clock stepped: move the schedule with it, and say hello at once
            next_tel += self.clock_step
            next_sample += self.clock_step
            next_state = now
        if self.meter is not None and (now >= next_sample or now >= next_tel):
            self.meter.sample(now, self.board.read_power())
            next_sample = now + sample_s
        if now >= next_tel:
            self.telemetry(now)
            next_tel = next_due(next_tel, tel_s, now)
        if now >= next_state:
            self.state(now)
            next_state = next_due(next_state, state_s, now)
        return next_tel, next_state, next_sample

    def telemetry(self, now):
        # type: (float) -> None
        source = self.meter if self.meter is not None else self.relay
        if source is None:
            return  # a relay has no state to report before the clock is synced
        source.seq = self.seqs.take()
        msg = source.telemetry(now)
        if self.synced:
            self._queue(msg)
            return
        self.unsynced.append(msg)
        if len(self.unsynced) > UNSYNCED_MAX:
            self.unsynced.pop(0)
            self.unsynced_dropped += 1

    def _queue(self, msg):
        # type: (dict[str, Any]) -> None
        if not self.uplink.telemetry(tw.encode(tw.TELEMETRY, msg)):
            self.board.log("outbox full: dropped oldest telemetry (%d so far)" % self.outbox.dropped)

    def dropped(self):
        # type: () -> int
        return self.outbox.dropped + self.unsynced_dropped

    def state(self, now):
        # type: (float) -> None
        if not self.synced:
            return
        msg = {"v": tw.VERSION, "seq": self.state_seqs.take(), "ts": now, "fw": self.cfg["fw_version"],
               "uptime_s": (self.board.monotonic() - self.boot_mono) * self.speed,
               "queue": self.uplink.queued() + len(self.unsynced), "dropped": self.dropped(),
               "reconnects": self.uplink.reconnects, "boot": self.boot_reason}  # type: dict[str, Any]
        heap = self.board.free_heap()
        if heap is not None:
            msg["free_heap"] = heap
        if self.relay is not None:
            msg["relay"] = self.relay.relay
        self.uplink.state(tw.encode(tw.STATE, msg))

    # ------------------------------------------------------------ health

    async def _health(self):
        # type: () -> None
        timeout = self.cfg["wdt_s"]
        if not timeout:
            return
        wdt = self.board.watchdog(timeout)
        complained = False
        while True:
            stale = self.liveness.stale(self.board.monotonic())
            if not stale:
                wdt.feed()
                complained = False
            elif not complained:
                self.board.log("watchdog not fed: %s stalled" % ",".join(stale))
                complained = True
            await asyncio.sleep(timeout / 4)

    # ------------------------------------------------------------ relay

    def _on_message(self, topic, payload, qos, retain):
        # type: (str, bytes, int, bool) -> None
        if self.relay is None or topic != tw.device_topic(self.site, self.device, tw.CMD):
            return
        now = self.board.now()
        before = self.relay.relay
        ack = self.relay.handle_payload(now, self.site, self.device, payload)
        self.board.log("cmd %s seq=%d: %s" % (ack["id"], ack["seq"], ack["reason"]))
        if ack["ok"] and self.accepted is not None and not self.accepted.save(ack["seq"]):
            # Before the output moves: a power cut after this write cannot let the command
            # be replayed. If the flash refuses, RAM still refuses replays until a reboot.
            self.board.log("cmd seq not saved to flash (%d failures)" % self.accepted.errors)
        if self.relay.relay != before:
            self._output_changed(now)
        if ack["ok"]:
            self._arm_fallback()
        self.uplink.ack(tw.encode(tw.ACK, ack))

    def _output_changed(self, now):
        # type: (float) -> None
        assert self.relay is not None
        self.board.set_relay(self.relay.relay)
        # on a busy host at 200x (the HIL anti-short-cycle scenario) the hold counted from the
        # decision made an on period shorter than min_on_s on the bench's own clock
        self.relay.output_moved(self.board.now())
        self.telemetry(now)  # report a switch at once, not at the next period

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

    def poll_override(self, now):
        # type: (float) -> None
        """Apply the local button's state; report any change at once."""
        read = getattr(self.board, "read_override", None)
        if read is None or self.relay is None:
            return
        before = self.relay.relay
        report = self.relay.set_override(now, read())
        if report is None:
            return
        self.board.log("local override: %s, relay %d" % (report["reason"], report["relay"]))
        if self.relay.relay != before:
            self._output_changed(now)
        self.uplink.ack(tw.encode(tw.ACK, report))
        self._arm_fallback()  # released: the command in force expires as usual

    async def _watch_override(self):
        # type: () -> None
        if getattr(self.board, "read_override", None) is None:
            return
        while True:
            self.poll_override(self.board.now())
            await asyncio.sleep(OVERRIDE_POLL_S)

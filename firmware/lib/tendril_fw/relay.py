# Relay node logic: decide on signed, expiring commands; fall back to a safe state.
#
# Pure: every call takes `now` (device unix seconds) and returns a decision; the
# node applies the output. A refused command leaves the relay exactly as it was.

import json

import tendril_wire as tw

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SEEN_IDS = 32  # how many accepted command ids are remembered against replay
HOUR_S = 3600.0


class RelayNode:
    def __init__(self, key, now, safe_default=0, min_on_s=0.0, min_off_s=0.0, rated_load_w=0.0,
                 max_switches_per_hour=0, last_seq=None):
        # type: (bytes, float, int, float, float, float, int, int | None) -> None
        if safe_default not in (0, 1):
            raise ValueError("safe_default must be 0 or 1")
        self.key = key
        self.safe_default = safe_default
        self.min_on_s = min_on_s
        self.min_off_s = min_off_s
        self.rated_load_w = rated_load_w
        self.max_switches_per_hour = max_switches_per_hour  # 0 = no limit
        self.relay = safe_default
        self.switch_times = []  # type: list[float]  # switches within the last hour
        self.override = None  # type: int | None  # local button state; wins over the cloud
        self.commanded = None  # type: int | None  # state of the cloud command in force
        # Boot counts as a switch into the safe state: after a power blip the
        # anti-short-cycle timers protect the load (e.g. a compressor) too.
        self.last_change = now
        self.switches = 0
        # The last accepted command's seq, kept on flash by the node (seqstore.AcceptedSeq):
        # every command accepted before a reboot has a seq <= it, so none can be replayed.
        self.last_seq = last_seq  # type: int | None
        self.seen_ids = []  # type: list[str]
        self.expires = None  # type: float | None  # expiry of the command in force
        self.seq = 0

    # ------------------------------------------------------------ commands

    def handle_payload(self, now, site, device, payload):
        # type: (float, str, str, bytes) -> dict[str, Any]
        """Like handle_command, for raw MQTT payload bytes."""
        try:
            cmd = json.loads(payload)
        except (ValueError, UnicodeError):
            cmd = None
        if not isinstance(cmd, dict):
            return self._ack(now, {}, False, tw.REFUSE_INVALID)
        return self.handle_command(now, site, device, cmd)

    def handle_command(self, now, site, device, cmd):
        # type: (float, str, str, dict[str, Any]) -> dict[str, Any]
        """Apply or refuse one command; returns the ack record (tendril_wire.ack)."""
        reason = self._refusal(now, site, device, cmd)
        if reason is not None:
            return self._ack(now, cmd, False, reason)
        self._switch(now, cmd["relay"])
        self.commanded = cmd["relay"]
        self.last_seq = cmd["seq"]
        self.seen_ids.append(cmd["id"])
        if len(self.seen_ids) > SEEN_IDS:
            self.seen_ids.pop(0)
        self.expires = cmd["expires"]
        return self._ack(now, cmd, True, tw.ACCEPTED)

    def _refusal(self, now, site, device, cmd):
        # type: (float, str, str, dict[str, Any]) -> str | None
        try:
            tw.validate(tw.CMD, cmd)
        except tw.ContractError:
            return tw.REFUSE_INVALID
        if not tw.verify_command(self.key, site, device, cmd):
            return tw.REFUSE_BAD_SIG
        if now >= cmd["expires"]:
            return tw.REFUSE_EXPIRED
        if cmd["id"] in self.seen_ids or cmd["seq"] == self.last_seq:
            return tw.REFUSE_REPLAYED
        if self.last_seq is not None and cmd["seq"] < self.last_seq:
            return tw.REFUSE_OUT_OF_ORDER
        if self.override is not None:
            return tw.REFUSE_OVERRIDE
        reason = self._short_cycle(now, cmd["relay"])
        if reason is None and cmd["relay"] != self.relay and self._switch_budget(now) <= 0:
            return tw.REFUSE_MAX_SWITCHES
        return reason

    def _switch_budget(self, now):
        # type: (float) -> int
        """Switches still allowed in the sliding hour ending at `now` (large if unlimited)."""
        while self.switch_times and self.switch_times[0] <= now - HOUR_S:
            self.switch_times.pop(0)
        if not self.max_switches_per_hour:
            return 1 << 30
        return self.max_switches_per_hour - len(self.switch_times)

    def output_moved(self, now):
        # type: (float) -> None
        """The board moved the output at `now` (at or after the decision): the hold counts from
        here. Between decision and output lie a flash write and a log line (Node._on_message)."""
        if now > self.last_change:
            self.last_change = now

    def _switch(self, now, target):
        # type: (float, int) -> bool
        if target == self.relay:
            return False
        self.relay = target
        self.last_change = now
        self.switches += 1
        self.switch_times.append(now)
        if len(self.switch_times) > max(self.max_switches_per_hour, 1):
            self.switch_times.pop(0)
        return True

    # ------------------------------------------------------------ local override

    def set_override(self, now, state):
        # type: (float, int | None) -> dict[str, Any] | None
        """The local button: 0/1 forces the output at once, None hands control back.

        Returns the report to publish (an ack-shaped record, id "override") when the
        override engaged or was released, None if nothing changed. The person at the
        load wins over every timer and the cloud; on release the cloud command still in
        force applies again, else the safe default.
        """
        if state == self.override:
            return None
        self.override = state
        if state is not None:
            self._switch(now, state)
            return tw.ack(tw.OVERRIDE_ACK_ID, -1, now, True, tw.OVERRIDE_ON, self.relay)
        if self.commanded is not None and self.expires is not None and now < self.expires:
            self._switch(now, self.commanded)
        else:
            self.commanded = None
            self.expires = None
            self._switch(now, self.safe_default)
        return tw.ack(tw.OVERRIDE_ACK_ID, -1, now, True, tw.OVERRIDE_OFF, self.relay)

    def _short_cycle(self, now, target):
        # type: (float, int) -> str | None
        """The anti-short-cycle reason that forbids switching to `target` now, if any."""
        if target == self.relay:
            return None
        if target == 1 and now - self.last_change < self.min_off_s:
            return tw.REFUSE_MIN_OFF
        if target == 0 and now - self.last_change < self.min_on_s:
            return tw.REFUSE_MIN_ON
        return None

    def _ack(self, now, cmd, ok, reason):
        # type: (float, dict[str, Any], bool, str) -> dict[str, Any]
        cmd_id = cmd.get("id")
        seq = cmd.get("seq")
        if not isinstance(cmd_id, str) or len(cmd_id) > 64:
            cmd_id = ""
        if not isinstance(seq, int) or isinstance(seq, bool):
            seq = -1
        return tw.ack(cmd_id, seq, now, ok, reason, self.relay)

    # ------------------------------------------------------------ safe default

    def deadline(self):
        # type: () -> float | None
        """Device time at which tick() will fall back to the safe state, if one is pending."""
        if self.expires is None or self.override is not None:
            return None
        if self.relay == self.safe_default:
            return self.expires
        hold = self.min_off_s if self.relay == 0 else self.min_on_s
        return max(self.expires, self.last_change + hold)

    def tick(self, now):
        # type: (float) -> bool
        """Fall back to safe_default once the command in force expired; True if the relay changed.

        The fallback waits for the anti-short-cycle timer too: a safe state reached by
        short-cycling the load would not be safe for the load.
        """
        if self.expires is None or now < self.expires or self.override is not None:
            return False
        if self.relay == self.safe_default:
            self.expires = None
            self.commanded = None
            return False
        if self._short_cycle(now, self.safe_default) is not None:
            return False
        # Safety first: the fallback may exceed max_switches_per_hour (it still counts).
        self._switch(now, self.safe_default)
        self.expires = None
        self.commanded = None
        return True

    def telemetry(self, now):
        # type: (float) -> dict[str, Any]
        msg = tw.telemetry_relay(self.seq, now, self.relay, self.rated_load_w if self.relay else 0.0)
        self.seq += 1
        return msg

"""Turn schedule decisions into signed, expiring relay commands and account for their acks.

Pure bookkeeping: the caller publishes `OutgoingCommand.payload` on `.topic` and feeds acks back
through `on_ack`. Sequence numbers rise per device, because the firmware refuses a command whose
seq is not above the last one it accepted (replay and reordering protection).

Safety: a device's limits (minimum on / off time, switches per rolling day) are enforced here
too, before signing, so no command the cloud sends asks for what would harm the load even if
the optimizer did; the firmware's own anti-short-cycle check stays as the last line.

Delivery: a command without an ack is re-sent as is (same id, seq and signature: the device
applies it at most once and answers "replayed" if the first copy did arrive); after
`max_attempts` sends, or once it has expired, it is given up and its site flagged.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.timefmt import utc_time

DeviceKey = tuple[str, str]  # (site, device)

# How many finished command ids are remembered to recognise a redelivered (QoS 1) ack.
_DONE_MEMORY = 4096


@dataclass(frozen=True)
class OutgoingCommand:
    site: str
    device: str
    topic: str
    payload: bytes
    cmd: dict[str, Any]
    sent_at: float
    requested: int | None = None  # what the caller asked for, when a safety limit changed it
    clamp_reason: str | None = None  # wire.REFUSE_MIN_ON / REFUSE_MIN_OFF / MAX_SWITCHES


@dataclass(frozen=True)
class SafetyLimits:
    min_on_s: float = 0.0
    min_off_s: float = 0.0
    max_switches_per_day: int | None = None  # in any rolling 24 h

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_on_s) and self.min_on_s >= 0 and math.isfinite(self.min_off_s)
                and self.min_off_s >= 0):
            raise ValueError(f"min on/off times must be finite and >= 0, got {self.min_on_s}, {self.min_off_s}")
        if self.max_switches_per_day is not None and self.max_switches_per_day < 0:
            raise ValueError(f"max_switches_per_day must be >= 0, got {self.max_switches_per_day}")


MAX_SWITCHES = wire.REFUSE_MAX_SWITCHES
DAY_S = 86400.0


@dataclass
class DispatchStats:
    sent: int = 0
    acked_ok: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by the device's refusal reason
    pending: int = 0
    retried: int = 0  # re-sends of an unacknowledged command (same id)
    given_up: int = 0  # commands that ran out of attempts or expired unacknowledged
    clamped: Counter[str] = field(default_factory=Counter)  # commands changed by a safety limit
    duplicate_acks: int = 0  # ack for a command already settled (QoS 1 redelivery)
    unmatched_acks: int = 0  # ack naming no command we sent to that device (or a wrong seq)
    invalid_acks: int = 0  # ack that breaks the wire contract
    silent_relays: int = 0  # times a device reached `silent_after` given-up commands in a row


class Dispatcher:
    def __init__(
        self,
        keys: Mapping[DeviceKey, bytes],
        grace_s: float = 30.0,
        last_seq: Mapping[DeviceKey, int] | None = None,
        limits: Mapping[DeviceKey, SafetyLimits] | None = None,
        max_attempts: int = 3,
    ) -> None:
        """`keys`: per-device HMAC keys. `grace_s`: how long past its validity a command may still
        be applied, covering clock skew between cloud and device. `last_seq`: the highest seq each
        device has already seen, so a restarted dispatcher continues above it. `limits`: safety
        limits per device. `max_attempts`: sends of one command before its site is flagged."""
        if not (math.isfinite(grace_s) and grace_s >= 0):
            raise ValueError(f"grace_s must be finite and >= 0, got {grace_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._limits = dict(limits or {})
        self._max_attempts = max_attempts
        self._relay: dict[DeviceKey, int] = {}  # state the device is in (or was last told)
        self._changed_at: dict[DeviceKey, float] = {}
        self._switches: dict[DeviceKey, deque[float]] = {}
        self._attempts: dict[tuple[str, str, str], tuple[int, float]] = {}  # (sends, last send)
        self._switches_sent: set[tuple[str, str, str]] = set()  # pending commands that switch
        self.flagged: dict[str, str] = {}  # site -> why its commands are not getting through
        self._keys = dict(keys)
        self._grace_s = grace_s
        self._seq: dict[DeviceKey, int] = dict(last_seq or {})
        self._pending: dict[tuple[str, str, str], OutgoingCommand] = {}
        self._done: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.stats = DispatchStats()
        # Consecutive commands given up without any ack, per device; reset by any ack from it.
        self.unanswered: Counter[DeviceKey] = Counter()
        self.silent_after = 1  # given-up commands (each sent max_attempts times) that make a device "silent"
        self.silent: set[DeviceKey] = set()  # devices at or past silent_after (report them)

    def learn_seq(self, site: str, device: str, seq: int) -> None:
        """The device is known to have seen `seq` (from its ack, or a saved state): later commands
        are numbered above it."""
        dev = (site, device)
        if seq > self._seq.get(dev, 0):
            self._seq[dev] = seq

    def last_seq(self, site: str, device: str) -> int:
        return self._seq.get((site, device), 0)

    def relay_state(self, site: str, device: str) -> int | None:
        """The relay state the dispatcher believes the device is in (None: not known yet)."""
        return self._relay.get((site, device))

    def _clamp(self, dev: DeviceKey, relay: int, now: float) -> str | None:
        """Why switching `dev` to `relay` now would break a safety limit, if it would."""
        limits = self._limits.get(dev)
        current = self._relay.get(dev)
        if limits is None or current is None or relay == current:
            return None
        since = now - self._changed_at.get(dev, -math.inf)
        if current == 1 and since < limits.min_on_s:
            return wire.REFUSE_MIN_ON
        if current == 0 and since < limits.min_off_s:
            return wire.REFUSE_MIN_OFF
        if limits.max_switches_per_day is not None:
            recent = self._switches.get(dev, deque())
            while recent and recent[0] <= now - DAY_S:
                recent.popleft()
            if len(recent) >= limits.max_switches_per_day:
                return MAX_SWITCHES
        return None

    def _switched(self, dev: DeviceKey, relay: int, at: float) -> None:
        if self._relay.get(dev) != relay:
            if dev in self._relay:  # the first state we learn is not a switch we caused
                self._switches.setdefault(dev, deque()).append(at)
            self._changed_at[dev] = at
        self._relay[dev] = relay

    def command(self, site: str, device: str, relay: int, valid_until: float, now: float,
                seq_floor: int | None = None) -> OutgoingCommand:
        """Sign a command setting `relay` (0/1), valid until `valid_until` (+ grace).

        `seq_floor`: the lowest seq this command may carry. An agent that may lose its memory or
        hand a site to another process passes a clock-derived floor (int(now * 1000)), so its
        seq stays above whatever the device accepted from an earlier owner.

        If switching now would break the device's safety limits the command holds the current
        state instead; the returned command says so (`requested`, `clamp_reason`).
        """
        key = self._keys.get((site, device))
        if key is None:
            raise KeyError(f"no signing key for device {device!r} at site {site!r}")
        if relay not in (0, 1) or isinstance(relay, bool):
            raise ValueError(f"relay must be 0 or 1, got {relay!r}")
        requested = relay
        reason = self._clamp((site, device), relay, now)
        if reason is not None:
            relay = self._relay[(site, device)]
            self.stats.clamped[reason] += 1
        if not valid_until > now:
            raise ValueError(
                f"command for {site}/{device} would be born expired: valid until {utc_time(valid_until)}, "
                f"now {utc_time(now)}"
            )
        topic = wire.device_topic(site, device, wire.CMD)
        seq = self._seq.get((site, device), 0) + 1
        if seq_floor is not None:
            seq = max(seq, seq_floor)
        expires = valid_until + self._grace_s
        # Unique per device because seq is; issued and relay make ids from a restarted dispatcher
        # (same seq) differ as well.
        text = f"{site}|{device}|{seq}|{now!r}|{expires!r}|{relay}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        cmd_id = f"{seq}-{digest}"
        cmd = wire.make_command(key, site, device, cmd_id, seq, now, expires, relay)
        payload = wire.encode(wire.CMD, cmd)
        self._seq[(site, device)] = seq
        out = OutgoingCommand(site, device, topic, payload, cmd, now,
                              requested if reason else None, reason)
        self._pending[(site, device, cmd_id)] = out
        self._attempts[(site, device, cmd_id)] = (1, now)
        if self._relay.get((site, device)) != relay:
            self._switches_sent.add((site, device, cmd_id))
        self._switched((site, device), relay, now)
        self.stats.sent += 1
        self.stats.pending = len(self._pending)
        return out

    def on_ack(self, site: str, device: str, ack: dict[str, Any]) -> OutgoingCommand | None:
        """Settle the command this ack answers; returns it, or None for an unmatched/duplicate/invalid ack."""
        try:
            wire.validate(wire.ACK, ack)
        except wire.ContractError:
            self.stats.invalid_acks += 1
            return None
        if ack["seq"] >= 0:
            self.unanswered.pop((site, device), None)  # it is alive and answering
            self.silent.discard((site, device))
            if ack["ok"]:  # even for a command an earlier process sent: the device holds this seq
                self.learn_seq(site, device, ack["seq"])
        ref = (site, device, ack["id"])
        out = self._pending.get(ref)
        if out is None:
            if ref in self._done:
                self.stats.duplicate_acks += 1
            else:
                self.stats.unmatched_acks += 1
            return None
        if ack["seq"] != out.cmd["seq"]:
            self.stats.unmatched_acks += 1
            return None
        sends, _ = self._attempts.pop(ref, (1, out.sent_at))
        switched = {ref} & self._switches_sent
        self._settle(ref)
        # A re-sent command answered "replayed": the first copy arrived and was applied, only its
        # ack was lost. That is a delivery, not a refusal.
        delivered = ack["ok"] or (sends > 1 and ack["reason"] == wire.REFUSE_REPLAYED)
        if delivered:
            self.stats.acked_ok += 1
        else:
            self.stats.refused[ack["reason"]] += 1
        # The ack reports the relay as it is: believe it over what we last asked for.
        if ack["relay"] in (0, 1):
            self._switched((site, device), ack["relay"], float(ack["ts"]))
            if delivered and sends > 1 and ref in switched and ack["relay"] == out.cmd["relay"]:
                # a re-sent switch happened when a later copy landed, not at the first send:
                # time the minimum on/off from the device's ack, as the firmware does
                dev = (site, device)
                self._changed_at[dev] = max(self._changed_at.get(dev, -math.inf), float(ack["ts"]))
        return out

    def _settle(self, ref: tuple[str, str, str]) -> None:
        del self._pending[ref]
        self._switches_sent.discard(ref)
        self._attempts.pop(ref, None)
        self._done[ref] = None
        if len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        self.stats.pending = len(self._pending)

    def retries(self, now: float, timeout_s: float) -> list[OutgoingCommand]:
        """Commands to re-send now: unacknowledged `timeout_s` after their last send, not expired,
        and with attempts left. Publish each one's payload again: same id, same signature.

        A command out of attempts, or expired, is given up and its site flagged (`flagged`)."""
        out = []
        for ref, cmd in sorted(self._pending.items(), key=lambda kv: kv[1].sent_at):
            sends, last = self._attempts.get(ref, (1, cmd.sent_at))
            if now - last < timeout_s:
                continue
            if now >= cmd.cmd["expires"] or sends >= self._max_attempts:
                why = "expired" if now >= cmd.cmd["expires"] else f"no ack after {sends} sends"
                self.flagged[cmd.site] = f"{cmd.device}: command {cmd.cmd['id']} {why}"
                self.stats.given_up += 1
                dev = (cmd.site, cmd.device)
                self.unanswered[dev] += 1
                if self.unanswered[dev] >= self.silent_after and dev not in self.silent:
                    self.silent.add(dev)
                    self.stats.silent_relays += 1
                if cmd.cmd["seq"] == self._seq.get((cmd.site, cmd.device)):
                    # the device may or may not have it: its state is unknown until it acks again
                    self._relay.pop((cmd.site, cmd.device), None)
                self._settle(ref)
                continue
            self._attempts[ref] = (sends + 1, now)
            self.stats.retried += 1
            out.append(cmd)
        return out

    def clear_flag(self, site: str) -> None:
        self.flagged.pop(site, None)

    def unacked(self, now: float, timeout_s: float) -> list[OutgoingCommand]:
        """Commands sent at least `timeout_s` before `now` and still without an ack, oldest first."""
        overdue = [c for c in self._pending.values() if now - c.sent_at >= timeout_s]
        return sorted(overdue, key=lambda c: c.sent_at)

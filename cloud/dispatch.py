"""Turn schedule decisions into signed, expiring relay commands and account for their acks.

Pure bookkeeping: the caller publishes `OutgoingCommand.payload` on `.topic` and feeds acks back
through `on_ack`. Sequence numbers rise per device, because the firmware refuses a command whose
seq is not above the last one it accepted (replay and reordering protection).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tendril_wire as wire

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


@dataclass
class DispatchStats:
    sent: int = 0
    acked_ok: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by the device's refusal reason
    pending: int = 0
    duplicate_acks: int = 0  # ack for a command already settled (QoS 1 redelivery)
    unmatched_acks: int = 0  # ack naming no command we sent to that device (or a wrong seq)
    invalid_acks: int = 0  # ack that breaks the wire contract


class Dispatcher:
    def __init__(
        self,
        keys: Mapping[DeviceKey, bytes],
        grace_s: float = 30.0,
        last_seq: Mapping[DeviceKey, int] | None = None,
    ) -> None:
        """`keys`: per-device HMAC keys. `grace_s`: how long past its validity a command may still
        be applied, covering clock skew between cloud and device. `last_seq`: the highest seq each
        device has already seen, so a restarted dispatcher continues above it."""
        if not (math.isfinite(grace_s) and grace_s >= 0):
            raise ValueError(f"grace_s must be finite and >= 0, got {grace_s}")
        self._keys = dict(keys)
        self._grace_s = grace_s
        self._seq: dict[DeviceKey, int] = dict(last_seq or {})
        self._pending: dict[tuple[str, str, str], OutgoingCommand] = {}
        self._done: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.stats = DispatchStats()

    def last_seq(self, site: str, device: str) -> int:
        return self._seq.get((site, device), 0)

    def command(self, site: str, device: str, relay: int, valid_until: float, now: float) -> OutgoingCommand:
        """Sign a command setting `relay` (0/1), valid until `valid_until` (+ grace)."""
        key = self._keys.get((site, device))
        if key is None:
            raise KeyError(f"no signing key for device {device!r} at site {site!r}")
        if relay not in (0, 1) or isinstance(relay, bool):
            raise ValueError(f"relay must be 0 or 1, got {relay!r}")
        if not valid_until > now:
            raise ValueError(
                f"command for {site}/{device} would be born expired: valid_until {valid_until} <= now {now}"
            )
        topic = wire.device_topic(site, device, wire.CMD)
        seq = self._seq.get((site, device), 0) + 1
        expires = valid_until + self._grace_s
        # Unique per device because seq is; issued and relay make ids from a restarted dispatcher
        # (same seq) differ as well.
        text = f"{site}|{device}|{seq}|{now!r}|{expires!r}|{relay}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        cmd_id = f"{seq}-{digest}"
        cmd = wire.make_command(key, site, device, cmd_id, seq, now, expires, relay)
        payload = wire.encode(wire.CMD, cmd)
        self._seq[(site, device)] = seq
        out = OutgoingCommand(site, device, topic, payload, cmd, now)
        self._pending[(site, device, cmd_id)] = out
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
        del self._pending[ref]
        self._done[ref] = None
        if len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        if ack["ok"]:
            self.stats.acked_ok += 1
        else:
            self.stats.refused[ack["reason"]] += 1
        self.stats.pending = len(self._pending)
        return out

    def unacked(self, now: float, timeout_s: float) -> list[OutgoingCommand]:
        """Commands sent at least `timeout_s` before `now` and still without an ack, oldest first."""
        overdue = [c for c in self._pending.values() if now - c.sent_at >= timeout_s]
        return sorted(overdue, key=lambda c: c.sent_at)

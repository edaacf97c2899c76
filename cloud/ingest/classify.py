"""What one MQTT message is: a line to store (with its dedup key), or a rejection with a reason.

Pure decisions, no I/O: time comes in as an argument. `classify` is the reference path (the
contract's own decode, then line_protocol); `Classifier` adds the fast path (cloud/fast_decode)
and a cache of topic decisions, and falls back to `classify` whenever the fast path is unsure,
so every rejection carries the contract's reason.
"""

from __future__ import annotations

import json
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.ingest import fast_decode, validation
from tendril_transactive.cloud.ingest.known_devices import UNKNOWN_DEVICE, KnownDevices
from tendril_transactive.cloud.store.line_protocol import STORED_KINDS, contract_error, message_to_line, seconds_to_ns

INGESTED_KINDS = STORED_KINDS
DEAD_LETTER_PAYLOAD_BYTES = 512
INTERNAL_ERROR = "internal_error"
TOPIC_CACHE_MAX = 100_000
_SEQUENCED = frozenset({wire.TELEMETRY, wire.STATE, wire.ACK})  # kinds that carry seq and ts


class Accepted:
    """A storable message: its line, and what dedup and lag metrics need."""

    __slots__ = ("_msg", "_raw", "device", "kind", "lag_ts", "line", "seq", "site", "stamp_ns")

    def __init__(
        self,
        site: str,
        device: str,
        kind: str,
        msg: dict[str, Any] | None,
        line: str,
        raw: Any = None,
        stamp_ns: int | None = None,
    ) -> None:
        self.site, self.device, self.kind, self.line = site, device, kind, line
        self._msg, self._raw = msg, raw
        self.seq: int | None = None
        self.stamp_ns = 0
        self.lag_ts: float | None = None  # device time, unless the device said its clock was unsynced
        if kind not in _SEQUENCED:
            return
        if msg is None:
            ts = raw.ts
            self.seq = raw.seq
            unsynced = kind == wire.TELEMETRY and raw.unsynced is True
        else:
            ts = msg["ts"]
            self.seq = msg["seq"]
            unsynced = msg.get("unsynced") is True
        self.stamp_ns = stamp_ns if stamp_ns is not None else seconds_to_ns(ts)
        if not unsynced:
            self.lag_ts = float(ts)

    @property
    def msg(self) -> dict[str, Any]:
        """The validated message as `tendril_wire.decode` returns it."""
        if self._msg is None:
            self._msg = fast_decode.as_dict(self.kind, self._raw)
        return self._msg

    def __repr__(self) -> str:
        return f"Accepted({self.site!r}, {self.device!r}, {self.kind!r}, {self.line!r})"


class Rejected:
    __slots__ = ("detail", "payload", "reason", "topic")

    def __init__(self, topic: str, reason: str, detail: str, payload: bytes) -> None:
        self.topic, self.reason, self.detail, self.payload = topic, reason, detail, payload

    def dead_letter(self, received_at: float) -> bytes:
        """What goes to the dead-letter topic: enough to diagnose, bounded in size."""
        return json.dumps(
            {
                "reason": self.reason,
                "detail": self.detail,
                "topic": self.topic,
                "payload": self.payload[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
                "size": len(self.payload),
                "received": received_at,
            }
        ).encode()

    def __repr__(self) -> str:
        return f"Rejected({self.topic!r}, {self.reason!r}, {self.detail!r})"


def classify(topic: str, payload: bytes, received_at: float) -> Accepted | Rejected:
    """The reference decision: the contract's decode and line_protocol, nothing cached."""
    try:
        site, device, kind = wire.parse_topic(topic)
        if kind not in INGESTED_KINDS:
            raise contract_error("unexpected_kind", kind)
        msg = wire.decode(kind, payload)
        line = message_to_line(site, device, kind, msg, received_at)
    except wire.ContractError as exc:
        return Rejected(topic, exc.reason, exc.detail, payload)
    except RecursionError:
        # json.loads recurses per nesting level; 4 KiB of '[' is deeper than Python allows.
        return Rejected(topic, "bad_json", "nested too deeply", payload)
    return Accepted(site, device, kind, msg, line)


TopicDecision = tuple[str, str, str] | tuple[str, str]  # (site, device, kind) or (reason, detail)


class Classifier:
    """`classify` plus the fast path, a topic cache and the device registry check."""

    def __init__(self, devices: KnownDevices | None = None, limits: validation.Limits | None = None) -> None:
        self.devices = devices
        self.limits = limits if limits is not None else validation.Limits()
        self._topics: dict[str, TopicDecision] = {}
        self._version = devices.version if devices is not None else 0

    def _topic(self, topic: str) -> TopicDecision:
        if self.devices is not None and self.devices.version != self._version:
            self._topics.clear()
            self._version = self.devices.version
        decision = self._topics.get(topic)
        if decision is not None:
            return decision
        try:
            site, device, kind = wire.parse_topic(topic)
            if kind not in INGESTED_KINDS:
                raise contract_error("unexpected_kind", kind)
            if self.devices is not None and (site, device) not in self.devices:
                raise contract_error(UNKNOWN_DEVICE, f"{site}/{device}")
            decision = (site, device, kind)
        except wire.ContractError as exc:
            decision = (exc.reason, exc.detail)
        if len(self._topics) >= TOPIC_CACHE_MAX:
            self._topics.clear()  # a flood of distinct junk topics must not grow memory
        self._topics[topic] = decision
        return decision

    def __call__(self, topic: str, payload: bytes, received_at: float) -> Accepted | Rejected:
        decision = self._topic(topic)
        if len(decision) == 2:
            return Rejected(topic, decision[0], decision[1], payload)
        site, device, kind = decision
        raw = fast_decode.decode(kind, payload)
        result: Accepted | Rejected | None = None
        if raw is not None:
            got = fast_decode.line(site, device, kind, raw, received_at)
            if got is not None:
                result = Accepted(site, device, kind, None, got[0], raw, got[1])
        if result is None:
            result = classify(topic, payload, received_at)  # the contract decides, and names the reason
        if isinstance(result, Rejected):
            return result
        return self._plausible(result, topic, payload, received_at)

    def _plausible(self, accepted: Accepted, topic: str, payload: bytes, now: float) -> Accepted | Rejected:
        raw, msg = accepted._raw, accepted._msg
        if msg is not None:
            get: Any = msg.get
            present = len(msg)
        else:
            fields = fast_decode.as_dict(accepted.kind, raw)
            get, present = fields.get, len(fields)
        profile = self.devices.profile(accepted.site, accepted.device) if self.devices is not None else (None, None)
        refused = validation.check(accepted.kind, get, present, payload, profile, self.limits, now)
        if refused is None:
            return accepted
        return Rejected(topic, refused[0], refused[1], payload)

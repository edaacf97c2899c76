"""One site's market book on the agent side: the tenders it was offered, the transactions it
sent, what the market confirmed, and from those its position per interval.

    position(interval) = subscription(interval) + forward buys - forward sells

Forward trades count from the moment they are sent (pending) until refused: the planner must
not buy the same energy twice while a confirm is on its way. A transactionId is a digest of
(site, tenderId, agent), so a retry, a restart or another worker that takes the site over sends
the SAME id and the market records it once; because of that the book sends at most one
transaction per tender. Pure: `now` is always passed in.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tendril_wire as wire

from tendril_transactive.cloud.agent.config import SiteConfig
from tendril_transactive.cloud.optimizer.schedule import MIN_TRADE_KWH

RT_MARKET = "RTM"
DA_MARKET = "DAM"
# Confirmed trades are kept this long after their interval ends (positions look back no further).
KEEP_S = 2 * 86400.0


class Rejected(ValueError):
    """A tender or confirm the agent will not act on; `reason` names the dead-letter topic."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason
        self.detail = detail


def transaction_id(site: str, tender_id: str, agent: str) -> str:
    """The same (site, tender, agent) always gives the same id (<= 64 chars, the contract's cap)."""
    return "tx-" + hashlib.sha256(f"{site}|{tender_id}|{agent}".encode()).hexdigest()[:32]


@dataclass
class PendingTx:
    payload: dict[str, Any]  # the TRANSACTION message, re-sent byte for byte
    side: str
    interval_start: float
    duration_s: int
    expires: float  # the tender's expirationTime: no point re-sending after it
    sent_at: float
    sends: int = 1

    @property
    def signed_kwh(self) -> float:
        q = float(self.payload["quantity"])
        return q if self.side == wire.SIDE_BUY else -q


@dataclass(frozen=True)
class Trade:
    transaction_id: str
    side: str
    interval_start: float
    duration_s: int
    quantity_kwh: float
    price: float

    @property
    def signed_kwh(self) -> float:
        return self.quantity_kwh if self.side == wire.SIDE_BUY else -self.quantity_kwh


@dataclass
class BookStats:
    tenders: int = 0
    transactions_sent: int = 0
    resent: int = 0
    confirmed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    duplicate_confirms: int = 0
    expired_unconfirmed: int = 0


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


class Book:
    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.tenders: dict[str, dict[str, Any]] = {}  # tenderId -> tender
        self._slots: dict[tuple[str, float], dict[str, str]] = {}  # (market, start) -> side -> tenderId
        self.pending: dict[str, PendingTx] = {}
        self.confirmed: dict[str, Trade] = {}
        self.by_tender: dict[str, str] = {}  # tenderId -> transactionId sent on it
        self.stats = BookStats()

    # ------------------------------------------------------------------ tenders

    def add_tender(self, msg: dict[str, Any], now: float) -> tuple[str, float] | None:
        """Record a validated TENDER; returns (market, intervalStart) of its slot, or None if it
        is already expired. Rejected when it is offered to another site or is no market we know."""
        if msg["counterPartyId"] != self.cfg.site:
            raise Rejected("wrong_site", f"tender {msg['tenderId']} is for {msg['counterPartyId']!r}")
        if msg["marketId"] not in (RT_MARKET, DA_MARKET):
            raise Rejected("unknown_market", str(msg["marketId"])[:20])
        if "quantity" in msg and not (msg["quantity"] >= 0):
            raise Rejected("bad_quantity", f"tender {msg['tenderId']} quantity {msg['quantity']}")
        if msg["expirationTime"] <= now:
            return None
        self.stats.tenders += 1
        self.tenders[msg["tenderId"]] = msg
        key = (msg["marketId"], float(msg["intervalStart"]))
        self._slots.setdefault(key, {})[msg["side"]] = msg["tenderId"]
        return key

    def pair(self, market: str, start: float) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The (BUY, SELL) tenders of one interval, when both are known."""
        ids = self._slots.get((market, start), {})
        if wire.SIDE_BUY in ids and wire.SIDE_SELL in ids:
            return self.tenders[ids[wire.SIDE_BUY]], self.tenders[ids[wire.SIDE_SELL]]
        return None

    def da_slots(self) -> list[float]:
        return sorted(start for (market, start) in self._slots if market == DA_MARKET)

    def da_prices(self, t: float) -> tuple[float, float] | None:
        """(buy, sell) of the day-ahead tenders covering `t`, if known."""
        hour = t - t % 3600
        pair = self.pair(DA_MARKET, hour)
        return (float(pair[0]["price"]), float(pair[1]["price"])) if pair else None

    # ------------------------------------------------------------------ transactions

    def transact(self, tender: dict[str, Any], kwh: float, now: float) -> dict[str, Any] | None:
        """A TRANSACTION taking `kwh` of `tender` (capped at its quantity), or None when it is
        too small, expired, or this tender already has one (ids are per tender)."""
        if tender["tenderId"] in self.by_tender or now >= tender["expirationTime"]:
            return None
        if "quantity" in tender:
            kwh = min(kwh, float(tender["quantity"]))
        kwh = round(kwh, 6)
        if not (math.isfinite(kwh) and kwh >= MIN_TRADE_KWH):
            return None
        tx_id = transaction_id(self.cfg.site, tender["tenderId"], self.cfg.agent)
        payload = {"v": wire.VERSION, "transactionId": tx_id, "tenderId": tender["tenderId"],
                   "quantity": kwh, "partyId": self.cfg.agent, "ts": now}
        wire.validate(wire.TRANSACTION, payload)
        self.pending[tx_id] = PendingTx(payload, tender["side"], float(tender["intervalStart"]),
                                        int(tender["durationS"]), float(tender["expirationTime"]), now)
        self.by_tender[tender["tenderId"]] = tx_id
        self.stats.transactions_sent += 1
        return payload

    def journal(self, tx_ids: list[str]) -> list[dict[str, Any]]:
        """The pending transactions `tx_ids` as journal entries (StateStore.append_sent)."""
        return [dict(vars(self.pending[t])) for t in tx_ids if t in self.pending]

    def adopt_sent(self, entries: list[dict[str, Any]]) -> int:
        """Take journalled transactions the state file does not hold yet as pending (their confirm
        may be on its way, or a resend fetches it); returns how many were new."""
        n = 0
        for e in entries:
            try:
                p = PendingTx(**e)
                tender_id, tx_id = str(p.payload["tenderId"]), str(p.payload["transactionId"])
            except (TypeError, KeyError):
                continue
            if tender_id in self.by_tender or tx_id in self.confirmed:
                continue
            self.by_tender[tender_id] = tx_id
            self.pending[tx_id] = p
            n += 1
        return n

    def resend(self, now: float, timeout_s: float) -> list[dict[str, Any]]:
        """Unconfirmed transactions to send again (same payload) until their tender expires."""
        out = []
        for tx_id, p in list(self.pending.items()):
            if now >= p.expires:
                # the market answers even an expired one (tender_expired); a confirm may still
                # come, but nothing more can be done about this one: stop counting it as position
                del self.pending[tx_id]
                self.stats.expired_unconfirmed += 1
                continue
            if now - p.sent_at >= timeout_s:
                p.sent_at = now
                p.sends += 1
                self.stats.resent += 1
                out.append(p.payload)
        return out

    def on_confirm(self, msg: dict[str, Any]) -> str:
        """Apply a validated CONFIRM: 'accepted', 'refused' or 'duplicate'; Rejected if it answers
        nothing this site sent, or its terms do not match the transaction."""
        tx_id = msg["transactionId"]
        if tx_id in self.confirmed:
            self.stats.duplicate_confirms += 1
            return "duplicate"
        p = self.pending.get(tx_id)
        if p is None:
            if tx_id in self.by_tender.values():  # refused or expired earlier: a redelivery
                self.stats.duplicate_confirms += 1
                return "duplicate"
            raise Rejected("unknown_transaction", f"confirm for {tx_id[:64]} which this site did not send")
        if msg["tenderId"] != p.payload["tenderId"]:
            raise Rejected("wrong_tender", f"confirm of {tx_id} names tender {msg['tenderId']}")
        del self.pending[tx_id]
        if not msg["ok"]:
            self.stats.refused[msg["reason"]] += 1
            return "refused"
        self.confirmed[tx_id] = Trade(tx_id, msg["side"], float(msg["intervalStart"]), int(msg["durationS"]),
                                      float(msg["quantity"]), float(msg["price"]))
        self.stats.confirmed += 1
        return "accepted"

    # ------------------------------------------------------------------ position

    def position_kwh(self, start: float, duration_s: float) -> float:
        """Subscription + forward buys - sells (confirmed and pending) in [start, start + duration)."""
        end = start + duration_s
        total = self.cfg.subscribed_kwh(start, duration_s)
        trades: list[tuple[float, int, float]] = [(t.interval_start, t.duration_s, t.signed_kwh)
                                                  for t in self.confirmed.values()]
        trades += [(p.interval_start, p.duration_s, p.signed_kwh) for p in self.pending.values()]
        for t0, dur, kwh in trades:
            share = _overlap(start, end, t0, t0 + dur) / dur
            if share > 0:
                total += kwh * share
        return total

    def position_series(self, start: float, steps: int, step_s: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        """`position_kwh` of `steps` consecutive steps from `start`, in one pass over the trades
        (a 288-step forecast against a day of 5-minute trades is ~100k overlaps otherwise).
        Same sums in the same order as `position_kwh`, so the same numbers."""
        out = self.cfg.subscribed_series(start, steps, step_s)
        edges = start + np.arange(steps + 1, dtype=float) * step_s
        trades: list[tuple[float, int, float]] = [(t.interval_start, t.duration_s, t.signed_kwh)
                                                  for t in self.confirmed.values()]
        trades += [(p.interval_start, p.duration_s, p.signed_kwh) for p in self.pending.values()]
        for t0, dur, kwh in trades:
            k0 = max(0, math.floor((t0 - start) / step_s))
            k1 = min(steps, math.ceil((t0 + dur - start) / step_s))
            if k1 <= k0:
                continue
            lo = np.maximum(edges[k0:k1], t0)
            hi = np.minimum(edges[k0 + 1:k1 + 1], t0 + dur)
            share = np.maximum(0.0, hi - lo) / dur
            out[k0:k1] += np.where(share > 0, kwh * share, 0.0)
        return out

    def prune(self, now: float) -> None:
        """Forget expired tenders and trades long over (the book stays small)."""
        for tid in [tid for tid, t in self.tenders.items() if t["expirationTime"] < now - KEEP_S]:
            t = self.tenders.pop(tid)
            self._slots.pop((t["marketId"], float(t["intervalStart"])), None)
            self.by_tender.pop(tid, None)
        for tx_id in [k for k, t in self.confirmed.items() if t.interval_start + t.duration_s < now - KEEP_S]:
            del self.confirmed[tx_id]

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return {"tenders": list(self.tenders.values()),
                # vars(), not asdict(): asdict deep-copies every payload, and this runs on every save
                # (bench/loop.py: ~40 % of the state write); the result is dumped at once, not kept
                "pending": {k: dict(vars(p)) for k, p in self.pending.items()},
                "confirmed": [dict(vars(t)) for t in self.confirmed.values()],
                "by_tender": self.by_tender}

    def load_json(self, data: dict[str, Any], now: float) -> None:
        for t in data.get("tenders", []):
            try:
                self.add_tender(wire.validate(wire.TENDER, dict(t)), now - KEEP_S)
            except (wire.ContractError, Rejected):
                continue
        self.pending = {k: PendingTx(**p) for k, p in data.get("pending", {}).items()}
        self.confirmed = {t["transaction_id"]: Trade(**t) for t in data.get("confirmed", [])}
        self.by_tender = {str(k): str(v) for k, v in data.get("by_tender", {}).items()}

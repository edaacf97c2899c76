"""The market's decisions, apart from all I/O: what to offer, how to answer a transaction, what
to settle. `MarketService` (service.py) feeds it `now`, prices, payloads and meter readings,
writes the records it returns to the ledger, publishes the messages, and only then calls the
matching `apply_*` — so the in-memory state never runs ahead of the ledger, and a restart that
replays the ledger (`rebuild`) lands in exactly the state the crashed process had made durable.

Transactions (answer every one, exactly one confirm per message):
  * malformed payload -> refusal `malformed` (transactionId / tenderId salvaged when readable)
  * a (site, transactionId) seen before with the same terms (tenderId, quantity) -> the same
    confirm again, nothing recorded; with other terms -> refusal `id_conflict`
  * else the tender book decides: unknown tender, wrong party (the topic's site is not the
    tender's counterPartyId), bad quantity, expired, over quantity -> refusal; or accepted
Only a refusal enters the ledger for a refused transaction; an accepted one enters as the
transaction (kind `transaction`, transaction_id = the agent's transactionId).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tendril_wire as wire

from tendril_transactive.cloud.devices.registry import SiteRecord
from tendril_transactive.cloud.market import settle as st
from tendril_transactive.cloud.market.pricing import DistributionPricing
from tendril_transactive.cloud.market.schedule import DAM, RT_STEP_S, RTM, Batch, MarketConfig, batch_tenders
from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.cloud.market.transactions import (
    KIND_REFUSAL,
    KIND_TENDER,
    KIND_TRANSACTION,
    REFUSE_CONFLICT,
    REFUSE_MALFORMED,
    TenderBook,
    Transaction,
    TransactionRefused,
)
from tendril_transactive.cloud.sources.prices import PriceInterval

LedgerItem = tuple[str, str, dict[str, Any]]  # (kind, site, body) for Ledger.append_many
MAX_DETAIL = 200

ACCEPTED = "accepted"
REFUSED = "refused"
REPLAYED = "replayed"


@dataclass
class Decision:
    """The answer to one transaction message: its confirm and what to record first."""

    site: str
    outcome: str  # accepted | refused | replayed
    confirm: dict[str, Any]
    records: list[LedgerItem] = field(default_factory=list)
    tx: Transaction | None = None
    key: tuple[str, str] | None = None  # (site, transactionId) to remember, None: do not
    terms: str = ""

    @property
    def topic(self) -> str:
        return wire.site_topic(self.site, wire.CONFIRM)


def confirm_ok(tx: Transaction) -> dict[str, Any]:
    return wire.validate(wire.CONFIRM, {
        "v": wire.VERSION, "transactionId": tx.transaction_id, "tenderId": tx.tender_id, "ok": True,
        "reason": wire.ACCEPTED, "side": tx.side, "intervalStart": tx.interval_start,
        "durationS": tx.duration_s, "quantity": tx.quantity_kwh, "price": tx.price_usd_per_kwh,
        "marketId": tx.market_id, "acceptedAt": tx.accepted_at})


def confirm_refused(transaction_id: str, tender_id: str, reason: str, detail: str) -> dict[str, Any]:
    return wire.validate(wire.CONFIRM, {
        "v": wire.VERSION, "transactionId": transaction_id, "tenderId": tender_id, "ok": False,
        "reason": reason, "detail": detail[:MAX_DETAIL]})


def terms_of(tender_id: str, quantity: object) -> str:
    """What must match for a repeated transactionId to be the same transaction (ts and partyId
    may differ on a retry, e.g. from another agent worker after the site moved)."""
    return json.dumps([tender_id, float(quantity) if isinstance(quantity, int | float) else repr(quantity)])


def _salvage(payload: bytes) -> tuple[str, str]:
    """transactionId and tenderId of a malformed transaction, when they can be read at all."""
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeError, RecursionError):
        return "", ""
    if not isinstance(msg, dict):
        return "", ""

    def ident(name: str) -> str:
        value = msg.get(name)
        return value if isinstance(value, str) and 0 < len(value) <= wire.MAX_TX_ID_LEN else ""

    return ident("transactionId"), ident("tenderId")


def batch_key(site: str, tender: Mapping[str, Any]) -> tuple[str, str, int]:
    """The batch a tender belongs to: (site, market, local day start | interval start)."""
    start = int(tender["intervalStart"])
    if tender["marketId"] == DAM:
        day = dt.datetime.fromtimestamp(start, LOCAL_TZ).date()
        start = int(dt.datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ).timestamp())
    return site, tender["marketId"], start


@dataclass
class RebuildStats:
    tenders: int = 0
    transactions: int = 0
    refusals: int = 0
    settlements: int = 0


class MarketCore:
    def __init__(self, cfg: MarketConfig, pricing: DistributionPricing) -> None:
        self.cfg = cfg
        self.pricing = pricing
        self.book = TenderBook()
        self.published: set[tuple[str, str, int]] = set()
        self.confirms: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self.transactions: dict[str, list[Transaction]] = {}
        self.rt_tenders: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}  # (site, start) -> side -> tender
        self.pending_settle: set[tuple[str, int]] = set()
        self.settled: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------------ restart

    def rebuild(self, records: Iterable[tuple[str, str, dict[str, Any]]]) -> RebuildStats:
        """Replay (kind, site, body) ledger records in ledger order."""
        stats = RebuildStats()
        for kind, site, body in records:
            if kind == KIND_TENDER:
                self._offer(body)
                stats.tenders += 1
            elif kind == KIND_TRANSACTION:
                tx = Transaction.from_record(body)
                self._take(tx)
                self.confirms.setdefault((tx.site, tx.transaction_id),
                                         (terms_of(tx.tender_id, tx.quantity_kwh), confirm_ok(tx)))
                stats.transactions += 1
            elif kind == KIND_REFUSAL and "terms" in body:  # the service's refusals (they carry terms)
                if body["transactionId"]:
                    confirm = confirm_refused(body["transactionId"], body["tenderId"], body["reason"],
                                              body["detail"])
                    self.confirms.setdefault((site, body["transactionId"]), (body["terms"], confirm))
                stats.refusals += 1
            elif kind == st.KIND_SETTLEMENT and "intervalStart" in body:  # not `tendril bill --record`'s
                key = (site, int(body["intervalStart"]))
                self.settled.add(key)
                self.pending_settle.discard(key)
                stats.settlements += 1
        return stats

    # ------------------------------------------------------------------------ tenders

    def due(self, batches: Sequence[Batch], sites: Sequence[SiteRecord]) -> list[tuple[Batch, list[SiteRecord]]]:
        """Of the batches due now, those some site has not had yet, with those sites."""
        out = []
        for batch in batches:
            waiting = [s for s in sites if (s.site, batch.market, batch.start) not in self.published]
            if waiting:
                out.append((batch, waiting))
        return out

    def plan_offers(self, batch: Batch, site: SiteRecord, prices: Sequence[PriceInterval],
                    now: float) -> tuple[list[dict[str, Any]], list[LedgerItem]]:
        """(every tender of the batch still open, ledger items for those not yet on the book)."""
        tenders = batch_tenders(batch, site, prices, self.pricing.feeder_load_ratio, self.cfg, now)
        fresh = [t for t in tenders if self.book.tender(t["tenderId"]) is None]
        return tenders, [(KIND_TENDER, site.site, t) for t in fresh]

    def apply_offers(self, batch: Batch, site: str, tenders: Sequence[dict[str, Any]]) -> None:
        for tender in tenders:
            self._offer(tender)
        self.published.add((site, batch.market, batch.start))

    def live_tenders(self, now: float) -> list[dict[str, Any]]:
        """Tenders that can still be taken: republished after a (re)connect, never re-recorded."""
        return [t for t in self.book.tenders() if t["expirationTime"] > now]

    def _offer(self, tender: dict[str, Any]) -> None:
        self.book.offer(tender)  # TenderConflict if an id came back with other terms: never reuse one
        site = tender["counterPartyId"]
        self.published.add(batch_key(site, tender))
        if tender["marketId"] == RTM:
            key = (site, int(tender["intervalStart"]))
            self.rt_tenders.setdefault(key, {})[tender["side"]] = tender
            if key not in self.settled:
                self.pending_settle.add(key)

    # ------------------------------------------------------------------------ transactions

    def decide(self, site: str, payload: bytes, now: float) -> Decision:
        """The answer to a transaction published on tendril/v1/{site}/transaction."""
        try:
            msg = wire.decode(wire.TRANSACTION, payload)
        except wire.ContractError as exc:
            txid, tid = _salvage(payload)
            terms = "raw:" + hashlib.sha256(payload).hexdigest()
            known = self._known(site, txid, terms, tid)
            if known is not None:
                return known
            return self._refuse(site, txid, tid, terms, REFUSE_MALFORMED, str(exc), None, "")
        txid, tid, qty, party = msg["transactionId"], msg["tenderId"], msg["quantity"], msg["partyId"]
        terms = terms_of(tid, qty)
        known = self._known(site, txid, terms, tid)
        if known is not None:
            return known
        try:
            tx = self.book.propose(tid, site, qty, now, txid, party)
        except TransactionRefused as exc:
            return self._refuse(site, txid, tid, terms, exc.reason, exc.detail, qty, party)
        return Decision(site, ACCEPTED, confirm_ok(tx), [(KIND_TRANSACTION, site, tx.to_record())],
                        tx=tx, key=(site, txid), terms=terms)

    def _known(self, site: str, txid: str, terms: str, tid: str) -> Decision | None:
        if not txid or (site, txid) not in self.confirms:
            return None
        known_terms, confirm = self.confirms[(site, txid)]
        if known_terms == terms:
            return Decision(site, REPLAYED, confirm)
        detail = f"transactionId {txid} was already used for other terms ({known_terms}, now {terms})"
        decision = self._refuse(site, txid, tid, terms, REFUSE_CONFLICT, detail, None, "")
        decision.key = None  # the first use of the id stays what it is
        return decision

    def _refuse(self, site: str, txid: str, tid: str, terms: str, reason: str, detail: str,
                quantity: object, party: str) -> Decision:
        confirm = confirm_refused(txid, tid, reason, detail)
        body = {"transactionId": txid, "tenderId": tid, "quantityKwh": repr(quantity), "partyId": party,
                "reason": reason, "detail": confirm["detail"], "terms": terms}
        return Decision(site, REFUSED, confirm, [(KIND_REFUSAL, site, body)],
                        key=(site, txid) if txid else None, terms=terms)

    def apply(self, decision: Decision) -> None:
        """Make a decision's effects real once its records are in the ledger."""
        if decision.tx is not None:
            self._take(decision.tx)
        if decision.key is not None:
            self.confirms[decision.key] = (decision.terms, decision.confirm)

    def _take(self, tx: Transaction) -> None:
        self.book.apply(tx)
        self.transactions.setdefault(tx.site, []).append(tx)

    # ------------------------------------------------------------------------ settlement

    def due_settlements(self, now: float) -> tuple[dict[str, list[int]], list[tuple[str, int]]]:
        """({site: interval starts ready to settle}, intervals given up as never metered)."""
        ready: dict[str, list[int]] = {}
        given_up: list[tuple[str, int]] = []
        for site, start in sorted(self.pending_settle):
            end = start + RT_STEP_S
            if now < end + self.cfg.settle_delay_s:
                continue
            if now - end > self.cfg.settle_give_up_s:
                given_up.append((site, start))
            else:
                ready.setdefault(site, []).append(start)
        for key in given_up:
            self.pending_settle.discard(key)
        return ready, given_up

    def plan_settlement(self, site: SiteRecord, start: int,
                        readings: Mapping[str, st.Readings]) -> LedgerItem | None:
        """The settlement record of one interval, or None while its meter data is incomplete."""
        metered = st.metered_kwh(readings, start, start + RT_STEP_S)
        tenders = self.rt_tenders.get((site.site, start), {})
        if metered is None or set(tenders) != {wire.SIDE_BUY, wire.SIDE_SELL}:
            return None
        body = st.settlement_body(site, start, metered, self.transactions.get(site.site, []), tenders)
        return st.KIND_SETTLEMENT, site.site, body

    def apply_settled(self, site: str, start: int) -> None:
        self.settled.add((site, start))
        self.pending_settle.discard((site, start))

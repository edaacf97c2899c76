"""Transactions and positions: accepting tenders, refusing what cannot be accepted.

A tender is an offer to the customer for one interval: on a BUY tender the customer may buy
up to `quantity` kWh at `price`, on a SELL tender sell. Accepting creates a forward
transaction, a block commitment: the energy is bought (sold) whether used or not, so it moves
the customer's position = subscription + forward buys - forward sells for that interval.

A transaction is refused, with a stable reason code, when the tender is unknown, offered to
someone else, expired at `now`, or would be over-taken (all accepted quantities together may
not exceed its quantity). Nothing here reads a clock: `now` is always passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import tendril_wire as wire

from tendril_transactive.cloud.market.tenders import LOCAL_TZ
from tendril_transactive.cloud.sources.greenbutton import UsageInterval
from tendril_transactive.cloud.timefmt import local_time

# The refusal codes are the wire contract's: a confirm carries them to the agent.
REFUSE_UNKNOWN = wire.TX_REFUSE_UNKNOWN
REFUSE_WRONG_PARTY = wire.TX_REFUSE_WRONG_PARTY
REFUSE_EXPIRED = wire.TX_REFUSE_EXPIRED
REFUSE_OVER_QUANTITY = wire.TX_REFUSE_OVER_QUANTITY
REFUSE_BAD_QUANTITY = wire.TX_REFUSE_BAD_QUANTITY
REFUSE_MALFORMED = wire.TX_REFUSE_MALFORMED
REFUSE_CONFLICT = wire.TX_REFUSE_CONFLICT
# Shares of a tender may be taken in several transactions; floating sums get this slack.
QUANTITY_EPS_KWH = 1e-9

KIND_TENDER = "tender"
KIND_TRANSACTION = "transaction"
KIND_REFUSAL = "refusal"


class TransactionRefused(ValueError):
    """A tender that cannot be accepted; `reason` is one of the REFUSE_* codes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TenderConflict(ValueError):
    """The same tenderId offered twice with different terms."""


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    tender_id: str
    site: str
    side: str  # the customer's side: BUY or SELL
    interval_start: int
    duration_s: int
    quantity_kwh: float
    price_usd_per_kwh: float
    market_id: str
    accepted_at: float
    # The agent (worker) that sent the transaction; "" for in-process callers (simulation).
    party_id: str = ""

    @property
    def signed_kwh(self) -> float:
        """Effect on the position: + for a buy, - for a sell."""
        return self.quantity_kwh if self.side == wire.SIDE_BUY else -self.quantity_kwh

    @property
    def cost_usd(self) -> float:
        """What the customer pays: positive for a buy, negative (revenue) for a sell."""
        return self.signed_kwh * self.price_usd_per_kwh

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, body: dict[str, Any]) -> Transaction:
        return cls(**body)


class LedgerSink(Protocol):
    def append(self, kind: str, site: str, body: dict[str, Any], now: float) -> object: ...


class TenderBook:
    """Tenders on offer and the quantity already taken from each."""

    def __init__(self) -> None:
        self._tenders: dict[str, dict[str, Any]] = {}
        self._taken: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def offer(self, tender: dict[str, Any]) -> bool:
        """Add a tender (validated against the wire contract); False if it was already on offer."""
        wire.validate(wire.TENDER, tender)
        tid = tender["tenderId"]
        known = self._tenders.get(tid)
        if known is not None:
            if known != tender:
                raise TenderConflict(f"tender {tid} offered again with different terms")
            return False
        self._tenders[tid] = dict(tender)
        return True

    def tender(self, tender_id: str) -> dict[str, Any] | None:
        found = self._tenders.get(tender_id)
        return dict(found) if found is not None else None

    def remaining_kwh(self, tender_id: str) -> float | None:
        """kWh still available on a tender; None when it has no quantity limit."""
        tender = self._tenders[tender_id]
        if "quantity" not in tender:
            return None
        return max(0.0, float(tender["quantity"]) - self._taken.get(tender_id, 0.0))

    def check(self, tender_id: str, site: str, quantity_kwh: float, now: float) -> dict[str, Any]:
        """The tender if `site` may take `quantity_kwh` of it at `now`; else TransactionRefused."""
        tender = self._tenders.get(tender_id)
        if tender is None:
            raise TransactionRefused(REFUSE_UNKNOWN, f"no tender {tender_id!r} on offer")
        if tender["counterPartyId"] != site:
            party = tender["counterPartyId"]
            raise TransactionRefused(REFUSE_WRONG_PARTY,
                                     f"tender {tender_id} is offered to {party}, not {site}")
        if isinstance(quantity_kwh, bool) or not isinstance(quantity_kwh, int | float) \
                or not math.isfinite(quantity_kwh) or quantity_kwh <= 0:
            raise TransactionRefused(REFUSE_BAD_QUANTITY,
                                     f"quantity must be a number > 0 kWh, got {quantity_kwh!r}")
        if now >= tender["expirationTime"]:
            expiry = tender["expirationTime"]
            raise TransactionRefused(REFUSE_EXPIRED, f"tender {tender_id} expired at "
                                     f"{local_time(expiry, LOCAL_TZ)}, now is {local_time(now, LOCAL_TZ)}")
        left = self.remaining_kwh(tender_id)
        if left is not None and quantity_kwh > left + QUANTITY_EPS_KWH:
            raise TransactionRefused(REFUSE_OVER_QUANTITY,
                                     f"asked {quantity_kwh:g} kWh of tender {tender_id}, "
                                     f"{left:g} of {tender['quantity']:g} kWh left")
        return tender

    def accept(self, tender_id: str, site: str, quantity_kwh: float, now: float,
               transaction_id: str | None = None, party_id: str = "") -> Transaction:
        """Take `quantity_kwh` of a tender. `transaction_id` is the agent's own id (the market
        service passes it so the ledger, the confirm and the agent's retries all name one
        transaction); without one the book numbers the tender's transactions (simulation)."""
        tx = self.propose(tender_id, site, quantity_kwh, now, transaction_id, party_id)
        self._apply(tx)
        return tx

    def propose(self, tender_id: str, site: str, quantity_kwh: float, now: float,
                transaction_id: str | None = None, party_id: str = "") -> Transaction:
        """The transaction `accept` would make, without taking it: the market service writes it to
        the ledger first and applies it (`apply`) only once it is durable."""
        tender = self.check(tender_id, site, quantity_kwh, now)
        n = self._count.get(tender_id, 0) + 1
        tx = Transaction(
            transaction_id=transaction_id or f"{tender_id}-T{n}", tender_id=tender_id, site=site,
            side=tender["side"], interval_start=int(tender["intervalStart"]), duration_s=tender["durationS"],
            quantity_kwh=float(quantity_kwh), price_usd_per_kwh=float(tender["price"]),
            market_id=tender["marketId"], accepted_at=now, party_id=party_id)
        return tx

    def apply(self, tx: Transaction) -> None:
        """Count an already-recorded transaction against its tender (ledger replay, two-phase accept)."""
        self._apply(tx)

    def tenders(self) -> list[dict[str, Any]]:
        """Every tender on the book, in the order offered."""
        return [dict(t) for t in self._tenders.values()]

    def _apply(self, tx: Transaction) -> None:
        self._taken[tx.tender_id] = self._taken.get(tx.tender_id, 0.0) + tx.quantity_kwh
        self._count[tx.tender_id] = self._count.get(tx.tender_id, 0) + 1

    @classmethod
    def replay(cls, records: Iterable[tuple[str, dict[str, Any]]]) -> TenderBook:
        """Rebuild the book from (kind, body) ledger records in ledger order."""
        book = cls()
        for kind, body in records:
            if kind == KIND_TENDER:
                book.offer(body)
            elif kind == KIND_TRANSACTION:
                book._apply(Transaction.from_record(body))
        return book


class Market:
    """A tender book whose every offer, transaction and refusal is written to a ledger."""

    def __init__(self, ledger: LedgerSink, book: TenderBook | None = None) -> None:
        self.ledger = ledger
        self.book = book or TenderBook()

    def offer(self, tender: dict[str, Any], now: float) -> bool:
        fresh = self.book.offer(tender)
        if fresh:
            self.ledger.append(KIND_TENDER, tender["counterPartyId"], tender, now)
        return fresh

    def accept(self, tender_id: str, site: str, quantity_kwh: float, now: float) -> Transaction:
        try:
            tx = self.book.accept(tender_id, site, quantity_kwh, now)
        except TransactionRefused as exc:
            self.ledger.append(KIND_REFUSAL, site, {"tenderId": tender_id, "quantityKwh": repr(quantity_kwh),
                                                    "reason": exc.reason, "detail": exc.detail}, now)
            raise
        self.ledger.append(KIND_TRANSACTION, site, tx.to_record(), now)
        return tx


# ---------------------------------------------------------------------------------- positions


def forward_series(transactions: Iterable[Transaction]) -> list[UsageInterval]:
    """Transactions as signed kWh intervals (buys +, sells -)."""
    return [UsageInterval(tx.interval_start, tx.duration_s, tx.signed_kwh) for tx in transactions]


def position_series(subscription: Sequence[UsageInterval],
                    transactions: Iterable[Transaction]) -> list[UsageInterval]:
    """Position = subscription + forward buys - forward sells, as overlapping kWh intervals;
    put it on a grid with energy_grid.on_cells to read it per interval."""
    return [*subscription, *forward_series(transactions)]

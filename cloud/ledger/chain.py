"""The ledger: every tender, transaction, refusal, settlement and bill, append-only and hash-chained.

Each record's hash is SHA-256 over the previous record's hash and the record's own fields
(seq, kind, site, time, canonical JSON body), so editing a record breaks its own hash,
removing or reordering one breaks the next record's link, and cutting records off the end is
caught by the anchor row (count and head hash, written with every append). An owner who
rewrites the whole chain and the anchor is caught only against a head kept elsewhere: `head()`
gives it, `verify(expect=...)` checks it.

Storage is SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL
(postgresql+psycopg://...). The API has no update or delete; the database refuses them too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import Connection

from tendril_transactive.cloud.ledger import schema

GENESIS = "0" * 64
DEFAULT_URL = "sqlite:///tendril-ledger.db"
_SCHEMA_LOCK = 0x7E4D_1ED6  # PostgreSQL advisory lock id taken while creating the tables


class LedgerError(ValueError):
    """A record that cannot be written (bad kind, site or body); nothing was appended."""


def canonical_json(body: dict[str, Any]) -> str:
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"record body is not plain finite JSON: {exc}") from None


def record_hash(prev_hash: str, seq: int, kind: str, site: str, recorded_at_us: int, body_json: str) -> str:
    text = f"{prev_hash}\n{seq}\n{kind}\n{site}\n{recorded_at_us}\n{body_json}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class LedgerRecord:
    seq: int
    kind: str
    site: str
    recorded_at_us: int
    body_json: str
    prev_hash: str
    hash: str

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body_json)
        return parsed

    @property
    def recorded_at(self) -> float:
        return self.recorded_at_us / 1e6


@dataclass(frozen=True)
class Head:
    count: int
    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        count, _, digest = text.partition(":")
        if not count.isdigit() or len(digest) != 64:
            raise ValueError(f"expected COUNT:SHA256HEX as printed by `tendril ledger head`, got {text!r}")
        return cls(int(count), int(count), digest)


@dataclass
class VerifyReport:
    records: int = 0
    head: Head = field(default_factory=lambda: Head(0, 0, GENESIS))
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sqlite_immediate(engine: Engine) -> None:
    # pysqlite opens transactions lazily and lets two writers read the same head; take the write
    # lock at BEGIN instead (SQLAlchemy's documented recipe for SQLite transaction control).
    @event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Ledger:
    """Append-only, hash-chained records in a SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        is_sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
        if is_sqlite:
            _sqlite_immediate(self.engine)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes opening a new ledger at once would race to create the same tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            schema.metadata.create_all(conn)
            if conn.execute(select(schema.anchor.c.id)).first() is None:
                conn.execute(insert(schema.anchor).values(
                    id=1, record_count=0, head_seq=0, head_hash=GENESIS))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- writing

    def append(self, kind: str, site: str, body: dict[str, Any], now: float) -> LedgerRecord:
        return self.append_many([(kind, site, body)], now)[0]

    def append_many(self, items: Iterable[tuple[str, str, dict[str, Any]]], now: float) -> list[LedgerRecord]:
        """Append records in one database transaction: all of them or none."""
        if not math.isfinite(now):
            raise LedgerError(f"record time must be finite, got {now}")
        at_us = round(now * 1_000_000)
        prepared = []
        for kind, site, body in items:
            if not kind or len(kind) > 32 or not site or len(site) > 64:
                raise LedgerError(f"kind must be 1..32 and site 1..64 characters, got {kind!r}, {site!r}")
            prepared.append((kind, site, canonical_json(body)))
        written: list[LedgerRecord] = []
        with self.engine.begin() as conn:
            row = conn.execute(select(schema.anchor).where(schema.anchor.c.id == 1).with_for_update()).one()
            count, seq, prev = row.record_count, row.head_seq, row.head_hash
            for kind, site, body_json in prepared:
                seq += 1
                digest = record_hash(prev, seq, kind, site, at_us, body_json)
                written.append(LedgerRecord(seq, kind, site, at_us, body_json, prev, digest))
                prev = digest
            if written:
                conn.execute(insert(schema.records), [
                    {"seq": r.seq, "kind": r.kind, "site": r.site, "recorded_at_us": r.recorded_at_us,
                     "body": r.body_json, "prev_hash": r.prev_hash, "hash": r.hash} for r in written])
                conn.execute(update(schema.anchor).where(schema.anchor.c.id == 1).values(
                    record_count=count + len(written), head_seq=seq, head_hash=prev))
        return written

    # ---------------------------------------------------------------------------- reading

    def records(self, kind: str | None = None, site: str | None = None) -> Iterator[LedgerRecord]:
        query = select(schema.records).order_by(schema.records.c.seq)
        if kind is not None:
            query = query.where(schema.records.c.kind == kind)
        if site is not None:
            query = query.where(schema.records.c.site == site)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield LedgerRecord(row.seq, row.kind, row.site, row.recorded_at_us, row.body,
                                   row.prev_hash, row.hash)

    def head(self) -> Head:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.anchor).where(schema.anchor.c.id == 1)).first()
        if row is None:
            return Head(0, 0, GENESIS)
        return Head(row.record_count, row.head_seq, row.head_hash)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.records)).scalar_one())

    # ---------------------------------------------------------------------------- checking

    def verify(self, expect: Head | None = None) -> VerifyReport:
        """Walk the chain; every broken link, edited record, gap or anchor mismatch is a problem."""
        report = VerifyReport()
        prev, expected_seq, last_seq = GENESIS, 1, 0
        # The anchor first, then the chain up to it: a service appending while we walk (the market
        # never stops) adds records past the anchor we read, which the next verify covers. Read the
        # other way round, every concurrent append looked like a cut-off chain.
        anchor = self.head()
        for rec in self.records():
            if rec.seq > anchor.seq and report.records >= anchor.count:
                break
            report.records += 1
            if rec.seq != expected_seq:
                if rec.seq > expected_seq:
                    last_missing = rec.seq - 1
                    gap = str(expected_seq) if last_missing == expected_seq \
                        else f"{expected_seq}..{last_missing}"
                    report.problems.append(f"record(s) {gap} missing before record {rec.seq} (removed)")
                else:
                    report.problems.append(f"record {rec.seq} out of sequence after {last_seq}")
            if rec.prev_hash != prev:
                report.problems.append(f"record {rec.seq}: does not link to the record before it "
                                       "(a record was removed, inserted or reordered)")
            if record_hash(rec.prev_hash, rec.seq, rec.kind, rec.site, rec.recorded_at_us,
                           rec.body_json) != rec.hash:
                report.problems.append(f"record {rec.seq}: contents do not match its hash (edited)")
            prev, expected_seq, last_seq = rec.hash, rec.seq + 1, rec.seq
        report.head = Head(report.records, last_seq, prev)
        if (anchor.count, anchor.seq, anchor.hash) != (report.records, last_seq, prev):
            report.problems.append(
                f"anchor says {anchor.count} records ending at {anchor.seq} ({anchor.hash[:12]}), "
                f"the chain has {report.records} ending at {last_seq} ({prev[:12]}): "
                "records cut off or anchor altered")
        if expect is not None and (expect.count, expect.hash) != (report.records, prev):
            report.problems.append(f"expected head {expect.count}:{expect.hash[:12]}, the chain has "
                                   f"{report.records}:{prev[:12]}: the ledger was rewritten or cut")
        return report

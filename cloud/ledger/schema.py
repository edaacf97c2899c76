"""Ledger tables (SQLAlchemy Core) and the database-side guards that keep them append-only.

`ledger_records` holds the hash chain; `ledger_anchor` holds one row with the count and head
hash of the chain, written in the same transaction as every append, so cutting records off the
end (which leaves a valid shorter chain) shows as a mismatch with the anchor.

Guards: triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) of ledger records. A
database owner can drop them, which is why verification does not rely on them: they stop
mistakes, the hash chain and anchor catch tampering.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)

metadata = MetaData()

records = Table(
    "ledger_records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("site", String(64), nullable=False, index=True),
    Column("recorded_at_us", BigInteger, nullable=False),  # unix microseconds, from the injected clock
    Column("body", Text, nullable=False),  # canonical JSON exactly as hashed
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)

anchor = Table(
    "ledger_anchor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("record_count", BigInteger, nullable=False),
    Column("head_seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
)

GUARD_MESSAGE = "ledger_records is append-only"

_SQLITE_GUARDS = [
    f"CREATE TRIGGER IF NOT EXISTS ledger_records_no_update BEFORE UPDATE ON ledger_records "
    f"BEGIN SELECT RAISE(ABORT, '{GUARD_MESSAGE}'); END",
    f"CREATE TRIGGER IF NOT EXISTS ledger_records_no_delete BEFORE DELETE ON ledger_records "
    f"BEGIN SELECT RAISE(ABORT, '{GUARD_MESSAGE}'); END",
]

_POSTGRES_GUARDS = [
    "CREATE OR REPLACE FUNCTION ledger_records_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{GUARD_MESSAGE}'; END $$",
    "CREATE OR REPLACE TRIGGER ledger_records_no_change BEFORE UPDATE OR DELETE ON ledger_records "
    "FOR EACH ROW EXECUTE FUNCTION ledger_records_append_only()",
    "CREATE OR REPLACE TRIGGER ledger_records_no_truncate BEFORE TRUNCATE ON ledger_records "
    "FOR EACH STATEMENT EXECUTE FUNCTION ledger_records_append_only()",
]

# Statements that remove the guards: for tests that play a database owner tampering with rows.
DROP_GUARDS = {
    "sqlite": ["DROP TRIGGER IF EXISTS ledger_records_no_update",
               "DROP TRIGGER IF EXISTS ledger_records_no_delete"],
    "postgresql": ["DROP TRIGGER IF EXISTS ledger_records_no_change ON ledger_records",
                   "DROP TRIGGER IF EXISTS ledger_records_no_truncate ON ledger_records"],
}

for _stmt in _SQLITE_GUARDS:
    event.listen(records, "after_create", DDL(_stmt).execute_if(dialect="sqlite"))  # type: ignore[no-untyped-call]
for _stmt in _POSTGRES_GUARDS:
    event.listen(records, "after_create",
                 DDL(_stmt).execute_if(dialect="postgresql"))  # type: ignore[no-untyped-call]

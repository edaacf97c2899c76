"""The ledger on a SQLite file and on a real PostgreSQL server: appends, guards, tamper detection."""

from __future__ import annotations

import argparse
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import tendril_wire as wire
from sqlalchemy.exc import DBAPIError

from tendril_transactive.cloud.cli import ledger as ledger_cli
from tendril_transactive.cloud.ledger import schema
from tendril_transactive.cloud.ledger.chain import GENESIS, Head, Ledger, LedgerError, record_hash
from tendril_transactive.cloud.market.transactions import REFUSE_EXPIRED, Market, TenderBook, TransactionRefused
from tendril_transactive.hil.servers import Postgres

pytestmark = pytest.mark.integration

NOW = 1710259200.0  # 2024-03-12T16:00Z


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.url


@pytest.fixture()
def ledger(url: str) -> Iterator[Ledger]:
    with Ledger(url) as opened:
        for i in range(6):
            opened.append("tender", "coastal", {"n": i, "price": round(0.1 + i / 100, 2)}, NOW + i)
        yield opened


def tamper(ledger: Ledger, *statements: str) -> None:
    """Play a database owner: drop the append-only guards, then change rows directly."""
    with ledger.engine.begin() as conn:
        for stmt in [*schema.DROP_GUARDS[ledger.engine.dialect.name], *statements]:
            conn.exec_driver_sql(stmt)  # raw SQL: JSON bodies hold ':' that text() would bind


def problems(ledger: Ledger) -> str:
    report = ledger.verify()
    assert not report.ok, "tampering went unnoticed"
    return "\n".join(report.problems)


def test_appends_chain_and_verify(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok, report.problems
    records = list(ledger.records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert records[2].body == {"n": 2, "price": 0.12}
    assert records[2].recorded_at == NOW + 2
    assert str(ledger.head()) == f"6:{records[-1].hash}"
    with pytest.raises(LedgerError, match="finite JSON"):
        ledger.append("tender", "coastal", {"price": float("nan")}, NOW)
    with pytest.raises(LedgerError):
        ledger.append("", "coastal", {}, NOW)
    assert ledger.count() == 6  # refused appends left nothing behind


def test_database_refuses_updates_and_deletes(ledger: Ledger) -> None:
    for stmt in ("UPDATE ledger_records SET body = '{}' WHERE seq = 2",
                 "DELETE FROM ledger_records WHERE seq = 6"):
        with pytest.raises(DBAPIError, match=schema.GUARD_MESSAGE), ledger.engine.begin() as conn:
            conn.execute(sa.text(stmt))
    assert ledger.verify().ok


def test_edited_record_is_detected(ledger: Ledger) -> None:
    tamper(ledger, """UPDATE ledger_records SET body = '{"n":2,"price":0.01}' WHERE seq = 3""")
    assert "record 3: contents do not match its hash (edited)" in problems(ledger)


def test_edit_with_recomputed_hash_breaks_the_next_link(ledger: Ledger) -> None:
    rec = next(r for r in ledger.records() if r.seq == 3)
    body = '{"n":2,"price":0.01}'
    forged = record_hash(rec.prev_hash, 3, rec.kind, rec.site, rec.recorded_at_us, body)
    tamper(ledger, f"UPDATE ledger_records SET body = '{body}', hash = '{forged}' WHERE seq = 3")
    found = problems(ledger)
    assert "record 4: does not link to the record before it" in found
    assert "record 3" not in found


def test_removed_record_is_detected(ledger: Ledger) -> None:
    tamper(ledger, "DELETE FROM ledger_records WHERE seq = 3")
    found = problems(ledger)
    assert "record(s) 3 missing before record 4 (removed)" in found
    assert "record 4: does not link" in found


def test_reordered_records_are_detected(ledger: Ledger) -> None:
    tamper(ledger, "UPDATE ledger_records SET seq = -2 WHERE seq = 2",
           "UPDATE ledger_records SET seq = 2 WHERE seq = 3",
           "UPDATE ledger_records SET seq = 3 WHERE seq = -2")
    found = problems(ledger)
    assert "record 2: does not link" in found and "record 3: does not link" in found
    assert "record 2: contents do not match its hash" in found


def test_truncated_tail_is_detected_by_the_anchor(ledger: Ledger) -> None:
    tamper(ledger, "DELETE FROM ledger_records WHERE seq > 3")
    found = problems(ledger)
    assert "anchor says 6 records ending at 6" in found and "the chain has 3 ending at 3" in found
    assert "does not link" not in found  # the shorter chain itself is intact: only the anchor knows


def test_a_record_appended_while_verify_runs_is_not_a_cut_off_chain(ledger: Ledger,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A running market appends while `tendril ledger verify` reads (seen in the full-loop test:
    "anchor says 14471 records, the chain has 14440"). Here the append lands when verify reads the
    anchor; verify must judge the chain up to the anchor it read."""
    read_head = ledger.head

    def appended_then_head() -> Head:
        ledger.append("transaction", "coastal", {"n": 99}, NOW + 99)
        return read_head()

    monkeypatch.setattr(ledger, "head", appended_then_head)
    report = ledger.verify()
    assert report.ok, report.problems
    monkeypatch.undo()
    assert ledger.verify().ok and ledger.verify().records == 7


def test_rewritten_chain_is_caught_only_by_a_head_kept_elsewhere(ledger: Ledger) -> None:
    kept = ledger.head()
    rows = list(ledger.records())
    statements, prev = [], GENESIS
    for r in rows:
        body = '{"n":0,"price":0.0}' if r.seq == 1 else r.body_json
        digest = record_hash(prev, r.seq, r.kind, r.site, r.recorded_at_us, body)
        statements.append(f"UPDATE ledger_records SET body = '{body}', prev_hash = '{prev}', "
                          f"hash = '{digest}' WHERE seq = {r.seq}")
        prev = digest
    statements.append(f"UPDATE ledger_anchor SET head_hash = '{prev}' WHERE id = 1")
    tamper(ledger, *statements)
    assert ledger.verify().ok  # consistent forgery: the database alone cannot tell
    report = ledger.verify(expect=kept)
    assert not report.ok and "ledger was rewritten or cut" in report.problems[0]


def test_concurrent_appenders_keep_one_chain(url: str) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with Ledger(url) as own:
                for i in range(20):
                    own.append("tender", f"site-{n}", {"i": i}, NOW + i)
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "appender thread did not finish within 120 s"
    assert not errors, errors
    with Ledger(url) as check:
        report = check.verify()
        assert report.ok and report.records == 80, report.problems


def test_market_records_offers_transactions_and_refusals(url: str) -> None:
    start = int(NOW) + 3600
    tender = {"v": 1, "tenderId": f"RTM-{start}-B-x", "side": wire.SIDE_BUY, "intervalStart": start,
              "durationS": 300, "price": 0.09, "quantity": 1.0, "expirationTime": start,
              "partyId": "utility", "counterPartyId": "coastal", "marketId": "RTM",
              "resourceDesignator": "feeder-1"}
    with Ledger(url) as led:
        market = Market(led)
        assert market.offer(tender, NOW) is True
        assert market.offer(tender, NOW + 1) is False  # a re-publish is not recorded twice
        tx = market.accept(tender["tenderId"], "coastal", 0.4, NOW + 2)
        with pytest.raises(TransactionRefused) as info:
            market.accept(tender["tenderId"], "coastal", 0.4, start)
        assert info.value.reason == REFUSE_EXPIRED
        kinds = [(r.kind, r.site) for r in led.records()]
        assert kinds == [("tender", "coastal"), ("transaction", "coastal"), ("refusal", "coastal")]
        refusal = next(iter(led.records(kind="refusal"))).body
        assert refusal["reason"] == REFUSE_EXPIRED
        rebuilt = TenderBook.replay((r.kind, r.body) for r in led.records())
        assert rebuilt.remaining_kwh(tender["tenderId"]) == pytest.approx(0.6)
        assert next(iter(led.records(kind="transaction"))).body == tx.to_record()
        assert led.verify().ok


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tendril")
    ledger_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_verify_command_exit_codes(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["ledger", "verify", "--url", ledger.url]) == 0
    assert "ok: 6 records" in capsys.readouterr().out
    assert run_cli(["ledger", "head", "--url", ledger.url]) == 0
    head = capsys.readouterr().out.strip()
    assert run_cli(["ledger", "verify", "--url", ledger.url, "--expect-head", head]) == 0
    tamper(ledger, "DELETE FROM ledger_records WHERE seq = 6")
    assert run_cli(["ledger", "verify", "--url", ledger.url, "--expect-head", head]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "anchor says 6" in err and "expected head 6:" in err


def test_verify_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["ledger", "verify", "--url", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no ledger file" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # verifying never creates an empty ledger
    assert run_cli(["ledger", "verify", "--url", "not a url"]) == 2
    with pytest.raises(SystemExit):
        run_cli(["ledger", "verify", "--expect-head", "12:short"])

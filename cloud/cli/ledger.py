"""`tendril ledger`: verify the hash chain, print its head, list records.

Exit codes: 0 the ledger verifies (or the listing worked), 1 verification found problems,
2 bad input (no such ledger file, bad URL, malformed --expect-head).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tendril_transactive.cloud.cli.args import positive_int
from tendril_transactive.cloud.ledger.chain import DEFAULT_URL, Head, Ledger
from tendril_transactive.cloud.settings import ENV_LEDGER_URL

ENV_URL = ENV_LEDGER_URL


def _head(text: str) -> Head:
    try:
        return Head.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get(ENV_URL, DEFAULT_URL),
                        help=f"ledger URL: sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB "
                             f"(env {ENV_URL}; default {DEFAULT_URL})")
    p = sub.add_parser("ledger", help="check or read the tamper-evident ledger",
                       description="The ledger of tenders, transactions, refusals, settlements and bills: "
                                   "append-only, each record carrying the hash of the one before.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    v = actions.add_parser(
        "verify", parents=[common],
        help="walk the hash chain; report edited, removed, reordered or cut records",
        description="Exit 0 if every record links to the one before, matches its hash and the chain "
                    "ends where the anchor says; else list the problems and exit 1.")
    v.add_argument("--expect-head", type=_head, default=None, metavar="COUNT:HASH",
                   help="a head kept elsewhere (from `tendril ledger head`); catches a rewritten chain")
    v.set_defaults(func=verify)
    h = actions.add_parser("head", parents=[common],
                           help="print COUNT:HASH of the newest record (keep it elsewhere)")
    h.set_defaults(func=head)
    s = actions.add_parser("show", parents=[common], help="list records, newest last")
    s.add_argument("--kind", default=None,
                   help="only this kind (tender, transaction, refusal, settlement, bill)")
    s.add_argument("--site", default=None, help="only this site")
    s.add_argument("--limit", type=positive_int("--limit"), default=20,
                   help="show at most the last N records (default 20)")
    s.set_defaults(func=show)


def _open(url: str) -> Ledger:
    """Open an existing ledger; a missing SQLite file is an error here, not a new empty ledger."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
        raise ValueError(f"no ledger file at {parsed.database or '(memory)'!s}")
    return Ledger(url)


def _run(args: argparse.Namespace, body: str) -> int:
    try:
        ledger = _open(args.url)
    except ValueError as exc:
        print(f"tendril ledger: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"tendril ledger: cannot open {args.url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        if body == "verify":
            report = ledger.verify(args.expect_head)
            if report.ok:
                print(f"ok: {report.records} records, head {report.head}")
                return 0
            print(f"FAILED: {len(report.problems)} problem(s) in {report.records} records", file=sys.stderr)
            for problem in report.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        if body == "head":
            print(ledger.head())
            return 0
        rows = list(ledger.records(kind=args.kind, site=args.site))[-args.limit:]
        for rec in rows:
            print(f"{rec.seq:>8} {rec.kind:<12} {rec.site:<16} {rec.hash[:12]} {rec.body_json[:80]}")
        return 0
    except SQLAlchemyError as exc:
        print(f"tendril ledger: {args.url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        ledger.close()


def verify(args: argparse.Namespace) -> int:
    return _run(args, "verify")


def head(args: argparse.Namespace) -> int:
    return _run(args, "head")


def show(args: argparse.Namespace) -> int:
    return _run(args, "show")

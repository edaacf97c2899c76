"""`tendril`: one command line, a subcommand per job.

Each subcommand lives in its own module and registers itself here through a
`register(subparsers)` function, so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

# (module, what it adds) -- imported lazily so `tendril --help` stays fast and a
# heavy dependency of one job (Pyomo, say) never breaks another.
SUBCOMMANDS: tuple[str, ...] = (
    "cloud.demo_cli",
    "cloud.ingest_cli",
    "cloud.simulate_cli",
    "cloud.bill_cli",
    "cloud.ledger_cli",
    "cloud.dashboards_cli",
    "cloud.device_cli",
    "cloud.hil_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tendril",
        description="Tendril: transactive energy from an ESP32 on the wall to the utility's cloud and back.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in SUBCOMMANDS:
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = import_module(module_name).register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

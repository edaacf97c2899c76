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
from importlib.metadata import entry_points

# Subcommands are plugins: each package that offers one names its `register(subparsers)`
# function under the "tendril.commands" entry-point group (pyproject.toml). So the CLI, which
# lives in cloud/, imports no other top-level package: hil and dashboards depend on cloud,
# never the other way round. Modules load lazily so `tendril --help` stays fast and a heavy
# dependency of one job (Pyomo, say) never breaks another.
COMMAND_GROUP = "tendril.commands"


def subcommand_modules() -> list[tuple[str, str]]:
    """(name, "module:function") for each registered subcommand, in a stable order."""
    found: dict[str, str] = {}
    for ep in entry_points(group=COMMAND_GROUP):
        found.setdefault(ep.name, ep.value)  # an editable and a built install may both be on the path
    if not found:
        raise SystemExit("tendril: no subcommands are registered; install the package (pip install -e .)")
    return sorted(found.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER))


# The order `tendril --help` lists them in: the main job first, then services, then tools.
ORDER = ("demo", "ingest", "market", "agent", "simulate", "bill", "ledger", "dashboards", "device", "hil")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tendril",
        description="Tendril: transactive energy from an ESP32 on the wall to the utility's cloud and back.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for _name, target in subcommand_modules():
        module_name, _, func_name = target.partition(":")
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = getattr(import_module(module_name), func_name or "register")
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

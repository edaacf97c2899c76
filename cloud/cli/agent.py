"""`tendril agent`: placeholder while the service is being written this session (replaced before landing)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="(being written)", description="(being written)")
    p.set_defaults(func=lambda _args: 2)

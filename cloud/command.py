"""How to start the `tendril` command as a child process (a service that starts its own workers,
a test, a bench): by this interpreter, whether or not the console script is on PATH. Apart from
cloud/cli/, which imports every room: a room that starts a child must not import the CLI."""

from __future__ import annotations

import sys

MODULE = "tendril_transactive.cloud.cli"  # `python -m` this: the same as the `tendril` command


def argv(*args: str) -> list[str]:
    """The command line of `tendril *args`."""
    return [sys.executable, "-m", MODULE, *args]

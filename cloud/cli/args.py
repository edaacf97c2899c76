"""Argument types shared by the subcommands: each refusal names the option and the bad value."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number > 0, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number > 0, got {text}")
        return value

    return parse


def _float_at_least(name: str, low: float, inclusive: bool) -> Callable[[str], float]:
    bound = f"{'>=' if inclusive else '>'} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number {bound}, got {text!r}") from None
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
            raise argparse.ArgumentTypeError(f"{name} must be a number {bound}, got {text}")
        return value

    return parse


def positive_float(name: str) -> Callable[[str], float]:
    return _float_at_least(name, 0.0, inclusive=False)


def non_negative_float(name: str) -> Callable[[str], float]:
    return _float_at_least(name, 0.0, inclusive=True)

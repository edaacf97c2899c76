"""Which worker answers which site: rendezvous (highest-random-weight) hashing over the live
workers. Every worker computes the same answer from the same set of live workers, with no
coordination; when a worker leaves, only its sites move (each to the survivor that scores
highest for it), and when one joins it takes about 1/N of the sites from the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _score(worker: str, site: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{worker}|{site}".encode()).digest()[:8], "big")


def owner(site: str, workers: Iterable[str]) -> str | None:
    """The worker that owns `site` among `workers` (None if there is none)."""
    best: tuple[int, str] | None = None
    for w in workers:
        key = (_score(w, site), w)
        if best is None or key > best:
            best = key
    return best[1] if best else None


def owned(sites: Iterable[str], workers: Iterable[str], me: str) -> set[str]:
    live = set(workers) | {me}
    return {s for s in sites if owner(s, live) == me}

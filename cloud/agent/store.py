"""The agent's state on disk: one small JSON file per site, replaced atomically.

Per site, not per worker: when a site moves to another worker (its worker died, or a worker
joined) the new owner reads the site's file and carries on with its pending transactions,
confirmed position, last plans and command sequence numbers. Workers on one host share
--state-dir; on several hosts the directory must be shared storage, or the new owner starts
from what the wire re-derives (see docs/agent.md: the clock-derived seq and deterministic
transaction ids keep that safe, only the position of the day's earlier trades is then lost).

Written with write-to-temp + rename: a reader (or a kill -9) sees the old file or the new one,
never half of one. No fsync: a killed process loses nothing (the page cache survives it); a
power cut may lose the last interval's write, which the same two properties cover.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import tendril_wire as wire

log = logging.getLogger("tendril.agent")


class StateStore:
    def __init__(self, root: Path | None) -> None:
        self.root = root
        if root is not None:
            (root / "sites").mkdir(parents=True, exist_ok=True)

    def _path(self, site: str) -> Path:
        assert self.root is not None
        return self.root / "sites" / f"{wire.check_id(site, 'site')}.json"

    def load(self, site: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        path = self._path(site)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable agent state (%s); starting this site afresh", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def save_text(self, site: str, text: str) -> None:
        """Replace the site's file with `text` (a JSON object) atomically: a kill -9 leaves the old
        file or the new one, never half of one."""
        if self.root is None:
            return
        path = self._path(site)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

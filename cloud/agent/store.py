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

The state file is written a little after each change (the service batches writes per tick), so
beside it each site has a write-ahead journal of the transactions sent since: appended before a
transaction goes on the wire, emptied when the state file is written. Without it a kill -9 between
sending and writing let the next owner decide the same tender again, under the same derived
transactionId but with another quantity, which the market rightly refused as a conflict.
"""

from __future__ import annotations

import contextlib
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

    def _sent_path(self, site: str) -> Path:
        assert self.root is not None
        return self.root / "sites" / f"{wire.check_id(site, 'site')}.sent"

    def append_sent(self, site: str, entries: list[dict[str, Any]]) -> None:
        """Journal transactions about to be sent (one JSON line each), before they go on the wire."""
        if self.root is None or not entries:
            return
        with self._sent_path(site).open("a") as f:
            f.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))

    def load_sent(self, site: str) -> list[dict[str, Any]]:
        """The journal's entries; a line that does not parse (a torn write) is skipped, logged."""
        if self.root is None:
            return []
        path = self._sent_path(site)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("%s: unreadable transaction journal (%s)", path, exc)
            return []
        out = []
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                log.error("%s:%d: journal line not JSON, skipped", path, n)
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def clear_sent(self, site: str) -> None:
        """Empty the journal: call only after a state file holding its entries was written."""
        if self.root is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._sent_path(site).unlink()

"""Retiring ingestion workers that a new run no longer starts (e.g. `--workers 3` → `--workers 2`).

Each worker leaves two things behind when it stops: a persistent MQTT session (Mosquitto keeps
routing its share of the group's messages into it while it is away: measured, half of them with
two members) and its folder under --state-dir (spool of acknowledged-but-unstored batches, dedup
window). A worker that is never started again would strand both. So before the workers start,
every folder whose recorded identity no run member will take over is retired: connect as that
client, UNSUBSCRIBE (no new messages), store what the session still held and what the spool
still holds, erase the session, remove the folder.

Pure planning (`plan`) is separate from doing it (`retire`), which is the ingestion path itself.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tendril_transactive.cloud.ingest.dedup import write_atomic

log = logging.getLogger("tendril.ingest")

IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class Identity:
    """Who a state folder belonged to at the broker: its MQTT client id and shared group."""

    client_id: str
    share_group: str | None


def folder_name(index: int) -> str:
    return f"w{index}"


def wanted(client_id: str, workers: int, member: bool, share_group: str | None) -> dict[str, Identity]:
    """The folders this run's workers use, and as whom (see ingest_serve: a single process is not
    a group member unless --share-group says so; worker i of N is `<client_id>-i`)."""
    if not member:
        return {folder_name(0): Identity(client_id, share_group)}
    return {folder_name(i): Identity(f"{client_id}-{i}", share_group) for i in range(workers)}


def write_identity(state_dir: Path, identity: Identity) -> None:
    doc = {"client_id": identity.client_id, "share_group": identity.share_group}
    write_atomic(state_dir / IDENTITY_FILE, json.dumps(doc).encode(), fsync=False)


def read_identity(state_dir: Path) -> Identity | None:
    """The folder's recorded identity; None if it has none or it cannot be read (logged)."""
    path = state_dir / IDENTITY_FILE
    try:
        doc = json.loads(path.read_text())
        client_id, group = doc["client_id"], doc["share_group"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): treating the folder as unowned", path, exc)
        return None
    if not isinstance(client_id, str) or not (group is None or isinstance(group, str)):
        log.warning("%s has a bad client_id/share_group: treating the folder as unowned", path)
        return None
    return Identity(client_id, group)


def existing(state_root: Path) -> dict[str, Identity | None]:
    """Worker folders (w<N>) under --state-dir and their recorded identities."""
    if not state_root.is_dir():
        return {}
    out: dict[str, Identity | None] = {}
    for child in sorted(state_root.iterdir()):
        if child.is_dir() and child.name[:1] == "w" and child.name[1:].isdigit():
            out[child.name] = read_identity(child)
    return out


def plan(found: dict[str, Identity | None], want: dict[str, Identity]) -> list[tuple[str, Identity]]:
    """The folders to retire first, each with the identity to drain it as: every recorded
    identity that this run does not use for the same folder. A folder without a record is
    left to whoever takes the folder over (its session, if any, is unknown)."""
    return [(name, ident) for name, ident in sorted(found.items()) if ident is not None and want.get(name) != ident]


@dataclass(frozen=True)
class Retired:
    folder: str
    identity: Identity
    drained: bool
    received: int
    replayed: int


Drainer = Callable[[Path, Identity], tuple[bool, int, int]]  # (drained, received, replayed)


def retire(state_root: Path, todo: list[tuple[str, Identity]], want: dict[str, Identity],
           drain: Drainer) -> list[Retired]:
    """Drain each folder in `todo` as its recorded identity; on success remove the folder (or, if
    this run reuses it as someone else, just its identity record). A folder that could not be
    drained is kept, and retried by the next start."""
    done: list[Retired] = []
    for name, ident in todo:
        folder = state_root / name
        group = f", group {ident.share_group}" if ident.share_group else ""
        log.info("retiring %s (client %s%s): taking what its session and spool still hold", folder, ident.client_id,
                 group)  # fmt: skip
        drained, received, replayed = drain(folder, ident)
        if drained:
            if name in want:
                (folder / IDENTITY_FILE).unlink(missing_ok=True)
            else:
                shutil.rmtree(folder)
            log.info("retired %s: %d messages taken from the broker session, %d spooled lines stored; session "
                     "erased%s", folder, received, replayed, "" if name in want else ", folder removed")  # fmt: skip
        else:
            log.error("could not retire %s (client %s) in time: kept; it is retried at the next start", folder,
                      ident.client_id)  # fmt: skip
        done.append(Retired(name, ident, drained, received, replayed))
    return done

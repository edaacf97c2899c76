"""Which worker folders a new `tendril ingest` run retires before it starts, and what retiring
does to each folder (the draining itself runs against a real broker and store in
tests/integration/test_ingest_retire.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tendril_transactive.cloud.ingest.retire import (
    IDENTITY_FILE,
    Identity,
    existing,
    plan,
    read_identity,
    retire,
    wanted,
    write_identity,
)

pytestmark = pytest.mark.unit

GROUP = "tendril-ingest"


def test_wanted_names_each_worker_as_the_workers_name_themselves() -> None:
    assert wanted("ing", 1, False, None) == {"w0": Identity("ing", None)}
    assert wanted("ing", 3, True, GROUP) == {f"w{i}": Identity(f"ing-{i}", GROUP) for i in range(3)}


def test_fewer_workers_retire_the_rest_and_a_changed_identity_retires_the_old_one() -> None:
    before = {name: ident for name, ident in wanted("ing", 3, True, GROUP).items()}
    assert plan(dict(before), wanted("ing", 3, True, GROUP)) == []
    assert plan(dict(before), wanted("ing", 2, True, GROUP)) == [("w2", Identity("ing-2", GROUP))]
    # 3 workers -> one process: w0 was member ing-0 of the group, now it is plain "ing"
    assert plan(dict(before), wanted("ing", 1, False, None)) == [
        ("w0", Identity("ing-0", GROUP)), ("w1", Identity("ing-1", GROUP)), ("w2", Identity("ing-2", GROUP))]
    assert plan({"w0": Identity("ing-0", GROUP)}, wanted("ing", 1, True, "other")) == [("w0", Identity("ing-0", GROUP))]


def test_a_folder_without_a_record_is_never_retired() -> None:
    assert plan({"w5": None, "w0": None}, wanted("ing", 1, False, None)) == []


def test_identity_records_round_trip_and_bad_ones_count_as_none(tmp_path: Path) -> None:
    for name in ("w0", "w1", "w12", "wx", "spool"):
        (tmp_path / name).mkdir()
    write_identity(tmp_path / "w0", Identity("ing-0", GROUP))
    write_identity(tmp_path / "w1", Identity("ing", None))
    (tmp_path / "w12" / IDENTITY_FILE).write_text('{"client_id": 5, "share_group": null}')
    assert existing(tmp_path) == {"w0": Identity("ing-0", GROUP), "w1": Identity("ing", None), "w12": None}
    (tmp_path / "w1" / IDENTITY_FILE).write_text("{not json")
    assert read_identity(tmp_path / "w1") is None
    assert existing(tmp_path / "missing") == {}


def test_retire_removes_drained_folders_keeps_reused_ones_and_keeps_failures(tmp_path: Path) -> None:
    old = wanted("ing", 3, True, GROUP)
    for name, ident in old.items():
        (tmp_path / name / "spool").mkdir(parents=True)
        write_identity(tmp_path / name, ident)
    want = wanted("ing", 1, False, None)
    calls: list[tuple[Path, Identity]] = []

    def drain(folder: Path, ident: Identity) -> tuple[bool, int, int]:
        calls.append((folder, ident))
        return folder.name != "w2", 10, 3

    results = retire(tmp_path, plan(existing(tmp_path), want), want, drain)
    assert [(c[0].name, c[1]) for c in calls] == sorted(old.items())
    assert [(r.folder, r.drained) for r in results] == [("w0", True), ("w1", True), ("w2", False)]
    assert (tmp_path / "w0" / "spool").is_dir() and read_identity(tmp_path / "w0") is None  # reused by "ing"
    assert not (tmp_path / "w1").exists()  # drained, nobody uses it: gone
    assert read_identity(tmp_path / "w2") == old["w2"]  # not drained: kept for the next start

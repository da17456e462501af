"""The index file across versions: an index written by the first version opens in this one
with every row kept; one written by a newer version is refused, not damaged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fusesync.errors import FusesyncError
from fusesync.index import Index
from fusesync.index.schema import MIGRATIONS, V1, statements


def first_version_index(path: Path) -> None:
    """An index as the first version left it: its schema alone, at user_version 1."""
    conn = sqlite3.connect(path)
    for statement in statements(V1):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO paths (path, parent, base_kind, base_etag, local_kind, dirty) "
        "VALUES ('notes.txt', '', 'file', 'e1', 'file', 0), "
        "('gone.txt', '', NULL, NULL, NULL, 0), ('jobs/run.sh', 'jobs', 'file', 'e2', NULL, 3)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_an_index_of_the_first_version_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    first_version_index(path)
    with Index(path) as index:
        assert index.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert index.require("notes.txt")["base_etag"] == "e1"
        assert index.require("notes.txt")["remote_enc"] is None  # columns added later
        assert index.require("notes.txt")["remote_from"] is None
        # the journal and the row that says nothing are found through their indexes
        assert [row["path"] for row in index.few_rows("dirty != 0")] == ["jobs/run.sh"]
        assert index.prune() == 1
        assert index.get("gone.txt") is None
        plan = index.conn.execute(
            "EXPLAIN QUERY PLAN DELETE FROM paths WHERE base_kind IS NULL "
            "AND local_kind IS NULL AND remote_kind IS NULL AND dirty = 0"
        ).fetchall()
        assert "paths_empty" in " ".join(row["detail"] for row in plan)
    with Index(path) as index:  # opened again: nothing to migrate, nothing lost
        assert index.require("jobs/run.sh")["dirty"] == 3


def test_an_index_of_a_newer_version_is_refused_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    first_version_index(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(FusesyncError, match="newer than this fusesync understands"):
        Index(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    assert conn.execute("SELECT count(*) FROM paths").fetchone()[0] == 3
    conn.close()


def test_a_step_that_reshapes_a_table_gets_sqlite_utils(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration SQLite's ALTER TABLE cannot do runs as a function of sqlite-utils'
    Database, in the same transaction as the version it brings: a failing one leaves the
    index as it was."""
    import fusesync.index.db as db

    path = tmp_path / "index.db"
    first_version_index(path)

    def reshape(database) -> None:  # type: ignore[no-untyped-def]
        database["meta"].transform(types={"value": int})  # TEXT -> INTEGER: a new table

    def broken(database) -> None:  # type: ignore[no-untyped-def]
        database["meta"].transform(types={"value": str})
        raise RuntimeError("half-way")

    monkeypatch.setattr(db, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(RuntimeError, match="half-way"):
        Index(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    monkeypatch.setattr(db, "MIGRATIONS", (*MIGRATIONS, reshape))
    with Index(path) as index:
        assert index.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        types = {row["name"]: row["type"] for row in index.conn.execute("PRAGMA table_info(meta)")}
        assert types["value"] == "INTEGER"
        assert index.require("notes.txt")["base_etag"] == "e1"


def test_undone_writes_are_seen_inside_and_gone_after(tmp_path: Path) -> None:
    """What a dry run or a status plans from: a listing recorded, planned from, undone;
    a transaction inside (record_remote's) nests as a savepoint."""
    with Index(tmp_path / "index.db") as index:
        index.upsert("kept", remote_kind="file", remote_size=1)
        before = index.version()
        with index.undone():
            with index.transaction():
                index.upsert("new", remote_kind="file", remote_size=2)
                index.upsert("kept", remote_size=3)
            with pytest.raises(KeyError), index.transaction():
                index.upsert("never", remote_kind="file")
                raise KeyError("a step that fails half-way")
            assert index.get("never") is None  # the savepoint alone was rolled back
            assert index.require("new")["remote_size"] == 2
            assert index.require("kept")["remote_size"] == 3
        assert index.get("new") is None and index.require("kept")["remote_size"] == 1
        assert index.version() != before  # cached reads of the rows must look again
        with index.transaction():  # and the index is writable as ever
            index.upsert("after", remote_kind="file")
        assert index.get("after") is not None


def test_a_refused_commit_leaves_no_transaction_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMMIT the file system refuses (out of room) undoes the transaction: one left
    open would swallow every write after it, never to be committed."""
    from fusesync.errors import StateError

    with Index(tmp_path / "index.db") as index:
        real = Index._commit

        def refused(self: Index, conn: sqlite3.Connection) -> None:
            raise StateError("cannot write index: No space left on device", 28)

        monkeypatch.setattr(Index, "_commit", refused)
        with pytest.raises(StateError), index.transaction():
            index.upsert("lost", remote_kind="file")
        assert not index.conn.in_transaction and index.get("lost") is None
        monkeypatch.setattr(Index, "_commit", real)
        with index.transaction():
            index.upsert("kept", remote_kind="file")
    with Index(tmp_path / "index.db") as again:
        assert again.get("kept") is not None

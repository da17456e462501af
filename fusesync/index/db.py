"""Typed access to a target's index (SQLite in WAL mode): opening, migrating, queries.

Callers get rows and named errors, never SQL. The index is touched by one thread at a
time: whichever thread holds the target's lock and is running the engine's current step.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from fusesync.errors import FusesyncError, StateError
from fusesync.index.schema import MIGRATIONS, statements

Row = sqlite3.Row


class IndexUnusable(FusesyncError):
    """The index is unreadable, or newer than this fusesync."""


class NoSuchRow(FusesyncError):
    """A query that must find exactly one row found none."""


def _range_end(prefix: str) -> str:
    """The smallest string after every string that starts with `prefix + '/'`."""
    return prefix + "0"  # '0' is the character after '/'


def unwritable(exc: sqlite3.Error, where: Path) -> int | None:
    """The errno when `exc` comes of the file system holding `where` (the index's folder)
    refusing writes, not of the index itself: SQLite's "database or disk is full", its
    read-only errors, and its I/O errors while that file system has no room left (the
    WAL's shared memory file cannot grow then: SQLITE_IOERR_SHMSIZE). Else None."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return errno.ENOSPC
    if name.startswith("SQLITE_READONLY"):
        return errno.EROFS
    if name.startswith("SQLITE_IOERR"):
        try:
            room = os.statvfs(where)
        except OSError:
            return None
        if room.f_bavail * room.f_frsize < FULL_BELOW:
            return errno.ENOSPC
    return None


FULL_BELOW = 1 << 20
"""Free bytes under which a file system counts as full for an I/O error of SQLite's."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _writes(method: Callable[Concatenate[Index, _P], _T]) -> Callable[Concatenate[Index, _P], _T]:
    """An index write whose file system may refuse it: StateError then, in one line."""
    @functools.wraps(method)
    def wrapper(index: Index, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(index, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            code = unwritable(exc, index.path.parent)
            if code is None:
                raise
            raise index.refused(code) from exc

    return wrapper


class Index:
    """One target's index. Use as a context manager, or call close()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._undoing = False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self.conn = conn
            self._rollbacks = 0
            try:
                self._migrate()
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            code = unwritable(exc, path.parent)
            if code is not None:
                raise self.refused(code) from exc
            raise IndexUnusable(f"index {path} is unreadable: {exc}") from exc

    def _migrate(self) -> None:
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == len(MIGRATIONS):
            return
        if version > len(MIGRATIONS):
            raise IndexUnusable(
                f"index format {version} is newer than this fusesync understands "
                f"({len(MIGRATIONS)}): upgrade fusesync"
            )
        for number in range(version, len(MIGRATIONS)):
            step = MIGRATIONS[number]
            with self._transaction(conn):
                if isinstance(step, str):
                    for statement in statements(step):
                        conn.execute(statement)
                else:
                    import sqlite_utils  # only here: see Migration

                    step(sqlite_utils.Database(conn))
                conn.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        if self._undoing:  # inside `undone`: a savepoint of its own
            conn.execute("SAVEPOINT nested")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK TO nested")
                raise
            finally:
                conn.execute("RELEASE nested")
            return
        self._begin(conn)
        try:
            yield
            self._commit(conn)
        except BaseException:
            if conn.in_transaction:  # (a COMMIT refused, say, for want of room)
                conn.execute("ROLLBACK")
            raise

    def refused(self, code: int) -> StateError:
        """The error of a write the index's file system refused with `code`."""
        return StateError(f"cannot write index {self.path}: {os.strerror(code)}", code)

    @_writes
    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    @_writes
    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction: everything inside lands together or not at all."""
        try:
            with self._transaction(self.conn):
                yield
        except BaseException:
            self._rollbacks += 1  # what was read inside may be gone: see version()
            raise

    @contextmanager
    def undone(self) -> Iterator[None]:
        """Writes inside are seen inside, then undone: what a dry run plans from, leaving
        every row as it was. Hold it across no `await`: a write another task made meanwhile
        through this connection would be undone with them."""
        self._begin(self.conn)
        self._undoing = True
        try:
            yield
        finally:
            self._undoing = False
            self.conn.execute("ROLLBACK")
            self._rollbacks += 1  # what was read inside is gone: see version()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------

    def get(self, path: str) -> Row | None:
        row: Row | None = self.conn.execute(
            "SELECT * FROM paths WHERE path = ?", (path,)
        ).fetchone()
        return row

    def require(self, path: str) -> Row:
        row = self.get(path)
        if row is None:
            raise NoSuchRow(f"the index has no entry for '{path}'")
        return row

    def version(self) -> tuple[int, int, int]:
        """A value that changes whenever a row may have: a write or a rollback through
        this connection, or a commit through another. Only compare it for equality."""
        other: int = self.conn.execute("PRAGMA data_version").fetchone()[0]
        return (self.conn.total_changes, self._rollbacks, other)

    def children(self, parent: str, where: str = "1", columns: Sequence[str] = ()
                 ) -> dict[str, Row]:
        """The rows directly inside directory `parent` that match a fixed condition of the
        engine's, by name; only `columns` (and path) of each when given."""
        selected = ", ".join(("path", *columns)) if columns else "*"
        rows = self.conn.execute(
            f"SELECT {selected} FROM paths WHERE parent = ? AND ({where})", (parent,)
        )
        start = len(parent) + 1 if parent else 0  # path is parent + '/' + name
        return {row["path"][start:]: row for row in rows}

    def descendants(self, path: str) -> Iterator[Row]:
        """Every row strictly below directory `path`, in path order."""
        yield from self.conn.execute(
            "SELECT * FROM paths WHERE path > ? AND path < ? ORDER BY path",
            (path + "/", _range_end(path)),
        )

    def rows(self, where: str = "1", params: Sequence[Any] = (), columns: Sequence[str] = ()
             ) -> Iterator[Row]:
        """All rows matching a fixed condition of the engine's, in path order; only
        `columns` of each when given (a third of the time for a dozen of them)."""
        selected = ", ".join(columns) if columns else "*"
        yield from self.conn.execute(
            f"SELECT {selected} FROM paths WHERE {where} ORDER BY path", params
        )

    def few_rows(self, where: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows matching a condition a partial index covers (the journal's dirty
        rows, moved rows), in path order. Found through that index, then sorted: asked for
        path order, SQLite walks every row in path order instead (17 ms at 50,000 paths
        for none found)."""
        return sorted(self.conn.execute(f"SELECT * FROM paths WHERE {where}", params),
                      key=lambda row: row["path"])

    def count(self, where: str = "1", params: Sequence[Any] = ()) -> int:
        count: int = self.conn.execute(
            f"SELECT count(*) FROM paths WHERE {where}", params
        ).fetchone()[0]
        return count

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    # -- writing -------------------------------------------------------------------

    @_writes
    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @_writes
    def upsert(self, /, path: str, **columns: Any) -> None:
        """Set `columns` of `path`'s row, creating the row when missing."""
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
        parent = path.rpartition("/")[0]
        self.conn.execute(
            f"INSERT INTO paths(path, parent, {names}) VALUES (?, ?, {marks}) "
            f"ON CONFLICT(path) DO UPDATE SET {updates}",
            (path, parent, *columns.values()),
        )

    @_writes
    def upsert_many(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Like upsert for many rows; each row is (path, *values in `columns` order)."""
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
        self.conn.executemany(
            f"INSERT INTO paths(path, parent, {names}) VALUES (?, ?, {marks}) "
            f"ON CONFLICT(path) DO UPDATE SET {updates}",
            ((row[0], row[0].rpartition("/")[0], *row[1:]) for row in rows),
        )

    @_writes
    def update_where(self, /, where: str, params: Sequence[Any], **columns: Any) -> int:
        sets = ", ".join(f"{name} = ?" for name in columns)
        cursor = self.conn.execute(
            f"UPDATE paths SET {sets} WHERE {where}", (*columns.values(), *params)
        )
        return cursor.rowcount

    @_writes
    def delete(self, path: str) -> None:
        self.conn.execute("DELETE FROM paths WHERE path = ?", (path,))

    @_writes
    def prune(self) -> int:
        """Drop rows that say nothing any more: no base, no local, no remote, not dirty."""
        cursor = self.conn.execute(
            "DELETE FROM paths WHERE base_kind IS NULL AND local_kind IS NULL "
            "AND remote_kind IS NULL AND dirty = 0"
        )
        return cursor.rowcount


class Durable(Protocol):
    """What RowWriter asks of a local tree it records changes of (localfs.Tree)."""

    changed: int  # changes made to the tree so far, numbered in order
    durable: int  # how many of the first of them are known to be on disk

    def settle(self) -> None:
        """Make every change so far durable."""


HELD_ROWS = 4096
"""Rows a RowWriter holds for changes not yet durable before it makes them so itself."""


class RowWriter:
    """Confirmed row changes, written together: one transaction per batch, not per row.

    Transfers finish on worker threads by the thousand; a commit each would keep the
    event loop's thread waiting for the GIL. A run killed before a flush loses only
    bookkeeping: the next run finds the same content on both sides and records it.

    Given the `tree` the rows describe, a row is written only once every change made to
    the tree before it was put is on disk: a file's row never says it stands in place
    while a power cut could still undo its rename (a push would then take the missing
    file for one deleted here, and delete the remote's copy). Pull's batches make their
    files durable with a syncfs before renaming them, so each batch's syncfs also covers
    the renames of the batches before it: rows wait one batch, and cost no sync of
    their own until the run's last flush (`settle=True`).
    """

    def __init__(self, index: Index, size: int = 256, seconds: float = 1.0,
                 tree: Durable | None = None) -> None:
        self.index = index
        self.size = size
        self.seconds = seconds
        self.tree = tree
        self._pending: list[tuple[str, dict[str, Any], int]] = []  # path, columns, changed
        self._put = 0  # rows put since the last flush
        self._last = time.monotonic()

    def put(self, path: str, **columns: Any) -> None:
        self._pending.append((path, columns, self.tree.changed if self.tree else 0))
        self._put += 1
        if self._put >= self.size or time.monotonic() - self._last > self.seconds:
            self.flush()

    def flush(self, settle: bool = False) -> None:
        """Write the rows whose changes are durable (all of them without a tree); with
        `settle`, or when many wait, first make every change so far durable."""
        try:
            if self.tree is not None and (settle or len(self._pending) > HELD_ROWS) \
                    and self._pending and self._pending[-1][2] > self.tree.durable:
                self.tree.settle()
        finally:
            self._write()
        self._put = 0
        self._last = time.monotonic()

    def _write(self) -> None:
        ready = len(self._pending)
        if self.tree is not None:
            durable = self.tree.durable
            ready = next((i for i, (*_, changed) in enumerate(self._pending)
                          if changed > durable), ready)
        if ready:
            with self.index.transaction():
                # in order; one statement for each run of rows setting the same columns
                for names, run in itertools.groupby(self._pending[:ready],
                                                    lambda p: tuple(p[1])):
                    self.index.upsert_many(
                        names, [(path, *columns.values()) for path, columns, _ in run]
                    )
            del self._pending[:ready]

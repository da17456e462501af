"""The mount's side of the index: the change journal and the remote-only entries.

Every change made through the mount marks its row(s) with a journal number in `dirty`;
push reads only those rows and clears what it carried. A row is shown as remote-only when
the remote has it, nothing local stands at its path and it is not dirty (a dirty row
without a local file was deleted here). Used from the daemon's trio thread only; it never
touches the disk or the remote.
"""

from __future__ import annotations

import os

from fusesync.index import Index, Row
from fusesync.sync import base as columns
from fusesync.sync.model import Kind
from fusesync.sync.plan import plan_push

_UNDER = "path = ? OR (path > ? AND path < ?)"


def _under(path: str) -> tuple[str, str, str]:
    """Parameters for _UNDER: `path` itself and everything below it ('0' follows '/')."""
    return (path, path + "/", path + "0")


class Journal:
    """Dirty marks and remote-only rows of one target's index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        top = index.conn.execute("SELECT max(dirty) FROM paths").fetchone()[0]
        self.seq = int(top or 0) + 1  # the number new marks carry

    # -- the journal -----------------------------------------------------------------

    def mark(self, path: str) -> None:
        """`path` changed through the mount (created, written, removed, chmod...)."""
        self.index.upsert(path, dirty=self.seq)

    def mark_tree(self, path: str) -> None:
        """`path` and every row below it changed (a directory removed or replaced)."""
        with self.index.transaction():
            self.index.upsert(path, dirty=self.seq)
            self.index.update_where(_UNDER, _under(path), dirty=self.seq)

    def move_tree(self, src: str, dst: str) -> None:
        """A rename: every row at or below `src` now also stands at `dst`, both dirty.

        The rows at `src` keep their base and remote state, so push deletes the old
        objects; the rows at `dst` start empty and are filled in by push's detect step.
        """
        with self.index.transaction():
            moved = [src, *(row["path"] for row in self.index.descendants(src))]
            self.index.update_where(_UNDER, _under(src), dirty=self.seq)
            self.index.update_where(_UNDER, _under(dst), dirty=self.seq)
            self.index.upsert_many(
                ("dirty",), ((dst + path[len(src):], self.seq) for path in moved)
            )

    def exchange_trees(self, first: str, second: str) -> None:
        """RENAME_EXCHANGE: both trees changed, and each now stands at the other's path."""
        with self.index.transaction():
            firsts = [first, *(row["path"] for row in self.index.descendants(first))]
            seconds = [second, *(row["path"] for row in self.index.descendants(second))]
            self.index.update_where(_UNDER, _under(first), dirty=self.seq)
            self.index.update_where(_UNDER, _under(second), dirty=self.seq)
            self.index.upsert_many(("dirty",), (
                *((second + p[len(first):], self.seq) for p in firsts),
                *((first + p[len(second):], self.seq) for p in seconds),
            ))

    def reconcile(self) -> int:
        """After the scan that starts a mount: journal every row whose local side differs
        from its base (changes made while unmounted, or before a daemon was killed), so
        that a deleted file is not shown again as remote-only. Returns how many."""
        changed = [row["path"] for row in self.index.rows("dirty = 0")
                   if plan_push(row, remote_listed=False) is not None]
        with self.index.transaction():
            self.index.upsert_many(("dirty",), ((path, self.seq) for path in changed))
        return len(changed)

    def snapshot(self) -> int:
        """Start a push: marks made from now on carry a higher number than the result."""
        taken = self.seq
        self.seq += 1
        return taken

    def dirty_rows(self, upto: int) -> list[Row]:
        return list(self.index.rows("dirty != 0 AND dirty <= ?", (upto,)))

    def clear(self, path: str, upto: int) -> None:
        """Push carried `path` as of journal number `upto`; later marks stay."""
        self.index.update_where("path = ? AND dirty != 0 AND dirty <= ?", (path, upto), dirty=0)

    # -- remote-only entries -------------------------------------------------------

    def row(self, path: str) -> Row | None:
        return self.index.get(path)

    def remote_entry(self, path: str) -> Row | None:
        """The row to show at `path` when nothing local stands there, if any."""
        row = self.index.get(path)
        return row if row is not None and is_remote_entry(row) else None

    def remote_children(self, parent: str) -> dict[str, Row]:
        """Rows directly inside `parent` that show when nothing local has their name."""
        return {
            name: row for name, row in self.index.children(parent).items() if is_remote_entry(row)
        }

    def has_remote_below(self, path: str) -> bool:
        return bool(self.index.count(
            "path > ? AND path < ? AND remote_kind IS NOT NULL AND dirty = 0",
            (path + "/", path + "0"),
        ))

    def adopt_remote(self, path: str) -> None:
        """The user replaced or removed a remote-only entry: record the remote version as
        the base (as if it had been pulled), so push deletes or overwrites exactly it."""
        row = self.index.get(path)
        with self.index.transaction():
            if row is not None and row["remote_kind"] is not None and row["base_kind"] is None:
                self.index.upsert(path, **columns.remote_as_local_base(row))
            self.index.upsert(path, dirty=self.seq)

    def fetched(self, row: Row, st: os.stat_result, md5: str | None) -> None:
        """A remote-only entry now stands in the tree as the remote has it: its base."""
        path = row["path"]
        kind = Kind(row["remote_kind"])
        with self.index.transaction():
            self.index.upsert(path, **columns.local_from_stat(st, kind, md5, row["remote_target"]))
            fresh = self.index.require(path)
            self.index.upsert(path, **columns.local_base(fresh), **columns.remote_base(row))

    def evicted(self, path: str) -> None:
        """A clean fetched file was removed from the tree: remote-only again."""
        self.index.upsert(path, **columns.NO_LOCAL, **columns.NO_BASE, dirty=0)


def is_remote_entry(row: Row) -> bool:
    return row["remote_kind"] is not None and not row["dirty"]


"""The mount's side of the index: the change journal and the remote-only entries.

Every change made through the mount marks its row(s) with a journal number in `dirty`;
push reads only those rows and clears what it carried. A row is shown as remote-only when
the remote has it, nothing local stands at its path and it is not dirty (a dirty row
without a local file was deleted here). Used from the daemon's trio thread only; it never
touches the disk or the remote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fusesync.fs.attrs import REMOTE_ATTR_COLUMNS
from fusesync.index import Index, Row
from fusesync.sync import base as columns
from fusesync.sync.model import Kind
from fusesync.sync.plan import plan_push
from fusesync.sync.remote_scan import REMOTE_COLUMNS

_UNDER = "path = ? OR (path > ? AND path < ?)"
LISTINGS_KEPT = 4096  # directories whose remote-only rows are kept between opendirs
ENTRIES_KEPT = 65536  # paths whose remote_entry answer is kept


def _under(path: str) -> tuple[str, str, str]:
    """Parameters for _UNDER: `path` itself and everything below it ('0' follows '/')."""
    return (path, path + "/", path + "0")


class Journal:
    """Dirty marks and remote-only rows of one target's index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        top = index.conn.execute("SELECT max(dirty) FROM paths").fetchone()[0]
        self.seq = int(top or 0) + 1  # the number new marks carry
        # remote_children's and remote_entry's answers, kept while the index is unchanged
        self._listed: dict[str, Mapping[str, Row]] = {}
        self._entries: dict[str, Row | None] = {}
        self._kept_at: tuple[int, int, int] | None = None

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
        """A rename: every row at or below `src` now also stands at `dst`.

        What is local moved in the tree: the rows at `src` keep their base and remote
        state, so push deletes the old objects, and the rows at `dst` start empty and
        dirty, filled in by push's detect step. A remote-only entry moves without a byte
        downloaded: its row at `dst` shows the same remote state and points at the old
        object (remote_from) until push copies it over on the server; the old row stays
        dirty, hidden, with no base, so nothing deletes its object before that copy.
        """
        with self.index.transaction():
            rows = [r for r in (self.index.get(src), *self.index.descendants(src)) if r]
            moving = [r for r in rows if is_remote_only(r)]
            remote_only = {r["path"] for r in moving}
            local = dict.fromkeys(p for p in (src, *(r["path"] for r in rows))
                                  if p not in remote_only)
            self.index.update_where(_UNDER, _under(src), dirty=self.seq)
            self.index.update_where(_UNDER, _under(dst), dirty=self.seq)
            self.index.upsert_many(
                ("dirty",), ((dst + path[len(src):], self.seq) for path in local)
            )
            for row in moving:
                self._move_remote_only(row, dst + row["path"][len(src):])

    def _move_remote_only(self, row: Row, to: str) -> None:
        path = row["path"]
        self.index.upsert(to, **columns.NO_BASE, **columns.NO_LOCAL,
                          **{name: row[name] for name in REMOTE_COLUMNS},
                          remote_from=row["remote_from"] or path, dirty=0)
        if row["remote_from"]:  # moved before and never pushed: nothing stands at `path`
            self.index.delete(path)
        else:
            self.index.upsert(path, **columns.NO_BASE, dirty=self.seq)

    def moves(self) -> list[Row]:
        """Rows whose object still sits at an old path (remote_from), parents first."""
        return self.index.few_rows("remote_from IS NOT NULL")

    def moved(self, row: Row, etag: str | None) -> None:
        """Push copied `row`'s object from its old path and deleted it there."""
        with self.index.transaction():
            self.index.upsert(row["path"], remote_etag=etag, remote_from=None)
            source = self.index.get(row["remote_from"])
            if source is not None and source["dirty"] and source["local_kind"] is None:
                self.index.upsert(source["path"], **columns.NO_REMOTE, dirty=0)

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
        return self.index.few_rows("dirty != 0 AND dirty <= ?", (upto,))

    def clear(self, path: str, upto: int) -> None:
        """Push carried `path` as of journal number `upto`; later marks stay."""
        self.index.update_where("path = ? AND dirty != 0 AND dirty <= ?", (path, upto), dirty=0)

    # -- remote-only entries -------------------------------------------------------

    def row(self, path: str) -> Row | None:
        return self.index.get(path)

    def remote_entry(self, path: str) -> Row | None:
        """The row to show at `path` when nothing local stands there, if any. Asked for
        every remote-only directory a listing passes ('.' and '..' too): kept like
        remote_children's answers."""
        self._keep_while_unchanged()
        if path in self._entries:
            return self._entries[path]
        row = self.index.get(path)
        if row is not None and not is_remote_entry(row):
            row = None
        if len(self._entries) >= ENTRIES_KEPT:
            self._entries.clear()
        self._entries[path] = row
        return row

    def _keep_while_unchanged(self) -> None:
        """Forget every kept answer once any row may have changed (Index.version)."""
        version = self.index.version()
        if version != self._kept_at:
            self._listed.clear()
            self._entries.clear()
            self._kept_at = version

    def remote_children(self, parent: str) -> Mapping[str, Row]:
        """Rows directly inside `parent` that show when nothing local has their name, with
        only what a listing needs of them (Attr.from_remote's columns).

        Every opendir asks, so the answer is kept until any row changes: a `find` over a
        pulled tree then costs no query, and the same Row objects come back each time."""
        self._keep_while_unchanged()
        rows = self._listed.get(parent)
        if rows is None:
            if len(self._listed) >= LISTINGS_KEPT:
                self._listed.clear()
            rows = self.index.children(parent, REMOTE_ENTRY, REMOTE_ATTR_COLUMNS)
            self._listed[parent] = rows
        return rows

    def has_remote_below(self, path: str) -> bool:
        return bool(self.index.count(
            f"path > ? AND path < ? AND {REMOTE_ENTRY}", (path + "/", path + "0")
        ))

    def adopt_remote(self, path: str) -> None:
        """The user replaced or removed a remote-only entry: record the remote version as
        the base (as if it had been pulled), so push deletes or overwrites exactly it.
        For a moved entry that is the object at its old path; nothing stands at `path`."""
        with self.index.transaction():
            self._adopt(path)

    def _adopt(self, path: str) -> None:
        row = self.index.get(path)
        if row is not None and row["remote_from"]:
            self.index.upsert(path, **columns.NO_REMOTE, remote_from=None, dirty=self.seq)
            path = row["remote_from"]
            row = self.index.get(path)
        if row is not None and row["remote_kind"] is not None and row["base_kind"] is None:
            self.index.upsert(path, **columns.remote_as_local_base(row))
        self.index.upsert(path, dirty=self.seq)

    def fetched(self, row: Row, st: os.stat_result, md5: str | None,
                changed: bool = False) -> None:
        """A remote-only entry now stands in the tree as the remote has it: its base.
        A moved one is new at its path (push uploads it) and gone at its old one; one
        `changed` while it streamed in has the remote version as its base, and is dirty."""
        path = row["path"]
        kind = Kind(row["remote_kind"])
        if row["remote_from"]:
            with self.index.transaction():
                local = columns.local_from_stat(st, kind, md5, row["remote_target"])
                self.index.upsert(path, **local, **columns.NO_BASE, **columns.NO_REMOTE,
                                  remote_from=None, dirty=self.seq)
                self._adopt(row["remote_from"])
            return
        # Changed while it streamed in: `st` may be of a write that came after the file was
        # hashed, so no MD5 is recorded and push hashes it again (it would send an MD5 the
        # file does not have, refused at every push). One statement, as pull records a file
        # it landed (it was written, read back and written again).
        local = columns.local_from_stat(st, kind, None if changed else md5, row["remote_target"])
        if changed:
            self.index.upsert(path, **local, **columns.remote_as_local_base(row), dirty=self.seq)
        else:
            self.index.upsert(path, **local, **columns.local_base(local),
                              **columns.remote_base(row))

    def evicted(self, path: str) -> None:
        """A clean fetched file was removed from the tree: remote-only again."""
        self.index.upsert(path, **columns.NO_LOCAL, **columns.NO_BASE, dirty=0)


REMOTE_ENTRY = "remote_kind IS NOT NULL AND dirty = 0"  # is_remote_entry, in SQL


def is_remote_entry(row: Row) -> bool:
    return row["remote_kind"] is not None and not row["dirty"]


def is_remote_only(row: Row) -> bool:
    """Shown from the index alone: nothing local was seen at its path."""
    return is_remote_entry(row) and row["local_kind"] is None


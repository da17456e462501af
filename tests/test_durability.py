"""An index row never says a file stands in place before the rename that put it there is
on disk. Were it otherwise, a power cut could undo the rename and keep the row: the next
push would take the missing file for one deleted here and delete the remote's copy (or
upload the old version the undone rename left, over the newer one).

No test can cut the power, so these watch the order instead: each rename, removal, sync
of the file system or of a folder, and each row written to the index, in the order they
happen; every row recording a path changed by the run must come after a sync that
covers that change."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from syncenv import Cluster, tree_of

from fusesync.index import Index, RowWriter
from fusesync.sync import localfs
from fusesync.sync.localfs import Tree

Event = tuple[str, str]  # (what, path): placed / removed / syncfs / fsync-dir / row


class Recorder:
    """Every change of the tree's names, every sync, every row written, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = root.resolve()
        self.events: list[Event] = []
        place, remove = localfs._place, Tree.remove
        syncfs, fsync, upsert_many = localfs._sync_file_system, os.fsync, Index.upsert_many

        def placed(dfd: int, tmp: str, name: str, expect: Any, rel: str) -> None:
            place(dfd, tmp, name, expect, rel)
            folder = rel.rpartition("/")[0]
            self.events.append(("placed", f"{folder}/{name}".lstrip("/")))

        def removed(tree: Tree, relpath: str, expect: Any) -> bool:
            done = remove(tree, relpath, expect)
            if done:
                self.events.append(("removed", relpath))
            return done

        def synced_fs(fd: int) -> None:
            syncfs(fd)
            self.events.append(("syncfs", ""))

        def synced(fd: int) -> None:
            fsync(fd)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                where = Path(os.readlink(f"/proc/self/fd/{fd}"))
                if where.is_relative_to(self.root):
                    self.events.append(("fsync-dir", where.relative_to(self.root).as_posix()))

        def rows(index: Index, names: Any, values: Any) -> None:
            values = list(values)
            upsert_many(index, names, values)
            self.events.extend(("row", value[0]) for value in values)

        monkeypatch.setattr(localfs, "_place", placed)
        monkeypatch.setattr(Tree, "remove", removed)
        monkeypatch.setattr(localfs, "_sync_file_system", synced_fs)
        monkeypatch.setattr(os, "fsync", synced)
        monkeypatch.setattr(Index, "upsert_many", rows)

    def unsettled_rows(self) -> Iterator[str]:
        """Rows written for a path changed earlier with no sync covering it in between."""
        changed: dict[str, int] = {}  # path -> position of its latest change
        for position, (what, path) in enumerate(self.events):
            if what in ("placed", "removed"):
                changed[path] = position
            elif what == "row" and path in changed:
                folder = path.rpartition("/")[0] or "."
                if not any(w == "syncfs" or (w == "fsync-dir" and p == folder)
                           for w, p in self.events[changed[path]:position]):
                    yield path

    def count(self, what: str) -> int:
        return sum(1 for w, _ in self.events if w == what)


@pytest.mark.parametrize("elsewhere", ["quiet", "busy"])
def test_pull_records_a_file_only_once_its_rename_is_durable(
    one: Cluster, two: Cluster, monkeypatch: pytest.MonkeyPatch, elsewhere: str
) -> None:
    """Small files in several batches, a large file, a symlink, an empty folder; then a
    file replaced and one deleted remotely. Quiet: the syncfs each batch makes before its
    renames covers the batches before it, and one last syncfs the rest. Busy (much data
    other programs left unwritten): files are fsynced one by one, and the folders they
    were renamed in are fsynced before their rows are written (once 50 changes wait,
    here, and at the end)."""
    for i in range(300):
        (one.home / f"d{i % 7}" / f"f{i}.txt").parent.mkdir(exist_ok=True)
        (one.home / f"d{i % 7}" / f"f{i}.txt").write_text(f"small {i}\n")
    (one.home / "big.bin").write_bytes(os.urandom(3 << 20))
    (one.home / "link").symlink_to("d0/f0.txt")
    (one.home / "empty").mkdir()
    one.push()
    monkeypatch.setattr(localfs, "DIRTY_ELSEWHERE", -1 if elsewhere == "busy" else 1 << 62)
    monkeypatch.setattr(localfs, "UNSETTLED_CHANGES", 50)  # busy: settled along the way
    recorder = Recorder(monkeypatch, two.home)
    two.pull()
    assert tree_of(two.home) == tree_of(one.home)
    assert recorder.count("placed") >= 302 and recorder.count("row") >= 302
    assert list(recorder.unsettled_rows()) == []
    if elsewhere == "busy":
        assert recorder.count("syncfs") == 0
        assert recorder.count("fsync-dir") > 9  # more than the run's last settle (9 folders)
    else:
        assert recorder.count("fsync-dir") == 0

    (one.home / "d1" / "f1.txt").write_text("replaced on one\n")
    (one.home / "d2" / "f2.txt").unlink()
    one.push()
    recorder.events.clear()
    two.pull()
    assert tree_of(two.home) == tree_of(one.home)
    assert ("placed", "d1/f1.txt") in recorder.events
    assert ("removed", "d2/f2.txt") in recorder.events
    assert list(recorder.unsettled_rows()) == []


class Changes:
    """A tree's durability as RowWriter sees it, moved by hand."""

    def __init__(self) -> None:
        self.changed = 0
        self.durable = 0
        self.settled = 0

    def settle(self) -> None:
        self.settled += 1
        self.durable = self.changed


def test_rows_wait_for_their_changes_and_many_waiting_are_settled(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.db")
    changes = Changes()
    rows = RowWriter(index, size=2, tree=changes)

    def written() -> list[str]:
        return [row["path"] for row in index.rows("1")]

    rows.put("before-any-change", local_kind="file")
    changes.changed = 1  # a file renamed into place ...
    rows.put("renamed", local_kind="file")  # ... and its row
    assert written() == ["before-any-change"] and changes.settled == 0
    changes.changed = 2
    changes.durable = 1  # the next batch's syncfs covered the first rename
    rows.put("renamed-later", local_kind="file")
    rows.flush()
    assert written() == ["before-any-change", "renamed"]
    rows.flush(settle=True)  # the end of a run: everything is made durable, then written
    assert written() == ["before-any-change", "renamed", "renamed-later"]
    assert changes.settled == 1

    many = RowWriter(index, size=256, tree=changes)
    for i in range(5000):  # renames no batch sync covers (busy: files fsynced one by one)
        changes.changed += 1
        many.put(f"many/{i}", local_kind="file")
    assert changes.settled >= 2  # did not hold them all: settled when too many waited
    assert len(written()) > 3 + 4000

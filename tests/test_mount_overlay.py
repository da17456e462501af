"""The overlay core without a mount: union view, journal marks, lazy fetch, POSIX errors."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio

from fusesync.errors import FusesyncError, RemoteError
from fusesync.fs.adapter import READDIR_BY_INODE
from fusesync.fs.attrs import Attr, Caller, Changes
from fusesync.fs.fetch import Fetcher
from fusesync.fs.journal import Journal
from fusesync.fs.mountsync import AbsentPaths
from fusesync.fs.nodes import ROOT_INODE
from fusesync.fs.overlay import Overlay
from fusesync.fs.view import KEEP_LOCAL_ATTRS
from fusesync.index import Index
from fusesync.remote.base import Attrs, Head
from fusesync.sync import base as columns
from fusesync.sync.localfs import RENAME_EXCHANGE, RENAME_NOREPLACE, TMP_MARK, Tree
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.scan import scan_tree

PREFIX = "sync/tester/t/"
ME = Caller(os.getuid(), os.getgid(), 0o022)


class FakeRemote:
    """Objects in memory; a download can be held half-way until `release` is set."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.hold_after: int | None = None
        self.release = trio.Event()
        self.fail = False
        self.downloads = 0

    async def download_file(self, key: str, dest: BinaryIO, *, if_match: str | None = None,
                            size: int | None = None,
                            progress: Any = None) -> Head:
        self.downloads += 1
        if self.fail:
            raise RemoteError("cannot reach the endpoint: refused")
        body = self.objects[key]
        half = len(body) if self.hold_after is None else self.hold_after
        dest.seek(0)
        dest.write(body[:half])
        if progress:
            progress(half)
        if half < len(body):
            await self.release.wait()
            dest.seek(half)
            dest.write(body[half:])
            if progress:
                progress(len(body) - half)
        dest.truncate(len(body))
        return Head(key, "etag", len(body), 0.0, Attrs())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    path.mkdir()
    (path / "local.txt").write_text("local")
    (path / "docs").mkdir()
    (path / "docs" / "readme").write_text("read me")
    return path


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    with Index(tmp_path / "state" / "index.db") as index:
        yield index


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote()


def add_remote(index: Index, remote: FakeRemote, path: str, body: bytes | None = None,
               mode: int = 0o640, mtime: float = 1_600_000_000.5) -> None:
    """A row as a pull while mounted leaves it: remote known, nothing local."""
    if body is None:
        index.upsert(path, remote_kind="dir", remote_mode=stat.S_IFDIR | 0o750, remote_size=0)
        return
    md5 = hashlib.md5(body).hexdigest()
    remote.objects[PREFIX + path] = body
    index.upsert(path, remote_kind="file", remote_etag=md5, remote_md5=md5,
                 remote_size=len(body), remote_mode=stat.S_IFREG | mode, remote_mtime=mtime)


@pytest.fixture
async def overlay(root: Path, index: Index, remote: FakeRemote) -> AsyncIterator[Overlay]:
    with Tree(root) as tree:
        scan_tree(tree.fd, index, PathMatcher(()))
    add_remote(index, remote, "remote.bin", b"0123456789" * 1000)
    add_remote(index, remote, "far")
    add_remote(index, remote, "far/away.txt", b"far away")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    journal = Journal(index)
    async with trio.open_nursery() as nursery:
        fetcher = Fetcher(remote, PREFIX, journal, nursery)  # type: ignore[arg-type]
        fetcher.small = 0  # every fetch streams, as large ones do, so halves can be held
        overlay = Overlay(fd, journal, fetcher)
        yield overlay
        overlay.close()
        nursery.cancel_scope.cancel()
    os.close(fd)


def names(overlay: Overlay, ino: int = ROOT_INODE) -> dict[str, int]:
    dh = overlay.opendir(ino)
    found = {}
    for name, node, attr, _ in overlay.readdir(dh, 0):
        if node is None:
            assert name in (".", "..")  # listed, but the kernel takes no reference
            continue
        overlay.remember(node)
        found[name] = attr.mode
    overlay.releasedir(dh)
    return found


async def fetched(overlay: Overlay) -> None:
    """Wait until every fetch in flight has ended."""
    assert overlay.fetcher is not None
    while overlay.fetcher.active:
        await next(iter(overlay.fetcher.active.values())).done.wait()


async def read_fetched(overlay: Overlay, ino: int) -> bytes:
    """Open a file, read it (up to 100 bytes) and close it, then wait for its fetch."""
    fh = await overlay.open(ino, os.O_RDONLY)
    body = await overlay.read(fh, 0, 100)
    overlay.release(fh)
    await fetched(overlay)
    return body


def dirty(index: Index) -> set[str]:
    return {row["path"] for row in index.rows("dirty != 0")}


async def test_union_shows_local_and_remote_only_entries(overlay: Overlay, index: Index) -> None:
    listing = names(overlay)
    assert set(listing) == {"local.txt", "docs", "remote.bin", "far"}
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    assert attr.size == 10_000 and stat.S_IMODE(attr.mode) == 0o640
    assert attr.mtime_ns == 1_600_000_000_500_000_000
    far = overlay.lookup(ROOT_INODE, "far")
    assert stat.S_ISDIR(far.mode)
    assert set(names(overlay, far.ino)) == {"away.txt"}
    with pytest.raises(FileNotFoundError):
        overlay.lookup(ROOT_INODE, "nothing")
    assert not dirty(index)


async def test_open_fetches_into_the_tree(overlay: Overlay, root: Path, index: Index) -> None:
    far = overlay.lookup(ROOT_INODE, "far")
    away = overlay.lookup(far.ino, "away.txt")
    assert await read_fetched(overlay, away.ino) == b"far away"
    assert (root / "far" / "away.txt").read_bytes() == b"far away"
    assert stat.S_IMODE((root / "far" / "away.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "far").stat().st_mode) == 0o750
    row = index.require("far/away.txt")
    assert row["base_kind"] == "file" and row["local_kind"] == "file" and not row["dirty"]
    assert not [p for p in os.listdir(root / "far") if TMP_MARK in p]


async def test_a_fetched_entry_is_on_disk_before_its_row_says_it_is_here(
    overlay: Overlay, root: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder a fetch makes and the file it renames into place are synced (an fsync
    of the folder holding each) before their rows record them as local: else a power cut
    could leave a row saying the file stands here with nothing there, and the next push
    would delete the remote's copy of a file it takes for one deleted here."""
    from fusesync.fs import fetch

    events: list[tuple[str, str]] = []
    fsync, mkdir, rename, upsert = os.fsync, os.mkdir, fetch.renameat2, Index.upsert

    def where(dir_fd: int, name: str = "") -> str:
        folder = Path(os.readlink(f"/proc/self/fd/{dir_fd}")).relative_to(root.resolve())
        return (folder / name).as_posix()

    def synced(fd: int) -> None:
        fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync-dir", where(fd)))

    def made(name: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        mkdir(name, mode, dir_fd=dir_fd)
        if dir_fd is not None:
            events.append(("placed", where(dir_fd, name)))

    def renamed(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> None:
        rename(src_fd, src, dst_fd, dst, flags)
        events.append(("placed", where(dst_fd, dst)))

    def recorded(index: Index, path: str, **values: Any) -> None:
        upsert(index, path, **values)
        if values.get("local_kind"):
            events.append(("row", path))

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "mkdir", made)
    monkeypatch.setattr(fetch, "renameat2", renamed)
    monkeypatch.setattr(Index, "upsert", recorded)
    far = overlay.lookup(ROOT_INODE, "far")
    away = overlay.lookup(far.ino, "away.txt")
    assert await read_fetched(overlay, away.ino) == b"far away"
    assert [e for e in events if e[0] == "row"] == [("row", "far"), ("row", "far/away.txt")]
    for path in ("far", "far/away.txt"):
        placed, row = events.index(("placed", path)), events.index(("row", path))
        folder = path.rpartition("/")[0] or "."
        assert ("fsync-dir", folder) in events[placed:row], events


async def test_fsync_of_a_folder_reaches_the_underlying_folder(
    overlay: Overlay, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync of a folder through the mount (how SQLite, editors and mail tools make a
    new or renamed file durable) fsyncs the folder in the underlying tree; a remote-only
    folder has nothing local to sync."""
    from fusesync.fs.adapter import Adapter

    synced: list[Path] = []
    fsync, fdatasync = os.fsync, os.fdatasync

    def recorded(real: Any) -> Any:
        def call(fd: int) -> None:
            real(fd)
            synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return call

    monkeypatch.setattr(os, "fsync", recorded(fsync))
    monkeypatch.setattr(os, "fdatasync", recorded(fdatasync))
    adapter = Adapter(overlay)
    docs = overlay.lookup(ROOT_INODE, "docs")
    if READDIR_BY_INODE:  # the kernel names the folder by its inode (no opendir)
        handles = {"docs": docs.ino, "root": ROOT_INODE}
    else:
        handles = {"docs": overlay.opendir(docs.ino), "root": overlay.opendir(ROOT_INODE)}
    await adapter.fsyncdir(handles["docs"], False)
    await adapter.fsyncdir(handles["root"], True)
    assert synced == [(root / "docs").resolve(), root.resolve()]
    far = overlay.lookup(ROOT_INODE, "far")  # remote-only
    await adapter.fsyncdir(far.ino if READDIR_BY_INODE else overlay.opendir(far.ino), False)
    assert len(synced) == 2 and not (root / "far").exists()


async def test_read_waits_only_for_its_range(overlay: Overlay, remote: FakeRemote,
                                             root: Path) -> None:
    remote.hold_after = 4000
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    fh = await overlay.open(attr.ino, os.O_RDONLY)
    assert await overlay.read(fh, 0, 100) == b"0123456789" * 10  # before the rest arrives
    assert not (root / "remote.bin").exists()  # not in place until complete
    with trio.move_on_after(0.2) as late:
        await overlay.read(fh, 9000, 100)
    assert late.cancelled_caught
    remote.release.set()
    assert await overlay.read(fh, 9990, 100) == b"0123456789"
    overlay.release(fh)
    await fetched(overlay)
    assert (root / "remote.bin").read_bytes() == b"0123456789" * 1000


async def test_failed_fetch_is_eio_and_leaves_nothing(overlay: Overlay, remote: FakeRemote,
                                                      root: Path) -> None:
    remote.fail = True
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    fh = await overlay.open(attr.ino, os.O_RDONLY)
    with pytest.raises(FusesyncError) as caught:
        await overlay.read(fh, 0, 10)
    assert caught.value.errno == errno.EIO
    overlay.release(fh)
    assert sorted(os.listdir(root)) == ["docs", "local.txt"]
    remote.fail = False  # the next open tries again
    fh = await overlay.open(attr.ino, os.O_RDWR)
    assert await overlay.read(fh, 0, 4) == b"0123"
    overlay.release(fh)


async def test_changes_land_in_the_tree_and_the_journal(overlay: Overlay, root: Path,
                                                        index: Index) -> None:
    fh, attr = overlay.create(ROOT_INODE, "new.txt", 0o666, os.O_WRONLY, ME)
    assert stat.S_IMODE(attr.mode) == 0o644
    assert overlay.write(fh, 0, b"hello") == 5
    overlay.release(fh)
    docs = overlay.lookup(ROOT_INODE, "docs")
    overlay.mkdir(docs.ino, "sub", 0o777, ME)
    overlay.symlink(ROOT_INODE, "ln", "docs/readme", ME)
    await overlay.setattr(overlay.lookup(ROOT_INODE, "local.txt").ino, Changes(mode=0o600), None)
    await overlay.unlink(docs.ino, "readme")
    assert (root / "new.txt").read_text() == "hello"
    assert (root / "docs" / "sub").is_dir() and os.readlink(root / "ln") == "docs/readme"
    assert stat.S_IMODE((root / "local.txt").stat().st_mode) == 0o600
    assert not (root / "docs" / "readme").exists()
    assert dirty(index) == {"new.txt", "docs/sub", "ln", "local.txt", "docs/readme"}
    assert "readme" not in names(overlay, docs.ino)


async def test_deleting_a_remote_only_file_hides_it(overlay: Overlay, index: Index) -> None:
    await overlay.unlink(ROOT_INODE, "remote.bin")
    assert "remote.bin" not in names(overlay)
    row = index.require("remote.bin")
    assert row["dirty"] and row["base_etag"] == row["remote_etag"]  # push deletes exactly it
    with pytest.raises(OSError) as caught:
        overlay.rmdir(ROOT_INODE, "far")
    assert caught.value.errno == errno.ENOTEMPTY


async def test_directory_rename_moves_remote_only_rows_without_a_download(
    overlay: Overlay, remote: FakeRemote, root: Path, index: Index
) -> None:
    await overlay.rename(ROOT_INODE, "far", ROOT_INODE, "near", 0)
    assert remote.downloads == 0 and not (root / "near").exists()
    assert {"far", "far/away.txt"} <= dirty(index)  # old rows: hidden until push copies
    assert index.require("near/away.txt")["remote_from"] == "far/away.txt"
    assert index.require("near")["remote_from"] == "far"
    assert "far" not in names(overlay) and "near" in names(overlay)
    near = overlay.lookup(ROOT_INODE, "near")
    assert set(names(overlay, near.ino)) == {"away.txt"}
    away = overlay.lookup(near.ino, "away.txt")
    assert away.size == 8 and stat.S_IMODE(away.mode) == 0o640
    await overlay.rename(near.ino, "away.txt", ROOT_INODE, "moved.txt", 0)  # moved again
    assert index.get("near/away.txt") is None
    assert index.require("moved.txt")["remote_from"] == "far/away.txt"
    moved_ino = overlay.lookup(ROOT_INODE, "moved.txt").ino
    assert await read_fetched(overlay, moved_ino) == b"far away"  # from the object's old key
    moved, old = index.require("moved.txt"), index.require("far/away.txt")
    assert moved["local_kind"] == "file" and moved["base_kind"] is None and moved["dirty"]
    assert old["base_etag"] == old["remote_etag"] and old["dirty"]  # push deletes it


async def test_a_folder_renamed_while_a_file_in_it_streams_in(
    overlay: Overlay, remote: FakeRemote, root: Path, index: Index
) -> None:
    """The fetch's temporary file moves with its folder, so the file lands at the new
    path. The rename waits for it, then moves a local file: push uploads it at the new
    path and deletes the old object. (Moved as a remote-only entry instead, the new row
    would wait for a copy of the old object, which push deletes, and the old row would
    claim the fetched file.)"""
    remote.hold_after = 3
    far = overlay.lookup(ROOT_INODE, "far")
    away = overlay.lookup(far.ino, "away.txt")
    fh = await overlay.open(away.ino, os.O_RDONLY)
    assert await overlay.read(fh, 0, 3) == b"far"  # streaming: the rest is held back
    async with trio.open_nursery() as nursery:
        nursery.start_soon(overlay.rename, ROOT_INODE, "far", ROOT_INODE, "near", 0)
        await trio.sleep(0.05)
        remote.release.set()
    assert await overlay.read(fh, 0, 100) == b"far away"
    overlay.release(fh)
    await fetched(overlay)
    assert (root / "near" / "away.txt").read_bytes() == b"far away"
    assert not (root / "far").exists()
    old, new = index.require("far/away.txt"), index.require("near/away.txt")
    assert old["dirty"] and old["base_etag"] == old["remote_etag"]  # push deletes exactly it
    assert new["dirty"] and new["remote_from"] is None  # push uploads the local file
    near = overlay.lookup(ROOT_INODE, "near")
    assert set(names(overlay, near.ino)) == {"away.txt"}


async def test_writable_open_of_remote_only_file_streams(
    overlay: Overlay, remote: FakeRemote, root: Path, index: Index
) -> None:
    remote.hold_after = 4000
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    fh = await overlay.open(attr.ino, os.O_RDWR)  # returns with most of it still to come
    assert overlay.write(fh, 8000, b"ABCD") == 4  # where the download has not been yet
    assert overlay.write(fh, 1, b"xy") == 2  # and where it has
    assert overlay.write(fh, 10_000, b"tail") == 4  # past the object's end
    assert await overlay.read(fh, 0, 4) == b"0xy3"
    assert await overlay.read(fh, 8000, 4) == b"ABCD"  # no wait: written here
    assert overlay.getattr(attr.ino).size == 10_004
    assert "remote.bin" not in dirty(index)  # journaled once the file is in place
    remote.release.set()
    await overlay.fsync(fh, False)  # waits for the file to be in place
    overlay.release(fh)
    expected = bytearray(b"0123456789" * 1000)
    expected[1:3], expected[8000:8004] = b"xy", b"ABCD"
    assert (root / "remote.bin").read_bytes() == bytes(expected) + b"tail"
    assert "remote.bin" in dirty(index) and remote.downloads == 1
    row = index.require("remote.bin")
    assert row["base_etag"] == row["remote_etag"]  # push uploads over exactly that version
    assert row["base_md5"] == row["remote_md5"] != row["local_md5"]


async def test_rename_flags_and_errors(overlay: Overlay, root: Path) -> None:
    with pytest.raises(FileExistsError):
        await overlay.rename(ROOT_INODE, "local.txt", ROOT_INODE, "remote.bin", RENAME_NOREPLACE)
    with pytest.raises(OSError) as caught:
        await overlay.rename(ROOT_INODE, "local.txt", ROOT_INODE, "docs", 0)
    assert caught.value.errno == errno.EISDIR
    docs = overlay.lookup(ROOT_INODE, "docs")
    await overlay.rename(docs.ino, "readme", ROOT_INODE, "local.txt", RENAME_EXCHANGE)
    assert (root / "local.txt").read_text() == "read me"
    assert (root / "docs" / "readme").read_text() == "local"
    await overlay.rename(ROOT_INODE, "local.txt", ROOT_INODE, "remote.bin", 0)
    assert (root / "remote.bin").read_text() == "read me"
    assert names(overlay).keys() == {"docs", "remote.bin", "far"}


async def test_truncate_of_remote_only_file_needs_no_fetch(
    overlay: Overlay, remote: FakeRemote, root: Path, index: Index
) -> None:
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    after = await overlay.setattr(attr.ino, Changes(size=0), None)
    assert after.size == 0 and remote.downloads == 0
    assert (root / "remote.bin").read_bytes() == b""
    row = index.require("remote.bin")
    assert row["dirty"] and row["base_etag"] == row["remote_etag"]


async def test_xattrs_user_namespace_only(overlay: Overlay) -> None:
    attr = overlay.lookup(ROOT_INODE, "local.txt")
    await overlay.setxattr(attr.ino, "user.colour", b"blue")
    assert overlay.getxattr(attr.ino, "user.colour") == b"blue"
    assert overlay.listxattr(attr.ino) == ["user.colour"]
    with pytest.raises(OSError) as caught:
        await overlay.setxattr(attr.ino, "trusted.x", b"1")
    assert caught.value.errno == errno.EOPNOTSUPP
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as caught:  # unsupported, not merely absent
            overlay.getxattr(attr.ino, name)
        assert caught.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as caught:
            overlay.removexattr(attr.ino, name)
        assert caught.value.errno == errno.EOPNOTSUPP
    overlay.removexattr(attr.ino, "user.colour")
    with pytest.raises(OSError) as caught:
        overlay.getxattr(attr.ino, "user.colour")
    assert caught.value.errno == errno.ENODATA


def test_journal_keeps_marks_made_during_a_push(index: Index) -> None:
    journal = Journal(index)
    journal.mark("a")
    journal.mark("b")
    upto = journal.snapshot()
    assert {row["path"] for row in journal.dirty_rows(upto)} == {"a", "b"}
    journal.mark("a")  # written again while the push uploads it
    journal.clear("a", upto)
    journal.clear("b", upto)
    assert dirty(index) == {"a"}
    assert Journal(index).seq > upto  # a new daemon numbers after the old marks


def test_journal_moves_whole_trees(index: Index) -> None:
    for path in ("d", "d/x", "d/sub", "d/sub/y", "dz"):
        index.upsert(path, local_kind="file")
    journal = Journal(index)
    journal.move_tree("d", "e")
    assert dirty(index) == {"d", "d/x", "d/sub", "d/sub/y", "e", "e/x", "e/sub", "e/sub/y"}
    assert index.require("e/sub/y")["parent"] == "e/sub"


def test_reconcile_journals_what_changed_while_unmounted(root: Path, index: Index) -> None:
    with Tree(root) as tree:
        scan_tree(tree.fd, index, PathMatcher(()))
    for row in list(index.rows()):  # as if everything had been pushed
        index.upsert(row["path"], **columns.local_base(row), base_etag="e")
    (root / "local.txt").unlink()
    (root / "docs" / "readme").write_text("changed")
    with Tree(root) as tree:
        scan_tree(tree.fd, index, PathMatcher(()))
    assert Journal(index).reconcile() == 2
    assert dirty(index) == {"local.txt", "docs/readme"}


def test_pull_knows_paths_below_a_missing_directory_are_absent(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "file").write_text("x")
    with Tree(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)) as tree:
        absent = AbsentPaths(tree)
        assert not absent("here") and not absent("here/file")
        assert absent("here/gone") and absent("gone")
        (tmp_path / "gone").mkdir()  # answered from the memo: the pull makes no directory
        assert absent("gone/below") and absent("gone/below/deeper")
        assert not absent("here")


def listing(overlay: Overlay, ino: int = ROOT_INODE) -> dict[str, Attr]:
    dh = overlay.opendir(ino)
    found = {}
    for name, node, attr, _ in overlay.readdir(dh, 0):
        if node is not None:
            overlay.remember(node)
            found[name] = attr
    overlay.releasedir(dh)
    return found


async def test_listings_follow_every_change_of_the_index(
    overlay: Overlay, index: Index, remote: FakeRemote
) -> None:
    """Remote-only rows and their attributes are kept between opendirs (a find over a
    pulled tree queries nothing), but only while no row changes, here or elsewhere."""
    first = listing(overlay)
    assert first["remote.bin"].size == 10_000
    assert listing(overlay) == first
    add_remote(index, remote, "new.txt", b"new")  # as a pull inside the daemon writes
    add_remote(index, remote, "remote.bin", b"shorter", mode=0o600)
    now = listing(overlay)
    assert now["new.txt"].size == 3
    assert now["remote.bin"].size == 7 and stat.S_IMODE(now["remote.bin"].mode) == 0o600
    assert now["remote.bin"].ino == first["remote.bin"].ino
    with Index(index.path) as other:  # a commit through another connection
        other.upsert("other.txt", remote_kind="file", remote_size=5,
                     remote_mode=stat.S_IFREG | 0o644)
    assert listing(overlay)["other.txt"].size == 5
    overlay.journal.mark("new.txt")  # removed through the mount: hidden at once
    assert "new.txt" not in listing(overlay)
    assert listing(overlay, overlay.lookup(ROOT_INODE, "far").ino)["away.txt"].size == 8


def test_kept_remote_rows_never_outlive_a_change_or_a_rollback(
    index: Index, remote: FakeRemote
) -> None:
    journal = Journal(index)
    add_remote(index, remote, "a.txt", b"one")
    entry = journal.remote_entry("a.txt")
    assert entry is not None and entry["remote_size"] == 3
    assert journal.remote_entry("a.txt") is entry  # kept: no query
    add_remote(index, remote, "a.txt", b"three")
    changed = journal.remote_entry("a.txt")
    assert changed is not None and changed["remote_size"] == 5
    with pytest.raises(RuntimeError), index.transaction():
        index.upsert("a.txt", remote_size=99)
        inside = journal.remote_entry("a.txt")  # what the transaction sees, then undone
        assert inside is not None and inside["remote_size"] == 99
        raise RuntimeError
    after = journal.remote_entry("a.txt")
    assert after is not None and after["remote_size"] == 5
    assert journal.remote_children("")["a.txt"]["remote_size"] == 5
    journal.mark("a.txt")  # changed through the mount: no longer shown from the index
    assert journal.remote_entry("a.txt") is None and "a.txt" not in journal.remote_children("")


async def test_dot_entries_carry_their_inode_and_type(overlay: Overlay) -> None:
    far = overlay.lookup(ROOT_INODE, "far")  # remote-only: nothing to stat for '.'
    dh = overlay.opendir(far.ino)
    dots = {name: attr for name, node, attr, _ in overlay.readdir(dh, 0) if node is None}
    overlay.releasedir(dh)
    assert dots["."].ino == far.ino and dots[".."].ino == ROOT_INODE
    assert all(stat.S_ISDIR(attr.mode) for attr in dots.values())


async def test_listings_reuse_local_attributes_only_until_a_change(
    overlay: Overlay, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert listing(overlay)["local.txt"].size == 5
    (root / "local.txt").write_text("changed beside the mount")  # not expected; bounded
    assert listing(overlay)["local.txt"].size == 5  # kept
    with overlay.changing():  # as every request that may change attributes is wrapped
        assert listing(overlay)["local.txt"].size == 24  # nothing kept while it runs
        (root / "local.txt").write_text("through the mount")
    assert listing(overlay)["local.txt"].size == 17
    (root / "local.txt").write_text("beside it, again")
    overlay.journal.mark("local.txt")  # any index row changing forgets them too
    assert listing(overlay)["local.txt"].size == 16
    (root / "local.txt").write_text("and once more")
    later = time.monotonic() + KEEP_LOCAL_ATTRS
    monkeypatch.setattr("fusesync.fs.view.time.monotonic", lambda: later)
    assert listing(overlay)["local.txt"].size == 13  # kept for KEEP_LOCAL_ATTRS at most
    (root / "beside").write_text("")  # names are kept as long
    assert "beside" not in listing(overlay)
    with overlay.changing():
        (root / "through").write_text("")
    assert {"beside", "through"} <= set(listing(overlay))


def _listed_from(overlay: Overlay, ino: int, start: int, count: int) -> list[tuple[str, int]]:
    """Up to `count` entries of a listing asked by inode, from offset `start`, as the
    kernel asks them with no opendir (pyfuse3's READDIR_BY_INODE): (name, offset)."""
    got = []
    for name, node, _attr, offset in overlay.readdir(overlay.listing(ino, start), start):
        if node is not None:
            overlay.discard(node)
        got.append((name, offset))
        if len(got) == count:
            break
    return got


async def test_a_listing_by_inode_lists_each_name_that_stays_once(overlay: Overlay) -> None:
    """With no opendir, the kernel resumes a reader's listing at an offset it was given
    before, from whatever snapshot the daemon then holds: another reader's, taken after
    names came and went, or a new one. Offsets by name keep every name that stayed listed
    exactly once; by position, a name gone before the resume point shifted the rest (one
    skipped) and a name come before it repeated one."""
    many = overlay.lookup(ROOT_INODE, "docs").ino
    for i in range(40):
        fh, _ = overlay.create(many, f"f{i:02d}", 0o644, os.O_WRONLY, ME)
        overlay.release(fh)
    first = _listed_from(overlay, many, 0, 15)
    listed_before = {name for name, _ in first}
    gone = sorted(listed_before - {".", ".."})[:3]  # among those the reader has seen
    for name in gone:
        await overlay.unlink(many, name)
    for i in range(5):
        fh, _ = overlay.create(many, f"new{i}", 0o644, os.O_WRONLY, ME)
        overlay.release(fh)
    _listed_from(overlay, many, 0, 1000)  # another reader: a new snapshot, read to its end
    overlay.listed(many)
    rest = _listed_from(overlay, many, first[-1][1], 1000)
    names_seen = [name for name, _ in first + rest]
    stayed = {".", "..", "readme", *(f"f{i:02d}" for i in range(40))} - set(gone)
    assert len(names_seen) == len(set(names_seen)), "a name listed twice"
    assert stayed <= set(names_seen), f"skipped: {sorted(stayed - set(names_seen))}"
    offsets = [offset for _, offset in first + rest]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


async def test_a_write_just_after_a_fetch_is_hashed_leaves_no_stale_md5(
    overlay: Overlay, root: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write through the mount that lands after the fetched file was hashed but before
    it is recorded: the index must not keep the MD5 of the bytes before the write (push
    would send it as the file's Content-MD5, refused as changed at every push). Found by
    the mount's state machine (an append to a file just pulled)."""
    from fusesync.fs import fetch as fetch_module

    hashed = fetch_module._seal

    def hashed_then_written(fetch: Any, row: Any, *rest: Any) -> str:
        md5 = hashed(fetch, row, *rest)
        fetch.write(b"late", fetch.size)  # as a write through the mount would
        return md5

    monkeypatch.setattr(fetch_module, "_seal", hashed_then_written)
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    fh = await overlay.open(attr.ino, os.O_RDONLY)
    await fetched(overlay)
    overlay.release(fh)
    on_disk = hashlib.md5((root / "remote.bin").read_bytes()).hexdigest()
    row = index.require("remote.bin")
    assert row["local_md5"] in (None, on_disk)
    assert row["dirty"]  # and push looks at it


async def test_reads_and_writes_go_on_while_a_fetched_file_is_hashed(
    overlay: Overlay, root: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing a large fetched file takes a while (64 MiB: ~0.1 s here). A read or a write
    that came meanwhile used to wait for the lock the hash held, in trio's thread, so every
    request to the mount stood still until the hash was done."""
    import threading
    import types

    from fusesync.fs import fetch as fetch_module

    hashing, go_on, hashed = threading.Event(), threading.Event(), threading.Event()

    class HeldDigest:
        def __init__(self) -> None:
            self._md5 = hashlib.md5()

        def update(self, data: bytes) -> None:
            hashing.set()
            go_on.wait(10)  # never forever, whatever the code under test does
            self._md5.update(data)

        def hexdigest(self) -> str:
            hashed.set()
            return self._md5.hexdigest()

    monkeypatch.setattr(fetch_module, "hashlib", types.SimpleNamespace(md5=HeldDigest))
    attr = overlay.lookup(ROOT_INODE, "remote.bin")
    reader = await overlay.open(attr.ino, os.O_RDONLY)
    while not hashing.is_set():
        await trio.sleep(0.01)
    writer = await overlay.open(attr.ino, os.O_RDWR)
    assert await overlay.read(reader, 0, 10) == b"0123456789"
    assert overlay.write(writer, 10_000, b"more") == 4
    assert not hashed.is_set(), "the read and the write waited for the hash"
    go_on.set()
    await overlay.fsync(writer, False)
    overlay.release(reader)
    overlay.release(writer)
    assert (root / "remote.bin").read_bytes() == b"0123456789" * 1000 + b"more"
    row = index.require("remote.bin")
    assert row["dirty"] and row["local_md5"] in (None, hashlib.md5(b"0123456789" * 1000
                                                                  + b"more").hexdigest())


async def test_closing_a_file_opened_for_reading_asks_the_daemon_nothing(
    overlay: Overlay,
) -> None:
    """A descriptor opened for reading has no write whose error a close could report:
    the kernel is told to send no flush for it (FOPEN_NOFLUSH), one round trip less per
    file a `cat` reads. One opened for writing still gets its flush."""
    from fusesync.fs.adapter import NOFLUSH, Adapter

    assert NOFLUSH, "the installed pyfuse3 lacks the patches of packaging/pyfuse3"
    adapter = Adapter(overlay)
    ino = overlay.lookup(ROOT_INODE, "local.txt").ino
    for flags, noflush in ((os.O_RDONLY, True), (os.O_RDWR, False), (os.O_WRONLY, False)):
        info = await adapter.open(ino, flags, None)  # type: ignore[arg-type]
        assert info.noflush is noflush, flags
        await adapter.release(info.fh)

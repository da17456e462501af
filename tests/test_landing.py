"""Small files landed in batches (`Tree.land`) and the batcher that feeds it: each file
lands whole or not at all, one file's trouble never stops the others, nothing is written
through a symlink, and no temporary file outlives its batch."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from fusesync.sync.batches import Batcher
from fusesync.sync.localfs import TMP_MARK, Landing, LocalChanged, Tree, UnsafePath, version


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARK in p.name]


def test_a_batch_lands_every_file_with_its_attributes(tmp_path: Path) -> None:
    batch = [
        Landing(f"d{i % 3}/sub/f{i}", f"body {i}".encode(), 0o640, 1_600_000_000_000_000_000 + i,
                None, expect=None)
        for i in range(30)
    ]
    with Tree(tmp_path) as tree:
        tree.land(batch)
    for i, item in enumerate(batch):
        path = tmp_path / f"d{i % 3}" / "sub" / f"f{i}"
        assert isinstance(item.result, os.stat_result)
        assert path.read_bytes() == f"body {i}".encode()
        st = path.stat()
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 1_600_000_000_000_000_000 + i)
        assert item.result.st_ino == st.st_ino
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o777])
def test_landed_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    """A file is created with its final mode where the umask allows it, privately and
    chmodded where not: either way it ends with the remote's mode, special bits dropped."""
    modes = [0o644, 0o600, 0o755, 0o777, 0o444, 0o000, 0o4755, 0o2750, 0o1777]
    batch = [Landing(f"m{mode:o}", b"x", mode, None, None, expect=None) for mode in modes]
    old = os.umask(umask)
    try:
        with Tree(tmp_path) as tree:
            tree.land(batch)
    finally:
        os.umask(old)
    landed = {p.name: p.stat().st_mode & 0o7777 for p in tmp_path.iterdir()}
    assert landed == {f"m{mode:o}": mode & 0o777 for mode in modes}
    assert all(isinstance(item.result, os.stat_result) and item.result.st_mode & 0o7777
               == mode & 0o777 for item, mode in zip(batch, modes, strict=True))


def test_landed_modes_hold_under_a_default_acl(tmp_path: Path) -> None:
    """A folder's default ACL, not the umask, masks the mode a file is created with
    (here user::rw-, group::---, other::---): the landed file still gets the remote's."""
    entries = [(0x01, 0o6), (0x04, 0o0), (0x20, 0o0)]  # ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                          for tag, perm in entries)
    try:
        os.setxattr(tmp_path, "system.posix_acl_default", acl)
    except OSError as exc:  # a file system without ACLs has nothing to test
        pytest.skip(f"no POSIX ACLs here: {exc}")
    batch = [Landing("shared.txt", b"x", 0o644, None, None, expect=None)]
    with Tree(tmp_path) as tree:
        tree.land(batch)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o7777 == 0o644
    assert isinstance(batch[0].result, os.stat_result)
    assert batch[0].result.st_mode & 0o7777 == 0o644


def test_one_file_changed_locally_is_kept_and_the_rest_land(tmp_path: Path) -> None:
    (tmp_path / "mine").write_text("edited here after the scan")
    scanned = version((tmp_path / "mine").stat())
    (tmp_path / "mine").write_text("edited again: the pull must not overwrite this")
    (tmp_path / "new-here").write_text("appeared during the pull")
    batch = [
        Landing("a", b"remote a", 0o644, None, None, expect=None),
        Landing("mine", b"remote mine", 0o644, None, None, expect=scanned),
        Landing("new-here", b"remote new", 0o644, None, None, expect=None),
        Landing("b", b"remote b", 0o4755, None, None, expect=None),
    ]
    with Tree(tmp_path) as tree:
        tree.land(batch)
    assert isinstance(batch[1].result, LocalChanged)
    assert isinstance(batch[2].result, LocalChanged)
    assert (tmp_path / "mine").read_text() == "edited again: the pull must not overwrite this"
    assert (tmp_path / "new-here").read_text() == "appeared during the pull"
    assert (tmp_path / "a").read_bytes() == b"remote a"
    assert (tmp_path / "b").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert not leftovers(tmp_path)


def test_nothing_is_written_through_a_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "tree"
    root.mkdir()
    (root / "outputs").symlink_to(outside)
    batch = [
        Landing("outputs/x", b"must not escape", 0o644, None, None, expect=None),
        Landing("fine", b"ok", 0o644, None, None, expect=None),
    ]
    with Tree(root) as tree:
        tree.land(batch)
    assert isinstance(batch[0].result, UnsafePath)
    assert list(outside.iterdir()) == []
    assert (root / "fine").read_bytes() == b"ok"
    assert not leftovers(root)


def test_a_conflict_copy_lands_beside_the_local_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("local")
    batch = [Landing("notes.txt", b"remote", 0o600, None, None, expect=None,
                     final_name="notes.conflict-host-20260101-000000.txt")]
    with Tree(tmp_path) as tree:
        tree.land(batch)
    assert (tmp_path / "notes.txt").read_text() == "local"
    assert (tmp_path / "notes.conflict-host-20260101-000000.txt").read_bytes() == b"remote"


async def test_batcher_groups_what_arrives_while_a_batch_is_handled() -> None:
    sizes: list[int] = []
    handled: list[int] = []

    def handle(batch: Sequence[int]) -> None:
        sizes.append(len(batch))
        handled.extend(batch)

    async with Batcher.running(handle, limit=16) as batcher, trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(batcher.submit, i)
    assert sorted(handled) == list(range(100))
    assert max(sizes) == 16 and len(sizes) < 100  # one hop per batch, not per item


async def test_a_failing_batch_fails_its_submitters_and_the_block() -> None:
    def handle(batch: Sequence[int]) -> None:
        raise OSError(5, "disk on fire")

    with pytest.raises(BaseExceptionGroup) as caught:
        async with Batcher.running(handle, limit=4) as batcher, trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(batcher.submit, i)
    assert caught.group_contains(OSError, match="disk on fire")


@pytest.mark.parametrize("renameat2", ["kernel", "missing"])
def test_a_new_path_is_never_taken_from_a_file_made_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: str
) -> None:
    """A path that must still be absent is placed with RENAME_NOREPLACE: the kernel
    refuses if a file was made there after any check the pull could make. Where the C
    library or the file system has no such rename, the path is checked just before."""
    from fusesync.sync import localfs

    if renameat2 == "missing":
        def refused(*args: object) -> None:
            raise OSError(errno.EINVAL, "not on this file system")

        monkeypatch.setattr(localfs, "renameat2", refused)
    checked: list[str] = []
    check = localfs._check_expected

    def counted(dfd: int, name: str, expect: object, rel: str) -> None:
        checked.append(rel)
        check(dfd, name, expect, rel)  # type: ignore[arg-type]

    monkeypatch.setattr(localfs, "_check_expected", counted)
    (tmp_path / "taken").write_text("made here while the pull ran")
    batch = [Landing("taken", b"remote", 0o644, None, None, expect=None),
             Landing("free", b"remote free", 0o644, None, None, expect=None)]
    with Tree(tmp_path) as tree:
        tree.land(batch)
        with pytest.raises(LocalChanged):
            tree.write_symlink("taken", "elsewhere", expect=None)
    assert isinstance(batch[0].result, LocalChanged)
    assert (tmp_path / "taken").read_text() == "made here while the pull ran"
    assert (tmp_path / "free").read_bytes() == b"remote free"
    assert checked == ([] if renameat2 == "kernel" else ["taken", "free", "taken"])
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("elsewhere", ["quiet", "busy"])
def test_a_batch_never_waits_for_data_other_programs_left_unwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, elsewhere: str
) -> None:
    """One syncfs makes a batch durable, but writes back every dirty page of the file
    system first: beside much data another program left unwritten (here 32 MiB written
    without a sync, counted from the real /proc/meminfo against a threshold lowered to
    1 MiB), each file of the batch is fsynced instead, and no syncfs is made."""
    from fusesync.sync import localfs

    syncfs: list[int] = []
    fsynced: list[int] = []
    real_syncfs, real_fsync = localfs._sync_file_system, os.fsync

    def counted_syncfs(fd: int) -> None:
        syncfs.append(fd)
        real_syncfs(fd)

    def counted_fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(localfs, "_sync_file_system", counted_syncfs)
    monkeypatch.setattr(os, "fsync", counted_fsync)
    if elsewhere == "busy":
        monkeypatch.setattr(localfs, "DIRTY_ELSEWHERE", 1 << 20)
        with open(tmp_path / "job-output.bin", "wb") as f:  # another program's, unsynced
            for _ in range(32):
                f.write(os.urandom(1 << 20))
    else:
        monkeypatch.setattr(localfs, "DIRTY_ELSEWHERE", 1 << 62)
    batch = [Landing(f"d/f{i}", f"body {i}".encode(), 0o644, None, None, expect=None)
             for i in range(20)]
    (tmp_path / "tree").mkdir()
    with Tree(tmp_path / "tree") as tree:
        tree.land(batch)
    for i, item in enumerate(batch):
        assert isinstance(item.result, os.stat_result)
        assert (tmp_path / "tree" / "d" / f"f{i}").read_bytes() == f"body {i}".encode()
    if elsewhere == "busy":
        assert (len(fsynced), syncfs) == (len(batch), [])
    else:
        assert (fsynced, len(syncfs)) == ([], 1)
    assert not leftovers(tmp_path)


def test_a_folder_gone_since_the_scan_is_not_made_again(tmp_path: Path) -> None:
    """A file the pull replaces was seen in its folder; the folder was renamed (or
    removed) since. The file is kept as changed locally, and no empty folder of the old
    name is left behind, whether it lands in a batch, whole, or as a symlink. A new file
    still gets the folders it needs."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x").write_text("seen by the scan")
    (tmp_path / "old" / "l").symlink_to("x")
    seen, link = version((tmp_path / "old" / "x").stat()), version((tmp_path / "old" / "l").lstat())
    (tmp_path / "old").rename(tmp_path / "new")
    batch = [Landing("old/x", b"remote x", 0o644, None, None, expect=seen),
             Landing("fresh/deep/y", b"remote y", 0o644, None, None, expect=None)]
    with Tree(tmp_path) as tree:
        tree.land(batch)
        with pytest.raises(LocalChanged):
            tree.write_file("old/x", lambda f: f.write(b"remote x"), 0o644, None, None, seen)
        with pytest.raises(LocalChanged):
            tree.write_symlink("old/l", "elsewhere", expect=link)
    assert isinstance(batch[0].result, LocalChanged)
    assert not (tmp_path / "old").exists()
    assert (tmp_path / "new" / "x").read_text() == "seen by the scan"
    assert (tmp_path / "fresh" / "deep" / "y").read_bytes() == b"remote y"
    assert not leftovers(tmp_path)

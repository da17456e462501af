"""POSIX behaviour through a real mount: the errno values and edge cases a home needs."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mounting import (
    Mount,
    assert_clean_log,
    mounted,
)
from syncenv import Cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def mount(two: Cluster) -> Iterator[Mount]:
    with mounted(two.home, two.env) as live:
        yield live
    assert_clean_log(two)


def test_posix_basics(mount: Mount) -> None:
    home = mount.path
    (home / "a").write_text("a")
    (home / "b").write_text("b")
    os.rename(home / "a", home / "b")  # over an existing file
    assert (home / "b").read_text() == "a" and not (home / "a").exists()
    (home / "b").write_text("longer text")
    (home / "b").write_text("a")  # O_TRUNC
    assert (home / "b").read_text() == "a"
    (home / "d").mkdir()
    (home / "d" / "f").write_text("x")
    with pytest.raises(OSError) as caught:
        os.rmdir(home / "d")
    assert caught.value.errno == errno.ENOTEMPTY
    os.symlink("d/f", home / "ln")
    assert os.readlink(home / "ln") == "d/f" and (home / "ln").read_text() == "x"
    with (home / "log").open("a") as f:
        f.write("one\n")
    with (home / "log").open("a") as f:
        f.write("two\n")
    assert (home / "log").read_text() == "one\ntwo\n"
    with (home / "log").open("r+") as f:
        f.truncate(3)
    assert (home / "log").read_text() == "one"
    os.truncate(home / "log", 10)
    assert (home / "log").read_bytes() == b"one" + b"\0" * 7
    os.chmod(home / "log", 0o600)
    assert stat.S_IMODE(os.stat(home / "log").st_mode) == 0o600
    os.utime(home / "log", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    assert os.stat(home / "log").st_mtime_ns == 1_500_000_000_000_000_000
    st = os.statvfs(home)
    assert st.f_bsize > 0 and st.f_blocks > 0
    os.setxattr(home / "log", "user.colour", b"blue")
    assert os.getxattr(home / "log", "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(home / "log")
    with pytest.raises(OSError) as caught:
        os.link(home / "log", home / "hard")
    assert caught.value.errno == errno.EPERM
    (home / "d" / "f").unlink()
    os.rmdir(home / "d")
    assert sorted(os.listdir(home)) == ["b", "ln", "log"]


def test_posix_rename_flags_sparse_mmap_and_large_dirs(mount: Mount) -> None:
    import ctypes
    import mmap

    home = mount.path
    libc = ctypes.CDLL(None, use_errno=True)

    def renameat2(src: Path, dst: Path, flags: int) -> int:
        result = libc.renameat2(-100, bytes(src), -100, bytes(dst), flags)
        return 0 if result == 0 else ctypes.get_errno()

    (home / "x").write_text("x")
    (home / "y").write_text("y")
    assert renameat2(home / "x", home / "y", 1) == errno.EEXIST  # RENAME_NOREPLACE
    assert renameat2(home / "x", home / "y", 2) == 0  # RENAME_EXCHANGE
    assert (home / "x").read_text() == "y" and (home / "y").read_text() == "x"
    assert renameat2(home / "x", home / "z", 2) == errno.ENOENT
    with (home / "sparse").open("wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    assert os.stat(home / "sparse").st_size == (1 << 20) + 3
    with (home / "sparse").open("rb") as f:
        assert f.read(4) == b"\0\0\0\0"
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
            assert view[-3:] == b"end"
    (home / "many").mkdir()
    names = {f"entry-{i:05d}" for i in range(3000)}
    for name in names:
        (home / "many" / name).touch()
    assert set(os.listdir(home / "many")) == names
    (home / "many" / "entry-00000").unlink()
    assert len(os.listdir(home / "many")) == 2999


def test_listings_after_changes_show_the_changes(mount: Mount) -> None:
    """A listing hands the kernel every entry's attributes, which replace what it had:
    those the daemon keeps between listings must never be older than a change made
    through the mount (a write, a chmod, a utime, a truncate, a rename over)."""
    home = mount.path
    (home / "d").mkdir()
    for name in ("a", "b", "c", "e"):
        (home / "d" / name).write_text("x")

    def listed() -> dict[str, os.stat_result]:
        return {e.name: e.stat(follow_symlinks=False) for e in os.scandir(home / "d")}

    assert {name: st.st_size for name, st in listed().items()} == dict.fromkeys("abce", 1)
    for _ in range(2):  # listed twice: the second listing may reuse what the first kept
        assert len(listed()) == 4
    with (home / "d" / "a").open("a") as f:
        f.write("more")
    os.chmod(home / "d" / "b", 0o600)
    os.utime(home / "d" / "c", ns=(1_500_000_000_000_000_000,) * 2)
    os.truncate(home / "d" / "e", 7)
    after = listed()
    assert after["a"].st_size == 5 and stat.S_IMODE(after["b"].st_mode) == 0o600
    assert after["c"].st_mtime_ns == 1_500_000_000_000_000_000 and after["e"].st_size == 7
    (home / "d" / "new").write_text("longer content")
    os.rename(home / "d" / "new", home / "d" / "a")
    assert listed()["a"].st_size == 14 and os.stat(home / "d" / "a").st_size == 14
    with (home / "d" / "e").open("r+b", buffering=0) as f:
        f.write(b"12345678")  # journaled once per handle: later writes change no row
        assert listed()["e"].st_size == 8
        f.write(b"9")
        assert listed()["e"].st_size == 9 and os.fstat(f.fileno()).st_size == 9
    (home / "d" / "f").write_text("")  # names: kept between listings too
    (home / "d" / "g").mkdir()
    assert {"f", "g"} <= set(listed())
    (home / "d" / "f").unlink()
    (home / "d" / "g").rmdir()
    os.rename(home / "d" / "e", home / "d" / "h")
    assert sorted(listed()) == ["a", "b", "c", "h"]


def test_fsync_of_a_folder_makes_a_rename_durable(mount: Mount) -> None:
    """The safe-save of editors and SQLite: write a temporary file, fsync it, rename it
    over the old one, fsync the folder. Every step answers through the mount."""
    home = mount.path
    (home / "notes").mkdir()
    (home / "notes" / "todo.txt").write_text("old")
    fd = os.open(home / "notes" / ".todo.txt.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"new")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(home / "notes" / ".todo.txt.tmp", home / "notes" / "todo.txt")
    for folder in (home / "notes", home):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
            os.fdatasync(dfd)
        finally:
            os.close(dfd)
    assert (home / "notes" / "todo.txt").read_text() == "new"
    assert os.listdir(home / "notes") == ["todo.txt"]


def test_a_sqlite_database_in_wal_mode_works_through_the_mount(mount: Mount) -> None:
    """Programs keep their state in SQLite databases under the home (browsers, notebooks,
    shell histories): WAL mode shares its index through a memory-mapped file and locks
    with fcntl. Written, closed, opened again by another connection while a first one
    holds it: every row is there, and the check of the file says it is whole."""
    import sqlite3

    path = mount.path / ".local" / "state.db"
    path.parent.mkdir()
    first = sqlite3.connect(path)
    first.execute("PRAGMA journal_mode=WAL")
    first.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)")
    with first:
        first.executemany("INSERT INTO t VALUES (?, ?)", ((i, "x" * i) for i in range(500)))
    second = sqlite3.connect(path)
    assert second.execute("SELECT count(*), sum(length(body)) FROM t").fetchone() == (
        500, sum(range(500)))
    with second:
        second.execute("DELETE FROM t WHERE n % 2 = 0")
    assert first.execute("SELECT count(*) FROM t").fetchone() == (250,)
    first.close()
    second.close()
    again = sqlite3.connect(path)
    assert again.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert again.execute("SELECT count(*) FROM t").fetchone() == (250,)
    again.close()


def test_a_git_repository_works_through_the_mount(mount: Mount) -> None:
    """Job scripts often live in a git repository under the home: init, commits, gc (packs
    written, renamed, loose objects removed), fsck, and a local clone (git tries hard
    links, refused here with EPERM, and copies instead)."""
    import subprocess

    repo = mount.path / "proj"
    repo.mkdir()
    env = {**os.environ, "HOME": str(mount.path), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "tester", "GIT_AUTHOR_EMAIL": "tester@example.org",
           "GIT_COMMITTER_NAME": "tester", "GIT_COMMITTER_EMAIL": "tester@example.org"}

    def git(*args: str, cwd: Path = repo) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    git("init", "-q")
    for i in range(20):
        (repo / f"job{i}.sh").write_text(f"echo {i}\n")
    git("add", ".")
    git("commit", "-qm", "first")
    (repo / "job1.sh").write_text("echo changed\n")
    git("commit", "-qam", "second")
    git("gc", "-q")
    git("fsck", "--strict")
    assert len(git("log", "--oneline").splitlines()) == 2
    git("clone", "-q", str(repo), str(mount.path / "copy"), cwd=mount.path)
    assert (mount.path / "copy" / "job1.sh").read_text() == "echo changed\n"

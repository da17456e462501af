"""The mount for real: union view, lazy fetch, journal, unmount, lifecycle (real FUSE, S3)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mounting import Mount, forward_in, is_mounted, mounted, wait_until
from syncenv import Cluster, tree_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def one(tmp_path: Path, fusesync_env) -> Cluster:
    return Cluster(tmp_path / "one", fusesync_env.server, fusesync_env.bucket)


@pytest.fixture
def two(tmp_path: Path, fusesync_env) -> Cluster:
    return Cluster(tmp_path / "two", fusesync_env.server, fusesync_env.bucket)


@pytest.fixture
def mount(two: Cluster) -> Iterator[Mount]:
    with mounted(two.home, two.env) as live:
        yield live
    assert_clean_log(two)


def assert_clean_log(cluster: Cluster, allowed: tuple[str, ...] = ()) -> None:
    """No warning or error in the daemon's log beyond those the test provoked."""
    log = cluster.state / "default" / "mount.log"
    bad = [line for line in log.read_text().splitlines()
           if (" ERROR " in line or " WARNING " in line or "Traceback" in line)
           and not any(a in line for a in allowed)]
    assert not bad, "\n".join(bad)


def dirty_paths(cluster: Cluster) -> set[str]:
    import sqlite3

    db = sqlite3.connect(cluster.state / "default" / "index.db")
    try:
        return {row[0] for row in db.execute("SELECT path FROM paths WHERE dirty != 0")}
    finally:
        db.close()


def populate_remote(one: Cluster) -> None:
    """Cluster one pushes a small home; cluster two pulls nothing yet."""
    (one.home / "docs").mkdir()
    (one.home / "docs" / "notes.txt").write_text("remote notes\n")
    (one.home / "big.bin").write_bytes(os.urandom(3 << 20))
    (one.home / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (one.home / "script.sh").chmod(0o750)
    os.utime(one.home / "script.sh", (1_600_000_000, 1_600_000_000))
    (one.home / "link").symlink_to("docs/notes.txt")
    one.push()


def mounted_run(cluster: Cluster, verb: str, status: int = 0, **args: object) -> str:
    """push, pull or status inside the daemon, as the CLI forwards them while mounted."""
    code, output = forward_in(cluster.env, verb, **args)
    assert code == status, output
    return output


def remote_only_state(two: Cluster) -> None:
    """Two learns the remote into its index without fetching: a pull while mounted."""
    with mounted(two.home, two.env):
        mounted_run(two, "pull")


# -- the union view -----------------------------------------------------------------------


def test_mount_over_a_non_empty_dir_hides_nothing(two: Cluster) -> None:
    (two.home / "mine.txt").write_text("mine")
    (two.home / "sub").mkdir()
    (two.home / "sub" / "deep.txt").write_text("deep")
    before = tree_of(two.home)
    with mounted(two.home, two.env):
        assert tree_of(two.home) == before
        assert (two.home / "sub" / "deep.txt").read_text() == "deep"
    assert not is_mounted(two.home)
    assert tree_of(two.home) == before
    assert_clean_log(two)


def test_remote_only_entries_show_real_attributes_before_any_download(
    one: Cluster, two: Cluster
) -> None:
    populate_remote(one)
    (two.home / "mine.txt").write_text("mine")
    with mounted(two.home, two.env):
        output = mounted_run(two, "pull")
        assert "0 downloaded" in output
        names = sorted(os.listdir(two.home))
        assert names == ["big.bin", "docs", "link", "mine.txt", "script.sh"]
        st = os.stat(two.home / "script.sh")
        assert stat.S_IMODE(st.st_mode) == 0o750
        assert st.st_mtime == 1_600_000_000
        assert os.stat(two.home / "big.bin").st_size == 3 << 20
        assert os.readlink(two.home / "link") == "docs/notes.txt"
        assert os.listdir(two.home / "docs") == ["notes.txt"]
    # nothing was fetched: the plain directory holds only what was local
    assert sorted(os.listdir(two.home)) == ["mine.txt"]
    assert_clean_log(two)


def test_first_open_fetches_into_the_directory(one: Cluster, two: Cluster) -> None:
    populate_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env):
        assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
        with (two.home / "big.bin").open("rb") as f:
            assert f.read(100) == (one.home / "big.bin").read_bytes()[:100]
        assert (two.home / "big.bin").read_bytes() == (one.home / "big.bin").read_bytes()
        assert not dirty_paths(two)
    assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
    assert (two.home / "big.bin").read_bytes() == (one.home / "big.bin").read_bytes()
    assert not (two.home / "script.sh").exists()  # never opened: still remote-only
    assert_clean_log(two)


def test_changes_through_the_mount_are_journaled_and_pushed(one: Cluster, two: Cluster) -> None:
    populate_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env):
        (two.home / "new.txt").write_text("new")
        (two.home / "docs" / "notes.txt").write_text("changed here\n")
        (two.home / "script.sh").unlink()
        (two.home / "dir").mkdir()
        os.rename(two.home / "docs", two.home / "papers")
        assert {"new.txt", "docs/notes.txt", "script.sh", "dir", "docs",
                "papers", "papers/notes.txt"} <= dirty_paths(two)
        output = mounted_run(two, "push")
        assert not dirty_paths(two)
        assert " 0 conflicts" in output
    one.pull()
    assert (one.home / "new.txt").read_text() == "new"
    assert (one.home / "papers" / "notes.txt").read_text() == "changed here\n"
    assert not (one.home / "script.sh").exists()
    assert not (one.home / "docs").exists()
    assert (one.home / "dir").is_dir()
    assert_clean_log(two)


def test_unmount_leaves_a_plain_complete_directory(one: Cluster, two: Cluster) -> None:
    populate_remote(one)
    remote_only_state(two)
    live = Mount(two.home, two.env).start()
    try:
        (two.home / "written.txt").write_text("written")
        assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
        result = two.cli("unmount")
        assert result.exit_code == 0, result.output
        assert "unmounted" in result.output
        assert live.wait_exit() == 0
    finally:
        live.stop()
    assert not is_mounted(two.home)
    assert (two.home / "written.txt").read_text() == "written"
    assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
    assert_clean_log(two)


# -- POSIX basics -------------------------------------------------------------------------


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


# -- lifecycle ----------------------------------------------------------------------------


def test_second_mount_is_refused(mount: Mount, two: Cluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "mount", "--foreground"],
        env={**os.environ, **two.env}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "already mounted" in result.stderr
    assert (two.home).is_dir() and is_mounted(two.home)


def test_kill_9_loses_nothing_fsynced_and_remount_cleans_the_stale_mount(
    one: Cluster, two: Cluster
) -> None:
    data = os.urandom(1 << 20)
    live = Mount(two.home, two.env).start()
    try:
        (two.home / "kept.txt").write_text("kept")
        fd = os.open(two.home / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        assert os.write(fd, data) == len(data)
        os.fsync(fd)
        live.kill()  # while the file is still open for writing
        with contextlib.suppress(OSError):
            os.close(fd)
        with pytest.raises(OSError) as caught:
            os.listdir(two.home)
        assert caught.value.errno == errno.ENOTCONN
        with mounted(two.home, two.env) as again:
            assert "cleaned a stale mount" in again.output()
            assert (two.home / "kept.txt").read_text() == "kept"
            assert (two.home / "open.bin").read_bytes() == data
            assert {"kept.txt", "open.bin"} <= dirty_paths(two)
            mounted_run(two, "push")
    finally:
        live.stop()
    assert not is_mounted(two.home)
    assert (two.home / "open.bin").read_bytes() == data
    one.pull()
    assert (one.home / "open.bin").read_bytes() == data


def test_unmount_cleans_a_stale_mount(two: Cluster) -> None:
    live = Mount(two.home, two.env).start()
    try:
        live.kill()
        result = two.cli("unmount")
        assert result.exit_code == 0, result.output
        assert "cleaned a stale mount" in result.output
        assert not is_mounted(two.home)
    finally:
        live.stop()


def test_sigterm_unmounts_cleanly(two: Cluster) -> None:
    live = Mount(two.home, two.env).start()
    try:
        os.kill(live.pid, 15)
        assert live.wait_exit() == 0
        wait_until(lambda: not is_mounted(two.home), 10, "the unmount")
    finally:
        live.stop()


# -- pull, status and faults while mounted -------------------------------------------------


def test_pull_while_mounted_shows_new_content_at_once(one: Cluster, two: Cluster) -> None:
    populate_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env):
        notes = two.home / "docs" / "notes.txt"
        assert notes.read_text() == "remote notes\n"  # fetched, now cached by the kernel
        (one.home / "docs" / "notes.txt").write_text("newer notes from one\n")
        (one.home / "added.txt").write_text("added")
        (one.home / "big.bin").unlink()
        one.push()
        mounted_run(two, "pull")
        assert notes.read_text() == "newer notes from one\n"
        assert (two.home / "added.txt").read_text() == "added"
        assert not (two.home / "big.bin").exists()
        status = mounted_run(two, "status")
        assert "in step" in status
    assert_clean_log(two)


def test_offline_mount_serves_local_files_and_fails_remote_only_with_eio(
    one: Cluster, two: Cluster
) -> None:
    populate_remote(one)
    remote_only_state(two)
    (two.home / "local.txt").write_text("local")  # written while unmounted
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    result = two.cli("setup", "--bucket", two.bucket, "--endpoint-url", dead,
                     "--addressing-style", "path")
    assert result.exit_code == 0, result.output
    with mounted(two.home, two.env):
        assert (two.home / "local.txt").read_text() == "local"
        assert os.stat(two.home / "big.bin").st_size == 3 << 20
        with pytest.raises(OSError) as caught:
            (two.home / "docs" / "notes.txt").read_text()
        assert caught.value.errno == errno.EIO
        code, output = forward_in(two.env, "push")
        assert code == 1 and "cannot reach" in output
    assert sorted(os.listdir(two.home)) == ["docs", "local.txt"]
    assert os.listdir(two.home / "docs") == []
    log = (two.state / "default" / "mount.log").read_text()
    assert log.count("fetch of 'docs/notes.txt' failed") == 1


def test_mount_daemonizes_by_default(two: Cluster) -> None:
    (two.home / "mine.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "mount"], env={**os.environ, **two.env},
        capture_output=True, text=True, timeout=60,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert f"'default' mounted at '{two.home}'" in result.stdout
        assert is_mounted(two.home)
        assert (two.home / "mine.txt").read_text() == "mine"
        done = two.cli("unmount")
        assert done.exit_code == 0, done.output
        assert not is_mounted(two.home)
        again = two.cli("unmount")
        assert again.exit_code == 1 and "is not mounted" in again.output
    finally:
        if is_mounted(two.home):
            subprocess.run(["fusermount3", "-u", "-z", str(two.home)], check=False)


def test_cache_limit_evicts_clean_files_least_recently_used_first(
    one: Cluster, two: Cluster
) -> None:
    populate_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env, "default", "--cache-limit", "1M"):
        big = (two.home / "big.bin").read_bytes()  # 3 MiB: over the limit on its own
        assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
        (two.home / "mine.bin").write_bytes(os.urandom(2 << 20))  # dirty: never evicted
        log = two.state / "default" / "mount.log"
        wait_until(lambda: "cache limit: evicted" in log.read_text(), 30, "an eviction")
        assert os.stat(two.home / "big.bin").st_size == 3 << 20  # still shown
        assert (two.home / "big.bin").read_bytes() == big  # and fetched again on open
    assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
    assert (two.home / "mine.bin").stat().st_size == 2 << 20
    assert_clean_log(two)

"""The mount daemon's lifecycle and faults: refusals, kill -9, signals, daemonizing, offline."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.mounting import (
    Mount,
    assert_clean_log,
    dirty_paths,
    forward_in,
    is_mounted,
    mounted,
    mounted_run,
    populate_remote,
    remote_only_state,
    wait_until,
)
from syncenv import Cluster, keys

if TYPE_CHECKING:
    from conftest import FusesyncEnv

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def mount(two: Cluster) -> Iterator[Mount]:
    with mounted(two.home, two.env) as live:
        yield live
    assert_clean_log(two)


def test_second_mount_is_refused(mount: Mount, two: Cluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "mount", "--foreground"],
        env={**os.environ, **two.env}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "already mounted" in result.stderr
    assert (two.home).is_dir() and is_mounted(two.home)


def test_purge_of_a_mounted_target_says_to_unmount_first(
    one: Cluster, two: Cluster, s3
) -> None:
    """push, pull and status go to the mount's daemon; purge, which it does not run, is
    refused with the way out, and deletes nothing."""
    (one.home / "kept.txt").write_text("stays on the remote")
    one.push()
    before = keys(s3, one.bucket)
    with mounted(two.home, two.env):
        result = two.cli("purge", "default", "--yes")
        assert result.exit_code == 1, result.output
        assert "target 'default' is mounted (daemon pid" in result.output
        assert "run 'fusesync unmount default' first" in result.output
        assert (two.home / "kept.txt").read_text() == "stays on the remote"
    assert keys(s3, one.bucket) == before
    assert_clean_log(two)


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


def test_mount_daemonizes_by_default(one: Cluster, two: Cluster) -> None:
    """The command returns once the daemon serves, having pulled: what the daemon said
    before (the pull's summary) reaches the terminal."""
    (one.home / "theirs.txt").write_text("theirs")
    one.push()
    (two.home / "mine.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "mount"], env={**os.environ, **two.env},
        capture_output=True, text=True, timeout=60,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"fusesync mount: pulled s3://{two.bucket}/sync/tester/default: 0 downloaded "
            f"(0 B), 1 shown remote-only, 0 deleted, 0 conflicts in "
            f"{result.stdout.split(' conflicts in ')[1].split()[0]} s",
            f"fusesync mount: 'default' mounted at '{two.home}'"], result.stdout
        assert is_mounted(two.home)
        assert (two.home / "mine.txt").read_text() == "mine"
        assert (two.home / "theirs.txt").read_text() == "theirs"
        done = two.cli("unmount")
        assert done.exit_code == 0, done.output
        assert not is_mounted(two.home)
        again = two.cli("unmount")
        assert again.exit_code == 1 and "is not mounted" in again.output
    finally:
        if is_mounted(two.home):
            subprocess.run(["fusermount3", "-u", "-z", str(two.home)], check=False)


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
    with mounted(two.home, two.env) as live:
        assert "fusesync mount: not pulled: cannot reach" in live.output()  # and mounted
        code, output = forward_in(two.env, "pull")
        assert code == 1 and "cannot reach" in output
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
    assert log.count("pull at mount: not pulled: cannot reach") == 1


def test_state_folder_inside_the_mounted_home(tmp_path: Path, fusesync_env: FusesyncEnv
                                              ) -> None:
    """The usual setup: ~/.local/state/fusesync lies inside the home that is mounted.
    The daemon must never reach its own state through its own mount (a deadlock)."""
    home = tmp_path / "inside" / "home"
    home.mkdir(parents=True)
    env = {**fusesync_env.server.env(), "HOME": str(home), "USER": "tester",
           "LOGNAME": "tester", "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_STATE_HOME": str(home / ".local" / "state")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fusesync.cli", *args],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60)

    done = cli("setup", "--bucket", fusesync_env.bucket, "--endpoint-url",
               fusesync_env.server.endpoint_url, "--addressing-style", "path")
    assert done.returncode == 0, done.stderr
    (home / "notes.txt").write_text("notes")
    with mounted(home, env):
        (home / "new.txt").write_text("new")
        code, output = forward_in(env, "push")
        assert code == 0, output
        assert "2 uploaded" in output
        assert (home / ".local" / "state" / "fusesync" / "default" / "mount.log").exists()
        done = cli("unmount")
        assert done.returncode == 0, done.stderr
    assert not is_mounted(home)
    assert (home / "new.txt").read_text() == "new"
    assert not (home / ".local" / "state" / "fusesync" / "default" / "control.sock").exists()


def test_daemonized_mount_that_fails_says_one_clear_line(two: Cluster) -> None:
    """The daemon's error reaches the terminal as the user's one line, not a trio group."""
    two.home.rename(two.home.with_name("moved-away"))
    result = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "mount"], env={**os.environ, **two.env},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("fusesync mount: "), result.stderr
    assert "does not exist" in result.stderr
    assert "ExceptionGroup" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_daemon_error_raised_inside_a_nursery_is_said_as_its_own_line() -> None:
    from fusesync.errors import FusesyncError
    from fusesync.fs.commands import last_word

    inside = BaseExceptionGroup("Exceptions from Trio nursery", [
        FusesyncError("cannot mount '/home/u': fuse: device not found"),
    ])
    assert last_word(inside) == "cannot mount '/home/u': fuse: device not found"
    assert last_word(OSError(5, "Input/output error")) == "OSError(5, 'Input/output error')"


def test_a_reply_the_kernel_no_longer_waits_for_is_no_error_in_the_log(tmp_path: Path) -> None:
    """A lazy unmount right after a file is closed tears the mount down while its release
    is still on its way: the kernel refuses the daemon's reply with ENOENT, which libfuse
    takes as a request gone. The daemon's log shows no error for it; any other failure of
    a reply still shows."""
    import logging

    from fusesync.fs.daemon import _logging

    log_path = tmp_path / "mount.log"
    pyfuse3_log = logging.getLogger("pyfuse3")
    with _logging(log_path):
        pyfuse3_log.error("fuse_release(): fuse_reply_* failed with %s", os.strerror(errno.ENOENT))
        pyfuse3_log.error("fuse_read(): fuse_reply_* failed with %s", os.strerror(errno.EINVAL))
    text = log_path.read_text()
    assert "fuse_release()" not in text
    invalid = os.strerror(errno.EINVAL)
    assert f"ERROR pyfuse3: fuse_read(): fuse_reply_* failed with {invalid}" in text


async def test_a_pull_slower_than_pull_wait_goes_on_while_the_mount_serves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The mount says it is pulling after PULL_PATIENCE seconds of the pull it begins
    with, waits PULL_WAIT seconds for it, then says it goes on and is ready; the pull
    ends later, in the log alone (the command has returned)."""
    import logging
    from types import SimpleNamespace

    import trio

    from fusesync.fs import daemon
    from fusesync.sync.report import Report

    monkeypatch.setattr(daemon, "PULL_PATIENCE", 0.05)
    monkeypatch.setattr(daemon, "PULL_WAIT", 0.1)
    release = trio.Event()

    class SlowPull:
        target = SimpleNamespace(url="s3://b/sync/u/default")

        async def first_pull(self) -> Report:
            await release.wait()
            report = Report("pull")
            report.shown = 3
            report.conflicts.append(("notes.txt", "changed on both sides"))
            return report.done()

    said: list[str] = []
    caplog.set_level(logging.INFO, "fusesync.mount")
    async with trio.open_nursery() as nursery:
        await daemon._pull_at_mount(SlowPull(), nursery, said.append)  # type: ignore[arg-type]
        assert said[0] == "pulling s3://b/sync/u/default ..."
        assert len(said) == 2 and said[1].startswith(
            "still pulling s3://b/sync/u/default after 0 s: it goes on while the mount serves")
        release.set()
    assert len(said) == 2
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("pull at mount: pulled s3://b/sync/u/default: 0 downloaded (0 B), "
                            "3 shown remote-only, 0 deleted, 1 conflict") for m in logged), logged
    assert "pull at mount:    conflict: notes.txt: changed on both sides" in logged

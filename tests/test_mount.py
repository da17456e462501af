"""The mount for real: union view, lazy fetch, journal, pull and unmount (real FUSE, S3)."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support.mounting import (
    Mount,
    assert_clean_log,
    dirty_paths,
    is_mounted,
    local_kind,
    mounted,
    mounted_run,
    populate_remote,
    remote_only_state,
    wait_until,
)
from syncenv import Cluster, tree_of

from fusesync.fs.adapter import READDIR_BY_INODE

pytestmark = pytest.mark.timeout(120)


def test_mount_over_a_non_empty_dir_hides_nothing(two: Cluster) -> None:
    (two.home / "mine.txt").write_text("mine")
    (two.home / "sub").mkdir()
    (two.home / "sub" / "deep.txt").write_text("deep")
    before = tree_of(two.home)
    with mounted(two.home, two.env):
        options = next(line.split()[3] for line in Path("/proc/mounts").read_text().splitlines()
                       if line.split()[1] == str(two.home))
        assert {"nosuid", "nodev", "default_permissions"} <= set(options.split(","))
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
    with mounted(two.home, two.env, "default", "--no-pull"):  # shown by the pull below
        would = mounted_run(two, "pull", dry_run=True, max_delete=0.5)
        assert {line for line in would.splitlines() if "would fetch" in line} >= {
            "   would fetch: script.sh", "   would fetch: docs/notes.txt",
            "   would fetch: big.bin", "   would fetch: link"}, would
        assert sorted(os.listdir(two.home)) == ["mine.txt"]  # a dry run shows nothing new
        status = mounted_run(two, "status", json=False)
        assert "script.sh" in status  # (to pull)
        assert sorted(os.listdir(two.home)) == ["mine.txt"]  # nor does a status
        output = mounted_run(two, "pull")
        assert "0 downloaded (0 B), 5 shown remote-only, 0 deleted" in output, output
        assert "would" not in output
        assert "   0 downloaded (0 B), 0 deleted" in mounted_run(two, "pull")  # all shown
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


def test_a_read_waits_only_for_its_range(one: Cluster, two: Cluster) -> None:
    """head -c 100 of a large remote-only file returns while the rest still downloads."""
    size = 96 << 20
    with (one.home / "huge.bin").open("wb") as f:
        f.write(os.urandom(1 << 20) * (size >> 20))
    one.push()
    remote_only_state(two)
    with mounted(two.home, two.env):
        started = time.monotonic()
        head = subprocess.run(["head", "-c", "100", str(two.home / "huge.bin")],
                              capture_output=True, check=True).stdout
        first = time.monotonic() - started
        assert local_kind(two, "huge.bin") is None, "the whole file came before the first read"
        assert head == (one.home / "huge.bin").read_bytes()[:100]
        with (two.home / "huge.bin").open("rb") as f:
            f.seek(size - 10)
            assert f.read() == (one.home / "huge.bin").read_bytes()[-10:]
        whole = time.monotonic() - started
        assert first < whole
    assert (two.home / "huge.bin").stat().st_size == size


def test_a_writable_open_streams_too(one: Cluster, two: Cluster) -> None:
    """open(O_RDWR) of a large remote-only file returns at once: a write lands while the
    rest still downloads (and is never overwritten by it), fsync waits for the file."""
    size = 96 << 20
    data = os.urandom(1 << 20) * (size >> 20)
    (one.home / "huge.bin").write_bytes(data)
    one.push()
    remote_only_state(two)
    expected = data[:10] + b"patched" + data[17:] + b"tail"
    with mounted(two.home, two.env):
        with (two.home / "huge.bin").open("r+b", buffering=0) as f:
            f.seek(10)
            f.write(b"patched")
            f.seek(0)
            head = f.read(20)
            assert local_kind(two, "huge.bin") is None, "the open waited for the whole file"
            assert head == expected[:20]
            f.seek(size)
            f.write(b"tail")
            assert os.fstat(f.fileno()).st_size == size + 4
            os.fsync(f.fileno())
        assert (two.home / "huge.bin").read_bytes() == expected
        assert "huge.bin" in dirty_paths(two)
        mounted_run(two, "push")
        assert not dirty_paths(two)
    one.pull()
    assert (one.home / "huge.bin").read_bytes() == expected
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


def test_the_s3_client_reads_its_settings_through_the_mount(one: Cluster, two: Cluster) -> None:
    """boto3's client is built once the mount serves, in a worker thread: its settings may
    lie inside the mounted home. A push that needs it (a multipart upload) at once after
    mounting completes, and the daemon does not wait on itself."""
    (two.home / "settings").mkdir()  # not .aws/, which the default target encrypts
    (two.home / "settings" / "aws.conf").write_text("[default]\nregion = us-east-1\n")
    env = {**two.env, "AWS_CONFIG_FILE": str(two.home / "settings" / "aws.conf")}
    data = os.urandom(20 << 20)  # over the multipart threshold: boto3 starts the upload
    with mounted(two.home, env):
        (two.home / "big.bin").write_bytes(data)
        output = mounted_run(two, "push")
        assert " 0 conflicts" in output
    one.pull()
    assert (one.home / "big.bin").read_bytes() == data
    assert (one.home / "settings" / "aws.conf").read_text().startswith("[default]")
    assert_clean_log(two)


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
        assert "remote-only: 2 files" in status  # script.sh, link: never opened
    assert_clean_log(two)


def test_a_pull_through_the_mount_forgets_only_what_moved(one: Cluster, two: Cluster) -> None:
    """The kernel keeps the names and attributes of entries the listing did not change:
    a remote-only entry looked at before keeps its inode number across a pull that found
    nothing new (a pull used to drop every name it had); one changed or deleted on the
    remote shows as it now is at once."""
    populate_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env):
        kept, changed, gone = two.home / "script.sh", two.home / "docs" / "notes.txt", \
            two.home / "big.bin"
        seen = {path: os.stat(path).st_ino for path in (kept, changed, gone)}
        mounted_run(two, "pull")
        assert {path: os.stat(path).st_ino for path in seen} == seen
        (one.home / "docs" / "notes.txt").write_text("longer notes from one\n")
        (one.home / "big.bin").unlink()
        one.push()
        mounted_run(two, "pull")
        assert os.stat(kept).st_ino == seen[kept]
        assert os.stat(changed).st_size == len("longer notes from one\n")
        assert not gone.exists()
        assert changed.read_text() == "longer notes from one\n"
    assert_clean_log(two)


def test_listings_the_kernel_keeps_show_what_a_pull_changed(one: Cluster, two: Cluster) -> None:
    """The kernel answers a listing it has seen from its own cache: a pull that adds names
    (a file, a folder new to the kernel with more below it), then one that removes names
    and turns a file into a folder, must each make it ask again, or the mount would show
    the old listing."""
    assert READDIR_BY_INODE, "the installed pyfuse3 lacks the patch of packaging/pyfuse3"
    populate_remote(one)
    (one.home / "docs" / "old.txt").write_text("old")
    (one.home / "turns").write_text("a file first")
    one.push()
    with mounted(two.home, two.env):
        mounted_run(two, "pull")
        for _ in range(2):  # the second listing comes from the kernel's cache
            assert sorted(os.listdir(two.home)) == ["big.bin", "docs", "link", "script.sh",
                                                    "turns"]
            assert sorted(os.listdir(two.home / "docs")) == ["notes.txt", "old.txt"]
        (one.home / "docs" / "new.txt").write_text("new")
        (one.home / "fresh" / "deep").mkdir(parents=True)
        (one.home / "fresh" / "deep" / "x.txt").write_text("x")
        one.push()
        mounted_run(two, "pull")  # only new names
        assert sorted(os.listdir(two.home)) == ["big.bin", "docs", "fresh", "link",
                                                "script.sh", "turns"]
        assert sorted(os.listdir(two.home / "docs")) == ["new.txt", "notes.txt", "old.txt"]
        assert os.listdir(two.home / "fresh" / "deep") == ["x.txt"]
        (one.home / "docs" / "old.txt").unlink()
        (one.home / "turns").unlink()
        (one.home / "turns").mkdir()
        (one.home / "turns" / "inside.txt").write_text("a folder now")
        one.push()
        mounted_run(two, "pull")
        assert sorted(os.listdir(two.home / "docs")) == ["new.txt", "notes.txt"]
        assert (two.home / "turns" / "inside.txt").read_text() == "a folder now"
        assert tree_of(two.home) == tree_of(one.home)
    assert_clean_log(two)


def test_a_folder_emptied_through_the_mount_stays_on_the_other_cluster(
    one: Cluster, two: Cluster
) -> None:
    """The mount's push writes the marker of a folder whose last file was deleted through
    it (the remote knew the folder only from that file); found by the state machine."""
    populate_remote(one)
    with mounted(two.home, two.env):
        mounted_run(two, "pull")
        (two.home / "docs" / "notes.txt").unlink()
        mounted_run(two, "push", max_delete=1.0)
    one.pull("--max-delete", "100%")
    assert (one.home / "docs").is_dir() and not any((one.home / "docs").iterdir())
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


def test_cache_limit_evicts_clean_files_least_recently_used_first(
    one: Cluster, two: Cluster
) -> None:
    populate_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env, "default", "--cache-limit", "1M"):
        big = (two.home / "big.bin").read_bytes()  # 3 MiB: over the limit on its own
        assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
        # a read returns once its bytes are here; the file is recorded just after
        wait_until(lambda: local_kind(two, "docs/notes.txt") == "file", 30, "notes.txt")
        (two.home / "mine.bin").write_bytes(os.urandom(2 << 20))  # dirty: never evicted
        wait_until(lambda: local_kind(two, "big.bin") is None, 30, "the eviction of big.bin")
        assert local_kind(two, "docs/notes.txt") == "file"  # used later: kept
        assert "mine.bin" in dirty_paths(two)
        assert os.stat(two.home / "big.bin").st_size == 3 << 20  # still shown
        assert (two.home / "big.bin").read_bytes() == big  # and fetched again on open
    assert (two.home / "mine.bin").stat().st_size == 2 << 20
    assert_clean_log(two)


def test_pushes_through_the_mount_merge_the_manifest_another_cluster_wrote(
    one: Cluster, two: Cluster
) -> None:
    """The daemon keeps the manifest it last wrote; a push by another cluster in between
    makes its conditional write fail, and it merges into the new one instead."""
    from fusesync.sync.manifest import decode

    def manifest() -> set[str]:
        client = one.server.client()
        keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=one.bucket)["Contents"]]
        key = next(k for k in keys if k.endswith(".manifest"))
        return set(decode(client.get_object(Bucket=one.bucket, Key=key)["Body"].read()))

    (one.home / "first.txt").write_text("1")
    one.push()
    with mounted(two.home, two.env):
        mounted_run(two, "pull")
        (two.home / "from-two.txt").write_text("2")
        mounted_run(two, "push")  # the daemon now holds the manifest it wrote
        (one.home / "from-one.txt").write_text("3")
        one.push()  # another writer
        (two.home / "again.txt").write_text("4")
        mounted_run(two, "push")
        assert {"first.txt", "from-two.txt", "from-one.txt", "again.txt"} <= manifest()
    assert_clean_log(two)


def test_a_mount_pulls_as_it_starts(one: Cluster, two: Cluster) -> None:
    """`fusesync mount` pulls before it says it is mounted: the remote's tree shows at
    once, its summary said; a later mount shows what another cluster pushed meanwhile
    and says what conflicts with a change made here while unmounted; `--no-pull` shows
    only what the last sync knew."""
    populate_remote(one)
    url = f"s3://{two.bucket}/sync/tester/default"
    with mounted(two.home, two.env) as live:
        assert sorted(os.listdir(two.home)) == ["big.bin", "docs", "link", "script.sh"]
        assert f"fusesync mount: pulled {url}: 0 downloaded (0 B), 5 shown remote-only, " \
               "0 deleted, 0 conflicts" in live.output(), live.output()
        assert (two.home / "docs" / "notes.txt").read_text() == "remote notes\n"
        assert "0 downloaded (0 B), 0 deleted" in mounted_run(two, "pull")  # all there
    (one.home / "added.txt").write_text("pushed while two was unmounted")
    (one.home / "docs" / "notes.txt").write_text("changed on one\n")
    (one.home / "script.sh").write_text("#!/bin/sh\necho one\n")
    one.push()
    (two.home / "script.sh").write_text("#!/bin/sh\necho two\n")  # two's own, unmounted
    with mounted(two.home, two.env) as live:
        assert (two.home / "added.txt").read_text() == "pushed while two was unmounted"
        assert (two.home / "docs" / "notes.txt").read_text() == "changed on one\n"
        said = live.output()
        assert "1 conflict " in said and "fusesync mount:    conflict: script.sh: " in said, said
        assert (two.home / "script.sh").read_text() == "#!/bin/sh\necho two\n"
        copies = [name for name in os.listdir(two.home) if ".conflict-" in name]
        assert [(two.home / name).read_text() for name in copies] == ["#!/bin/sh\necho one\n"]
    (one.home / "later.txt").write_text("later")
    one.push()
    with mounted(two.home, two.env, "default", "--no-pull") as live:
        assert "pulled" not in live.output()
        assert not (two.home / "later.txt").exists()
        mounted_run(two, "pull")
        assert (two.home / "later.txt").read_text() == "later"
    assert_clean_log(two, allowed=("conflict",))


def test_a_small_file_that_fails_its_md5_gives_no_byte_to_a_read(
    one: Cluster, two: Cluster
) -> None:
    """A small file comes whole and is checked before a read sees any of it: a body that
    does not match the MD5 the index holds fails the read with EIO, says why in the log,
    and leaves nothing at the path."""
    populate_remote(one)
    remote_only_state(two)
    db = sqlite3.connect(two.state / "default" / "index.db")
    with db:
        db.execute("UPDATE paths SET remote_md5 = ? WHERE path = 'docs/notes.txt'", ("0" * 32,))
    db.close()
    with mounted(two.home, two.env, "default", "--no-pull"):  # (a pull would mend it)
        with pytest.raises(OSError) as caught, (two.home / "docs" / "notes.txt").open("rb") as f:
            f.read()
        assert caught.value.errno == errno.EIO
    assert not (two.home / "docs" / "notes.txt").exists()
    log = (two.state / "default" / "mount.log").read_text()
    assert "fetch of 'docs/notes.txt' failed: downloaded data does not match its MD5" in log

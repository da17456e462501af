"""push and pull between two clusters on one prefix, against the real S3 server."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest
from syncenv import Cluster, fill, keys, tree_of

SKIP = (".cache",)




def populate(home: Path) -> None:
    (home / "jobs").mkdir()
    job = home / "jobs" / "run.sh"
    job.write_text("#!/bin/sh\necho hi\n")
    job.chmod(0o750)
    os.utime(job, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (home / "outputs" / "deep" / "er").mkdir(parents=True)
    (home / "outputs" / "deep" / "er" / "data.bin").write_bytes(os.urandom(70_000))
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / "empty").mkdir()
    (home / "latest").symlink_to("outputs/deep")
    (home / "dangling").symlink_to("/nowhere/at/all")
    (home / "private.txt").write_text("secret-ish")
    (home / "private.txt").chmod(0o600)
    (home / ".cache").mkdir()
    (home / ".cache" / "junk").write_text("excluded by default")


def test_push_then_pull_carries_everything(one: Cluster, two: Cluster, s3, fusesync_env) -> None:
    populate(one.home)
    result = one.push()
    lines = result.output.splitlines()
    assert lines[0] == f" > Synchronizing directory '{one.home}' to s3://{one.bucket}/sync/tester/default"
    assert lines[1] == "    Permissions ... OK"
    assert lines[2] == "           Sync ... OK"
    assert lines[-1].startswith("   6 uploaded (")  # run.sh data.bin .bashrc 2 links private
    assert ", 0 deleted, 0 conflicts in " in lines[-1]

    two.pull()
    assert tree_of(two.home, SKIP) == tree_of(one.home, SKIP)
    assert not (two.home / ".cache").exists()
    job = two.home / "jobs" / "run.sh"
    assert job.stat().st_mtime_ns // 1000 == 1_600_000_000_123_456  # microseconds survive
    assert stat.S_IMODE((two.home / "private.txt").stat().st_mode) == 0o600

    # the remote is plain: keys under the prefix, the manifest beside it, s3fs headers
    found = keys(s3, one.bucket)
    prefix = "sync/tester/default/"
    assert "sync/tester/default.manifest" in found
    assert all(k.startswith(prefix) for k in found if k != "sync/tester/default.manifest")
    assert f"{prefix}empty/" in found and f"{prefix}.cache/junk" not in found
    head = s3.head_object(Bucket=one.bucket, Key=f"{prefix}jobs/run.sh")
    assert head["Metadata"]["mode"] == str(stat.S_IFREG | 0o750)
    assert head["Metadata"]["mtime"].startswith("1600000000.123456")
    assert head["Metadata"]["uid"] == str(os.getuid())
    link = s3.get_object(Bucket=one.bucket, Key=f"{prefix}latest")
    assert link["Body"].read() == b"outputs/deep"
    assert link["Metadata"]["mode"] == str(stat.S_IFLNK | 0o777)
    marker = s3.head_object(Bucket=one.bucket, Key=f"{prefix}empty/")
    assert marker["ContentType"] == "application/x-directory"


def test_nothing_changed_moves_nothing(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    assert one.push().output.splitlines()[-1].startswith("   0 uploaded (0 B), 0 deleted")
    two.pull()
    assert two.pull().output.splitlines()[-1].startswith("   0 downloaded (0 B), 0 deleted")
    (one.home / ".bashrc").write_text("changed\n")
    assert one.push().output.splitlines()[-1].startswith("   1 uploaded (8 B)")
    assert two.pull().output.splitlines()[-1].startswith("   1 downloaded (8 B)")
    assert (two.home / ".bashrc").read_text() == "changed\n"


def test_attribute_only_changes_travel(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    two.pull()
    (one.home / "private.txt").chmod(0o640)
    os.utime(one.home / ".bashrc", (1_000_000_000, 1_000_000_000))
    assert one.push().output.splitlines()[-1].startswith("   2 uploaded")
    two.pull()
    assert stat.S_IMODE((two.home / "private.txt").stat().st_mode) == 0o640
    assert (two.home / ".bashrc").stat().st_mtime == 1_000_000_000


def test_directories_past_one_batch_arrive_and_go(one: Cluster, two: Cluster) -> None:
    """More directories than the pull makes or deletes in one worker-thread hop, read-only
    ones with a file inside among them: each arrives with its mode and its file; deleted
    on the other side, each goes, but for the one file changed here and its folder."""
    from fusesync.sync.pull import BATCH

    count = BATCH + 40
    (one.home / "notes.txt").write_text("stays\n")  # a remote that empties is refused
    for i in range(count):
        folder = one.home / "runs" / f"r{i:04d}"
        folder.mkdir(parents=True)
        (folder / "out.txt").write_text(f"run {i}\n")
        folder.chmod(0o555 if i % 2 else 0o750)
    one.push()
    assert two.pull().output.splitlines()[-1].startswith(f"   {count + 1} downloaded")
    for i in range(count):
        folder = two.home / "runs" / f"r{i:04d}"
        assert stat.S_IMODE(folder.stat().st_mode) == (0o555 if i % 2 else 0o750), folder
        assert (folder / "out.txt").read_text() == f"run {i}\n"

    kept = two.home / "runs" / "r0007" / "out.txt"
    kept.write_text("changed here\n")
    for folder in (one.home / "runs").iterdir():
        folder.chmod(0o750)
        (folder / "out.txt").unlink()
        folder.rmdir()
    (one.home / "runs").rmdir()
    one.push("--max-delete", "100%")
    output = two.pull("--max-delete", "100%", status=3).output
    assert f" {count - 1} deleted" in output.splitlines()[-1]
    assert "skipped: runs/r0007/out.txt: deleted on the remote, changed here: kept" in output
    assert [p.name for p in (two.home / "runs").iterdir()] == ["r0007"]
    assert kept.read_text() == "changed here\n"


def test_deletes_travel_and_delete_guard(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    two.pull()
    (one.home / ".bashrc").unlink()
    one.push()
    two.pull()
    assert not (two.home / ".bashrc").exists()
    # deleting most of the tree is stopped unless allowed
    for path in ("jobs/run.sh", "private.txt", "latest", "dangling"):
        (one.home / path).unlink()
    result = one.cli("push")
    assert result.exit_code == 1
    assert "would delete 4 of 5 synced files" in result.output
    assert "--max-delete 100%" in result.output
    one.push("--max-delete", "100%")
    result = two.cli("pull")
    assert result.exit_code == 1 and "would delete 4 of 5" in result.output
    assert (two.home / "private.txt").exists()
    two.pull("--max-delete", "100%")
    assert not (two.home / "private.txt").exists()
    assert (two.home / "outputs" / "deep" / "er" / "data.bin").exists()


def test_concurrent_edits_give_one_conflict_and_lose_nothing(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    two.pull()
    (one.home / ".bashrc").write_text("from one\n")
    (two.home / ".bashrc").write_text("from two\n")
    one.push()
    result = two.push(status=3)
    assert "   conflict: .bashrc: changed on the remote since the last sync" in result.output
    assert result.output.splitlines()[-1].startswith("   0 uploaded (0 B), 0 deleted, 1 conflict ")
    result = two.pull(status=3)
    conflicts = [line for line in result.output.splitlines() if "conflict:" in line]
    assert len(conflicts) == 1, result.output
    assert (two.home / ".bashrc").read_text() == "from two\n"  # ours stays in place
    copies = list(two.home.glob(".bashrc.conflict-*"))
    assert len(copies) == 1
    assert copies[0].read_text() == "from one\n"
    assert copies[0].name.startswith(".bashrc.conflict-")
    two.push()  # our version, and the copy, now go up
    one.pull()
    assert (one.home / ".bashrc").read_text() == "from two\n"
    assert (one.home / copies[0].name).read_text() == "from one\n"


def test_same_edit_on_both_sides_is_no_conflict(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    two.pull()
    for cluster in (one, two):
        (cluster.home / ".bashrc").write_text("same\n")
    one.push()
    two.pull()
    assert not list(two.home.glob("*.conflict-*"))
    result = two.push()
    assert result.output.splitlines()[-1].startswith("   0 uploaded")


def test_delete_here_edit_there_keeps_the_edit(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    two.pull()
    (one.home / "private.txt").unlink()
    (two.home / "private.txt").write_text("edited on two")
    one.push()
    two.pull(status=3)  # reported: deleted there, kept here
    assert (two.home / "private.txt").read_text() == "edited on two"
    two.push()
    one.pull()
    assert (one.home / "private.txt").read_text() == "edited on two"


def test_edit_here_delete_there_on_push_modify_wins(one: Cluster, two: Cluster, s3) -> None:
    populate(one.home)
    one.push()
    two.pull()
    (one.home / "private.txt").unlink()
    one.push()
    (two.home / "private.txt").write_text("kept by two")
    two.push()
    body = s3.get_object(Bucket=one.bucket, Key="sync/tester/default/private.txt")["Body"]
    assert body.read() == b"kept by two"


def test_local_delete_of_remotely_changed_file_keeps_remote(one: Cluster, two: Cluster, s3) -> None:
    populate(one.home)
    one.push()
    two.pull()
    (one.home / ".bashrc").write_text("newer on one")
    one.push()
    (two.home / ".bashrc").unlink()
    result = two.push(status=3)
    assert ".bashrc" in result.output and "remote copy stays" in result.output
    two.pull()
    assert (two.home / ".bashrc").read_text() == "newer on one"


def test_status_before_the_bucket_exists(tmp_path: Path, fusesync_env) -> None:
    fresh = Cluster(tmp_path / "fresh", fusesync_env.server, "bucket-not-made-yet")
    populate(fresh.home)
    result = fresh.cli("status")
    assert result.exit_code == 0, result.output
    assert "note: bucket 'bucket-not-made-yet' does not exist yet; push creates it" in result.output
    assert "push upload: .bashrc" in result.output
    fresh.push()
    assert fresh.cli("status").output.splitlines()[-1] == "   in step: nothing to push or pull"


def test_status_json_and_dry_run_change_nothing(one: Cluster, two: Cluster, s3) -> None:
    populate(one.home)
    status = one.status_json()
    assert {a["path"] for a in status["push"] if a["op"] == "upload"} >= {
        "jobs/run.sh", ".bashrc", "latest", "empty",
    }
    result = one.push("--dry-run")
    assert "   would upload: jobs/run.sh" in result.output
    assert keys(s3, one.bucket) == []
    one.push()
    two_status = two.status_json()
    assert {a["path"] for a in two_status["pull"] if a["op"] == "fetch"} >= {".bashrc"}
    two.pull("--dry-run")
    assert not (two.home / ".bashrc").exists()
    text = one.cli("status").output
    assert "in step: nothing to push or pull" in text


def test_excluded_paths_are_never_pushed_nor_deleted(one: Cluster, two: Cluster, s3) -> None:
    populate(one.home)
    one.push()
    (two.home / ".cache").mkdir()
    (two.home / ".cache" / "mine").write_text("local only")
    two.pull()
    assert (two.home / ".cache" / "mine").read_text() == "local only"
    assert not any(".cache" in k for k in keys(s3, one.bucket))


def test_data_target_with_custom_excludes(one: Cluster, tmp_path: Path, s3) -> None:
    data = tmp_path / "data"
    (data / "build").mkdir(parents=True)
    (data / "build" / "x.o").write_text("obj")
    (data / "keep.c").write_text("int main;")
    (data / "scratch.tmp").write_text("tmp")
    result = one.cli("add", "data", str(data), "--exclude", "build/", "--exclude", "*.tmp")
    assert result.exit_code == 0, result.output
    one.push("data")
    assert keys(s3, one.bucket, "sync/tester/data/") == ["sync/tester/data/keep.c"]


def test_purge(one: Cluster, s3) -> None:
    populate(one.home)
    one.push()
    result = one.cli("purge", "default", input="n\n")
    assert result.exit_code == 1 and keys(s3, one.bucket)
    result = one.cli("purge", "default", input="y\n")
    assert result.output.startswith(
        f"Purge all files for 'default' at 's3://{one.bucket}/sync/tester/default' (Y/N)? "
    )
    assert result.exit_code == 0, result.output
    assert keys(s3, one.bucket) == []
    assert (one.home / ".bashrc").exists()
    one.push()  # everything goes up again
    assert "sync/tester/default/.bashrc" in keys(s3, one.bucket)


def test_empty_remote_listing_deletes_nothing(one: Cluster, two: Cluster) -> None:
    populate(one.home)
    one.push()
    two.pull()
    assert one.cli("purge", "default", "--yes").exit_code == 0
    result = two.cli("pull", "--max-delete", "100%")
    assert result.exit_code == 1
    assert "is empty but" in result.output and "nothing was deleted" in result.output
    assert (two.home / ".bashrc").exists()


def test_foreign_upload_pulls_with_default_modes(two: Cluster, s3) -> None:
    # what `aws s3 sync` leaves: plain objects, no fusesync headers, no manifest
    s3.put_object(Bucket=two.bucket, Key="sync/tester/default/notes/a.txt", Body=b"plain")
    s3.put_object(Bucket=two.bucket, Key="sync/tester/default/tool", Body=b"#!/bin/sh\n")
    two.pull()
    path = two.home / "notes" / "a.txt"
    assert path.read_bytes() == b"plain"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((two.home / "notes").stat().st_mode) == 0o755


def test_remote_setuid_and_root_owner_are_dropped(two: Cluster, s3) -> None:
    base = "sync/tester/default/"
    for name, mode in (("suid", 0o104755), ("sgid", 0o102755), ("sticky", 0o101777)):
        s3.put_object(Bucket=two.bucket, Key=base + name, Body=b"x",
                      Metadata={"mode": str(mode), "uid": "0", "gid": "0"})
    two.pull()
    for name, perm in (("suid", 0o755), ("sgid", 0o755), ("sticky", 0o777)):
        st = (two.home / name).stat()
        assert stat.S_IMODE(st.st_mode) == perm, name
        assert st.st_uid == os.getuid()


def test_symlink_in_tree_is_never_followed_by_pull(two: Cluster, s3, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (two.home / "outputs").symlink_to(outside)
    s3.put_object(Bucket=two.bucket, Key="sync/tester/default/outputs/x", Body=b"evil")
    s3.put_object(Bucket=two.bucket, Key="sync/tester/default/fine", Body=b"ok")
    result = two.pull(status=3)
    assert "outputs" in result.output
    assert list(outside.iterdir()) == []
    assert (two.home / "fine").read_bytes() == b"ok"


def test_pull_refuses_cleanly_on_bad_remote(one: Cluster, two: Cluster, fusesync_env) -> None:
    populate(one.home)
    one.push()
    two.pull()
    index = two.state / "default" / "index.db"
    before = index.read_bytes()
    cases = [
        ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "credentials"),
    ]
    for env, message in cases:
        saved = dict(two.env)
        two.env.update(env)
        result = two.cli("pull")
        two.env = saved
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    other = Cluster(two.root.parent / "other", fusesync_env.server, "no-such-bucket-here")
    result = other.cli("pull")
    assert result.exit_code == 1 and "does not exist" in result.output
    other.cli("setup", "--bucket", one.bucket, "--endpoint-url", "http://127.0.0.1:9")
    started = time.monotonic()
    result = other.cli("pull")
    assert result.exit_code == 1 and "cannot reach" in result.output
    assert time.monotonic() - started < 60
    assert index.read_bytes() == before


def test_a_pull_stops_at_a_full_or_read_only_file_system(
    one: Cluster, small_home: Path, fusesync_env
) -> None:
    """A home out of room (or quota) fails every write after the first: the pull stops
    there with one line saying so, keeps what it pulled, leaves no partial file, and a
    pull once there is room finishes the job. Before, it downloaded everything and
    skipped each remaining file on a line of its own."""
    for folder in range(6):
        (one.home / f"runs{folder}").mkdir()
        for i in range(40):
            (one.home / f"runs{folder}" / f"out{i:02d}.txt").write_bytes(os.urandom(16_000))
    one.push()
    small = Cluster(small_home.parent, fusesync_env.server, fusesync_env.bucket)

    def kept() -> dict[str, tuple[str, int, str | bytes]]:
        on_disk = tree_of(small.home)
        assert not [p for p in on_disk if ".fusesync-tmp-" in p], "a partial file was left"
        return on_disk

    result = small.pull(status=1)
    last = result.output.splitlines()[-1]
    assert "No space left on device" in last and "make room and pull again" in last, last
    assert "skipped" not in result.output
    pulled = kept()
    source = tree_of(one.home, skip=SKIP)
    assert 0 < len(pulled) < len(source)
    assert all(source[path] == entry for path, entry in pulled.items())

    subprocess.run(["mount", "-o", "remount,ro", str(small.home)], check=True)
    result = small.pull(status=1)
    assert "Read-only file system" in result.output.splitlines()[-1], result.output
    assert kept() == pulled

    subprocess.run(["mount", "-o", "remount,rw,size=16m", str(small.home)], check=True)
    small.pull()
    assert tree_of(small.home) == source


def test_full_state_file_system_is_one_clear_line(small_home: Path, fusesync_env) -> None:
    """fusesync's own state (the target's lock and index) on a file system out of room:
    one line that says what and where, not an internal error, and all well once there is
    room again."""
    cluster = Cluster(small_home, fusesync_env.server, fusesync_env.bucket)
    assert cluster.state.is_relative_to(small_home)  # state, settings and tree all on it
    (cluster.home / "notes.txt").write_text("one\n")
    cluster.push()

    filler = fill(small_home)
    result = cluster.cli("status")
    assert result.exit_code == 1, result.output
    lock = cluster.state / "default" / "lock"
    assert result.output == (f"fusesync status: cannot write '{lock}': No space left on "
                             "device; make room and try again\n")

    filler.unlink()
    (cluster.home / "notes.txt").write_text("two\n")
    filler = fill(small_home, leave=4096)  # the lock's line fits; the index's writes do not
    result = cluster.cli("push")
    assert result.exit_code == 1, result.output
    index = cluster.state / "default" / "index.db"
    assert result.output.splitlines()[-1] == (  # its open or a write after it: either
        f"fusesync push: cannot write index {index}: No space left on device; make room "
        "and try again")

    filler.unlink()
    cluster.push()
    assert cluster.cli("status").output.splitlines()[-1] == "   in step: nothing to push or pull"


def test_commands_run_in_one_process_leak_nothing(one: Cluster) -> None:
    """A caller that runs many commands in its own process (as these tests do) gets its
    garbage collector back as it was and keeps no file descriptor from finished runs."""
    (one.home / "a.txt").write_text("a")
    assert one.push().exit_code == 0
    thresholds = gc.get_threshold()
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for i in range(40):
        (one.home / "a.txt").write_text(f"a {i}")
        assert one.push().exit_code == 0
        assert one.pull().exit_code == 0
        assert one.pull().exit_code == 0  # nothing new: ends on its early answers
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0
    gc.collect()  # the CRT lets go of a client's sockets on its own threads, soon after
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/fd")) > before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= before + 5


def test_progress_bar_on_a_terminal_only(one: Cluster) -> None:
    for i in range(300):
        (one.home / f"f{i}.txt").write_text("x" * 5000)
    child = pexpect.spawn(
        sys.executable, ["-m", "fusesync.cli", "push"], env={**os.environ, **one.env},
        encoding="utf-8", timeout=120, dimensions=(40, 120),
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "/300 files" in child.before  # the bar counted files as they went
    assert "300 uploaded (1.5 MB)" in child.before
    piped = one.cli("push")  # not a terminal: the lines only, no bar
    assert "files" not in piped.output


def test_default_target_never_pushes_fusesync_own_state(tmp_path: Path, fusesync_env, s3) -> None:
    cluster = Cluster(tmp_path / "inside", fusesync_env.server, fusesync_env.bucket)
    # the usual layout: settings and state under HOME, where XDG puts them by default
    cluster.env["XDG_CONFIG_HOME"] = str(cluster.home / ".config")
    cluster.env["XDG_STATE_HOME"] = str(cluster.home / ".local" / "state")
    assert cluster.cli("setup", "--bucket", cluster.bucket, "--endpoint-url",
                       cluster.server.endpoint_url).exit_code == 0
    (cluster.home / "work.txt").write_text("mine")
    cluster.push()
    cluster.push()  # the index now exists under HOME: still not pushed
    found = keys(s3, cluster.bucket)
    assert "sync/tester/default/work.txt" in found
    assert not [k for k in found if "fusesync" in k.split("/", 3)[-1]], found


def test_a_pull_sends_its_listing_early_and_asks_nothing_twice(
    one: Cluster, two: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull sends the first requests of its listing before the rest of the run is
    imported (sync/head_start.py), and the run takes their answers: each request leaves
    once, and what the other cluster changed meanwhile is pulled."""
    from awscrt import s3 as crt_s3

    from fusesync.remote.crt import CrtClient

    sent: list[tuple[str, str, str | None]] = []
    early: list[str] = []
    make_request, send_early = crt_s3.S3Client.make_request, CrtClient.send_early

    def counted(self: crt_s3.S3Client, **kwargs: Any) -> crt_s3.S3Request:
        request = kwargs["request"]
        sent.append((request.method, request.path, request.headers.get("If-None-Match")))
        return make_request(self, **kwargs)

    def counted_early(self: CrtClient, *args: Any, **kwargs: Any) -> None:
        early.append(args[3])  # the operation
        send_early(self, *args, **kwargs)

    monkeypatch.setattr(crt_s3.S3Client, "make_request", counted)
    monkeypatch.setattr(CrtClient, "send_early", counted_early)
    for i in range(3):
        (one.home / f"f{i}.txt").write_text(f"file {i}")
    one.push()
    manifest = f"/{one.bucket}/sync/tester/default.manifest"
    for change in (None, "f1.txt", None):  # a first pull, one with news, one without
        if change:
            (one.home / change).write_text("changed on one")
            one.push()
        sent.clear()
        early.clear()
        two.pull()
        assert early and "GetObject" in early  # the listing left early...
        assert len(sent) == len(set(sent)), f"asked twice: {sent}"  # ...and was taken
        assert len([path for _, path, _ in sent if "list-type=2" in path]) == 1
        assert len([path for _, path, _ in sent if path == manifest]) == 1
    assert tree_of(two.home) == tree_of(one.home)


def test_a_mount_sends_its_pulls_first_requests_unless_told_not_to_pull(
    one: Cluster, two: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull, and a mount (which pulls as it starts), send their listing's first
    requests before their imports; a mount with --no-pull and a push send none."""
    from fusesync.config import Config
    from fusesync.remote.crt import CrtClient
    from fusesync.sync import head_start

    early: list[str] = []
    send_early = CrtClient.send_early

    def counted(self: CrtClient, *args: Any, **kwargs: Any) -> None:
        early.append(args[3])  # the operation
        send_early(self, *args, **kwargs)

    monkeypatch.setattr(CrtClient, "send_early", counted)
    for i in range(3):
        (one.home / f"f{i}.txt").write_text(f"file {i}")
    one.push()
    two.pull()
    for name, value in two.env.items():
        monkeypatch.setenv(name, value)
    config = Config.load()
    target = config.target("default")
    for activity, listing, sent in (("mount", True, True), ("mount", False, False),
                                    ("pull", None, True), ("push", None, False)):
        early.clear()
        with head_start.opened(config.settings, target, activity, listing=listing) as opened:
            if sent:
                assert opened.crt is not None  # the light path, taken by the run's remote
                opened.crt.drop_all_early()
        assert ("ListObjectsV2" in early) == sent, (activity, listing, early)


def test_a_pull_with_nothing_new_ends_on_its_early_answers(
    one: Cluster, two: Cluster, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull whose early answers show nothing new (the manifest unchanged, every key as
    the index holds it, no change left waiting) ends there without the engine; anything
    else runs the engine, which pulls it or reports it as before."""
    import fusesync.sync.session as session
    from fusesync.index import Index

    engines: list[str] = []
    open_engine = session.open_engine

    def counted(*args: Any, **kwargs: Any) -> Any:
        engines.append(args[2])  # the verb
        return open_engine(*args, **kwargs)

    monkeypatch.setattr(session, "open_engine", counted)

    def pull(status: int = 0) -> tuple[bool, str]:
        """(whether the engine ran, the output)"""
        engines.clear()
        result = two.pull(status=status)
        return bool(engines), result.output

    populate(one.home)
    one.push()
    assert pull()[0]  # a first pull
    ran, output = pull()
    assert not ran and "0 downloaded (0 B), 0 deleted, 0 conflicts" in output
    assert " > Synchronizing s3://" in output and "Sync ... OK" in output
    assert "0 downloaded" in two.pull("--dry-run").output and not engines

    prefix = "sync/tester/default/"
    # another tool writes a key and deletes one: the manifest knows nothing of either
    s3.put_object(Bucket=two.bucket, Key=prefix + "from-aws.txt", Body=b"aws")
    assert pull()[0]
    assert (two.home / "from-aws.txt").read_bytes() == b"aws"
    assert pull()[0]  # a row a HEAD gave names no manifest version: the engine looks
    s3.delete_object(Bucket=two.bucket, Key=prefix + "from-aws.txt")
    assert pull()[0]
    assert not (two.home / "from-aws.txt").exists()
    assert not pull()[0]
    # a push from the other cluster: a new manifest
    (one.home / "notes.txt").write_text("new notes")
    one.push()
    assert pull()[0]
    assert (two.home / "notes.txt").read_text() == "new notes"
    # a change an earlier pull left alone is tried (and reported) again by every pull
    outside = tmp_path / "outside"
    outside.mkdir()
    (two.home / "results").symlink_to(outside)
    (one.home / "results").mkdir()
    (one.home / "results" / "x").write_text("x")
    one.push()
    for _ in range(2):
        ran, output = pull(status=3)
        assert ran and "skipped: results/x" in output
    assert list(outside.iterdir()) == []
    (two.home / "results").unlink()
    assert pull()[0]
    assert not pull()[0]
    # a pull that was cut short looks at both sides again
    with Index(two.state / "default" / "index.db") as index:
        index.set_meta("pull_running", "1")
    assert pull()[0]
    assert not pull()[0]
    assert tree_of(two.home, SKIP) == tree_of(one.home, SKIP)


def test_a_push_looks_at_the_tree_before_the_engine(
    one: Cluster, two: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push scans and plans before trio and the engine are imported: with nothing to
    send it ends there; with something, the engine goes on from that scan (the tree is
    scanned once a run) and takes the manifest asked for meanwhile (asked once)."""
    from awscrt import s3 as crt_s3

    import fusesync.sync.engine as engine
    import fusesync.sync.scan as scan
    import fusesync.sync.session as session

    engines: list[str] = []
    scans: list[int] = []
    sent: list[tuple[str, str]] = []
    open_engine, scan_tree = session.open_engine, scan.scan_tree
    make_request = crt_s3.S3Client.make_request

    def counted_engine(*args: Any, **kwargs: Any) -> Any:
        engines.append(args[2])  # the verb
        return open_engine(*args, **kwargs)

    def counted_scan(*args: Any, **kwargs: Any) -> Any:
        scans.append(1)
        return scan_tree(*args, **kwargs)

    def counted_request(self: crt_s3.S3Client, **kwargs: Any) -> crt_s3.S3Request:
        sent.append((kwargs["request"].method, kwargs["request"].path))
        return make_request(self, **kwargs)

    monkeypatch.setattr(session, "open_engine", counted_engine)
    monkeypatch.setattr(scan, "scan_tree", counted_scan)
    monkeypatch.setattr(engine, "scan_tree", counted_scan)
    monkeypatch.setattr(crt_s3.S3Client, "make_request", counted_request)

    def push(*args: str) -> tuple[bool, str]:
        """(whether the engine ran, the output), after one scan of the tree"""
        engines.clear()
        scans.clear()
        sent.clear()
        output = one.push(*args).output
        assert len(scans) == 1
        return bool(engines), output

    manifest = ("GET", f"/{one.bucket}/sync/tester/default.manifest")
    populate(one.home)
    ran, output = push()
    assert ran and "uploaded" in output and sent.count(manifest) == 1
    ran, output = push()
    assert not ran and "0 uploaded (0 B), 0 deleted, 0 conflicts" in output and not sent
    assert " > Synchronizing directory" in output and "Sync ... OK" in output
    (one.home / "jobs" / "run.sh").write_text("#!/bin/sh\necho changed\n")
    ran, output = push("--dry-run")
    assert ran and "would upload: jobs/run.sh" in output and not sent
    ran, output = push()
    assert ran and "1 uploaded" in output and sent.count(manifest) == 1
    assert not push()[0]
    (one.home / "jobs" / "run.sh").unlink()  # a delete, and a folder emptied
    ran, output = push("--max-delete", "100%")
    assert ran and "1 deleted" in output
    assert not push()[0]
    two.pull("--max-delete", "100%")
    assert tree_of(two.home, SKIP) == tree_of(one.home, SKIP)


def test_a_folder_emptied_here_stays_on_the_other_cluster(one: Cluster, two: Cluster) -> None:
    """A folder the remote knew only from the file inside it: when that file is deleted
    here, push writes the folder's marker, or the other cluster's pull would take the
    folder away with the file."""
    (one.home / "results" / "run1").mkdir(parents=True)
    (one.home / "results" / "run1" / "out.txt").write_text("out")
    (one.home / "keep.txt").write_text("keep")
    one.push()
    two.pull()
    (one.home / "results" / "run1" / "out.txt").unlink()
    one.push("--max-delete", "100%")
    two.pull("--max-delete", "100%")
    assert (two.home / "results" / "run1").is_dir()
    assert tree_of(two.home) == tree_of(one.home)
    assert "0 uploaded" in one.push().output  # written once

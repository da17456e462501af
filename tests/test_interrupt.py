"""kill -9 a push and a pull half-way, for real; running again finishes the job."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from syncenv import Cluster, keys, tree_of

from fusesync.remote.s3 import MiB, S3Remote
from fusesync.sync.localfs import TMP_MARK


def many_files(home: Path, count: int = 400, big: int = 40 * MiB) -> None:
    for i in range(count):
        folder = home / f"d{i % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(os.urandom(2000 + i))
    (home / "big.bin").write_bytes(os.urandom(big))  # ranged GETs on pull


def start(cluster: Cluster, verb: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fusesync.cli", verb, "--max-delete", "100%"],
        env={**os.environ, **cluster.env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def kill_when(proc: subprocess.Popen[bytes], ready, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        assert time.monotonic() < deadline, "the run never got half-way"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_push_killed_half_way_then_finished(one: Cluster, s3) -> None:
    many_files(one.home, big=S3Remote.crt_put_limit + 16 * MiB)  # in parts: the kill leaves some
    proc = start(one, "push")
    # while the big file's parts go up (the small files go beside them)
    kill_when(proc, lambda: bool(s3.list_multipart_uploads(Bucket=one.bucket).get("Uploads")))
    assert "sync/tester/default/big.bin" not in keys(s3, one.bucket)  # really cut short
    assert s3.list_multipart_uploads(Bucket=one.bucket).get("Uploads", [])  # left behind
    one.push()
    prefix = "sync/tester/default/"
    local = {k: v for k, v in tree_of(one.home).items() if v[0] == "file"}
    remote = {k[len(prefix):] for k in keys(s3, one.bucket) if k.startswith(prefix)}
    assert set(local) == {k for k in remote if not k.endswith("/")}
    for rel in ("big.bin", "d3/f3.txt"):
        body = s3.get_object(Bucket=one.bucket, Key=prefix + rel)["Body"].read()
        assert hashlib.md5(body).digest() == hashlib.md5((one.home / rel).read_bytes()).digest()
    assert s3.list_multipart_uploads(Bucket=one.bucket).get("Uploads", []) == []
    assert one.push().output.splitlines()[-1].startswith("   0 uploaded")


def test_pull_killed_half_way_leaves_no_partial_file(one: Cluster, two: Cluster) -> None:
    many_files(one.home)
    one.push()
    proc = start(two, "pull")
    kill_when(proc, lambda: sum(1 for _ in two.home.rglob("*.txt")) >= 50)
    source = tree_of(one.home)
    for path in two.home.rglob("*"):
        rel = path.relative_to(two.home).as_posix()
        if path.is_file() and TMP_MARK not in path.name:
            assert path.read_bytes() == source[rel][2], f"partial file at {rel}"
    two.pull()
    assert tree_of(two.home) == source
    assert not [p for p in two.home.rglob("*") if TMP_MARK in p.name]


def test_second_run_on_a_busy_target_fails_clearly(one: Cluster) -> None:
    many_files(one.home, count=50)
    proc = start(one, "push")
    lock = one.state / "default" / "lock"
    try:
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().startswith("push")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        result = one.cli("pull")
        assert result.exit_code == 1
        assert f"target 'default' is busy: push running as pid {proc.pid}" in result.output
    finally:
        proc.kill()
        proc.wait()


def test_remove_refuses_a_target_in_use(one: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    many_files(data, count=50)
    assert one.cli("add", "data", str(data)).exit_code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusesync.cli", "push", "data"], env={**os.environ, **one.env},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    lock = one.state / "data" / "lock"
    try:
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().startswith("push")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        result = one.cli("remove", "data", "--yes")
        assert result.exit_code == 1
        assert "target 'data' is busy: push running as pid" in result.output
        assert "data:" in one.cli("list").output
    finally:
        proc.kill()
        proc.wait()

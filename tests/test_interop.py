"""Other tools and fusesync on one prefix: the real aws cli writes, fusesync reads, and
the other way round."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from syncenv import Cluster

PREFIX = "sync/tester/default/"


def aws(cluster: Cluster, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {**os.environ, **cluster.env, "AWS_CONFIG_FILE": str(config)}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "aws"), "--endpoint-url",
         cluster.server.endpoint_url, "s3", *args],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout



def test_tree_uploaded_by_aws_s3_sync_pulls_with_default_modes(
    two: Cluster, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (source / "scripts" / "run.sh").chmod(0o755)
    (source / "notes.txt").write_text("from the aws cli")
    aws(two, tmp_path, "sync", str(source), f"s3://{two.bucket}/{PREFIX}")
    two.pull()
    assert (two.home / "notes.txt").read_text() == "from the aws cli"
    for path, perm in (("notes.txt", 0o644), ("scripts/run.sh", 0o644), ("scripts", 0o755)):
        assert stat.S_IMODE((two.home / path).stat().st_mode) == perm, path
    assert two.pull().output.splitlines()[-1].startswith("   0 downloaded")


def test_aws_cli_lists_what_fusesync_pushed(two: Cluster, tmp_path: Path) -> None:
    (two.home / "a").mkdir()
    (two.home / "a" / "b.txt").write_text("bee")
    (two.home / "top.txt").write_text("top")
    two.push()
    listing = aws(two, tmp_path, "ls", "--recursive", f"s3://{two.bucket}/{PREFIX}")
    keys = sorted(line.split()[-1] for line in listing.splitlines())
    assert keys == [f"{PREFIX}a/b.txt", f"{PREFIX}top.txt"]
    copy = tmp_path / "copy"
    aws(two, tmp_path, "sync", f"s3://{two.bucket}/{PREFIX}", str(copy))
    assert (copy / "a" / "b.txt").read_text() == "bee"

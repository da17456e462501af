"""What the engine asks of the remote: a LIST and one manifest GET, HEAD only for what
another tool wrote; and faults injected mid-run leave the index consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from syncenv import Cluster

from fusesync.config import Config
from fusesync.errors import RemoteError, one_error
from fusesync.index import Index
from fusesync.remote.faulty import FaultyRemote
from fusesync.remote.s3 import S3Remote
from fusesync.sync.engine import Engine


def engine_for(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, FaultyRemote]:
    """The engine `fusesync` would build for this cluster, its remote wrapped to count."""
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    config = Config.load()
    target = config.target("default")
    remote = FaultyRemote(S3Remote(config.settings))
    return Engine(target, Index(target.state_dir / "index.db"), remote), remote


def test_pull_lists_once_and_heads_only_foreign_objects(
    tmp_path: Path, fusesync_env, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = Cluster(tmp_path / "one", fusesync_env.server, fusesync_env.bucket)
    two = Cluster(tmp_path / "two", fusesync_env.server, fusesync_env.bucket)
    for i in range(40):
        (one.home / f"f{i}").write_text(str(i))
    one.push()
    engine, remote = engine_for(two, monkeypatch)
    report = trio.run(engine.pull)
    assert report.downloaded == 40
    assert remote.calls["list"] == 1
    assert remote.calls["head"] == 0  # every attribute came from the manifest
    s3.put_object(Bucket=two.bucket, Key="sync/tester/default/foreign", Body=b"by aws cli")
    remote.reset()
    report = trio.run(engine.pull)
    assert report.downloaded == 1
    assert remote.calls["head"] == 1  # the one object no manifest entry describes
    engine.index.close()


def test_failed_push_records_what_landed_and_finishes_later(
    tmp_path: Path, fusesync_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = Cluster(tmp_path / "one", fusesync_env.server, fusesync_env.bucket)
    for i in range(30):
        (one.home / f"f{i}").write_text(str(i))
    engine, remote = engine_for(one, monkeypatch)
    remote.fail_next("upload_file", RemoteError("injected: connection reset"), count=1)
    # the run fails as a whole, after recording what landed
    with pytest.raises(BaseException, match="injected"), one_error():
        trio.run(engine.push)
    synced = engine.index.count("base_kind IS NOT NULL")
    assert synced < 30
    report = trio.run(engine.push)
    assert report.uploaded == 30 - synced
    assert not report.conflicts
    engine.index.close()

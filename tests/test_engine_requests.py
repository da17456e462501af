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


def test_pull_looks_only_at_local_paths_the_remote_changed(
    tmp_path: Path, fusesync_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull's cost follows what changed on the remote, not the size of the tree; an
    interrupted pull makes the next one walk everything (it left temporary files)."""
    one = Cluster(tmp_path / "one", fusesync_env.server, fusesync_env.bucket)
    two = Cluster(tmp_path / "two", fusesync_env.server, fusesync_env.bucket)
    for i in range(20):
        (one.home / f"d{i % 4}" / f"f{i}").parent.mkdir(exist_ok=True)
        (one.home / f"d{i % 4}" / f"f{i}").write_text(str(i))
    one.push()
    two.pull()
    (two.home / "d1" / "f1").write_text("edited on two, not pushed")
    (one.home / "d2" / "f2").write_text("edited on one")
    one.push()

    walked: list[int] = []
    looked: list[list[str]] = []
    import fusesync.sync.engine as engine_module

    real_walk, real_look = engine_module.scan_tree, engine_module.scan_paths

    def walk(*args, **kw):  # type: ignore[no-untyped-def]
        walked.append(1)
        return real_walk(*args, **kw)

    def look(root_fd, index, paths, exclude):  # type: ignore[no-untyped-def]
        looked.append(list(paths))
        return real_look(root_fd, index, paths, exclude)

    monkeypatch.setattr(engine_module, "scan_tree", walk)
    monkeypatch.setattr(engine_module, "scan_paths", look)
    engine, _ = engine_for(two, monkeypatch)
    report = trio.run(engine.pull)
    assert (report.downloaded, walked, looked) == (1, [], [["d2/f2"]])
    assert (two.home / "d2" / "f2").read_text() == "edited on one"
    assert (two.home / "d1" / "f1").read_text() == "edited on two, not pushed"

    looked.clear()
    report = trio.run(engine.pull)
    assert (report.downloaded, walked, looked) == (0, [], [[]])

    engine.index.set_meta("pull_running", "1")  # as a pull killed half-way leaves it
    leftover = two.home / "d3" / ".f3.fusesync-tmp-0badcafe"
    leftover.write_bytes(b"half a file")
    trio.run(engine.pull)
    assert walked == [1] and not leftover.exists()
    assert not engine.index.meta("pull_running")
    engine.index.close()

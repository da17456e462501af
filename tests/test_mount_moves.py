"""Renames of remote-only entries: O(1) in the mount, server-side copies on push."""

from __future__ import annotations

import os
import time

import pytest
from support.mounting import (
    assert_clean_log,
    dirty_paths,
    local_kind,
    mounted,
    mounted_run,
    remote_only_state,
)
from syncenv import Cluster, tree_of

pytestmark = pytest.mark.timeout(180)


def remote_keys(one: Cluster) -> set[str]:
    from fusesync.config import Config

    saved = dict(os.environ)
    os.environ.update(one.env)
    try:
        prefix = Config.load().target("default").prefix
    finally:
        os.environ.clear()
        os.environ.update(saved)
    client = one.server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=one.bucket, Prefix=prefix)
    return {obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", [])}


def test_directory_rename_moves_remote_only_files_without_a_download(
    one: Cluster, two: Cluster
) -> None:
    files = {f"docs/f{i:04d}.txt": f"file {i}\n" for i in range(1000)}
    files["docs/sub/deep.txt"] = "deep\n"
    (one.home / "docs" / "sub").mkdir(parents=True)
    for path, text in files.items():
        (one.home / path).write_text(text)
    (one.home / "docs" / "link").symlink_to("f0000.txt")
    one.push()
    remote_only_state(two)
    with mounted(two.home, two.env):
        started = time.monotonic()
        os.rename(two.home / "docs", two.home / "papers")
        took = time.monotonic() - started
        assert took < 2.0, f"a rename of 1,002 remote-only entries took {took:.1f} s"
        assert not (two.home / "docs").exists()
        assert len(os.listdir(two.home / "papers")) == 1002
        assert os.readlink(two.home / "papers" / "link") == "f0000.txt"
        assert (two.home / "papers" / "sub" / "deep.txt").read_text() == "deep\n"  # old key
        assert local_kind(two, "papers/f0001.txt") is None  # nothing else came down
        mounted_run(two, "push")
        assert not dirty_paths(two)
        keys = remote_keys(one)
        assert not [key for key in keys if key.startswith("docs/")]
        assert {path.replace("docs/", "papers/", 1) for path in files} <= keys
        assert local_kind(two, "papers/f0001.txt") is None  # copied on the server
        assert (two.home / "papers" / "f0999.txt").read_text() == "file 999\n"
    # unmounted: only what was read came down; the rest was never here
    assert sorted(os.listdir(two.home / "papers")) == ["f0999.txt", "sub"]
    one.pull("--max-delete", "100%")  # a rename is a delete of every old path there
    assert not (one.home / "docs").exists()
    assert (one.home / "papers" / "f0500.txt").read_text() == "file 500\n"
    assert os.readlink(one.home / "papers" / "link") == "f0000.txt"
    assert len(tree_of(one.home / "papers")) == 1003
    assert_clean_log(two)


def test_moved_entries_renamed_again_or_deleted_before_push(one: Cluster, two: Cluster) -> None:
    (one.home / "a").mkdir()
    for name in ("x", "y", "z"):
        (one.home / "a" / f"{name}.txt").write_text(name)
    one.push()
    remote_only_state(two)
    with mounted(two.home, two.env):
        os.rename(two.home / "a", two.home / "b")
        os.rename(two.home / "b" / "x.txt", two.home / "c.txt")  # moved twice
        (two.home / "b" / "y.txt").unlink()  # moved, then deleted
        assert sorted(os.listdir(two.home)) == ["b", "c.txt"]
        mounted_run(two, "pull")  # carries the moves first: the listing keeps them
        assert sorted(os.listdir(two.home / "b")) == ["z.txt"]
        assert (two.home / "c.txt").read_text() == "x"
        mounted_run(two, "push")
        assert not dirty_paths(two)
        assert remote_keys(one) == {"b/z.txt", "c.txt"}
    one.pull("--max-delete", "100%")
    assert sorted(tree_of(one.home)) == ["b", "b/z.txt", "c.txt"]
    assert (one.home / "b" / "z.txt").read_text() == "z"
    assert (one.home / "c.txt").read_text() == "x"
    assert_clean_log(two)


def test_a_rename_never_carried_is_undone_by_a_plain_pull(one: Cluster, two: Cluster) -> None:
    """The daemon dies before carrying a rename: nothing is lost, a pull without the
    mount brings the entries back under their old names."""
    (one.home / "a").mkdir()
    (one.home / "a" / "x.txt").write_text("x")
    one.push()
    remote_only_state(two)
    with mounted(two.home, two.env) as live:  # leaving it cleans the stale mount
        os.rename(two.home / "a", two.home / "b")
        assert os.listdir(two.home / "b") == ["x.txt"]
        live.kill()  # kill -9: no carry at unmount
    assert remote_keys(one) == {"a/x.txt"}
    two.pull()
    assert (two.home / "a" / "x.txt").read_text() == "x"
    assert not (two.home / "b").exists()

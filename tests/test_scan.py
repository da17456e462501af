"""The local scan: one stat per path, a hash only when the stat moved, nothing changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fusesync.index import Index, RowWriter
from fusesync.sync.localfs import Tree
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.scan import BACKGROUND_HASH, ScanResult, scan_tree


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "state" / "index.db")


def scan(root: Path, index: Index, exclude: tuple[str, ...] = ()) -> ScanResult:
    with Tree(root) as tree:
        return scan_tree(tree.fd, index, PathMatcher(exclude))


def test_scan_records_kinds_and_hashes_only_what_moved(tmp_path: Path, index: Index) -> None:
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("hello")
    (root / "link").symlink_to("a/b")
    os.mkfifo(root / "pipe")
    first = scan(root, index)
    assert first.hashed == 1
    assert ("pipe", "special file (fifo, socket or device)") in first.skipped
    row = index.require("a/b/f.txt")
    assert row["local_kind"] == "file"
    assert row["local_md5"] == hashlib.md5(b"hello").hexdigest()
    assert index.require("link")["local_target"] == "a/b"
    assert index.require("a")["local_kind"] == "dir"

    again = scan(root, index)
    assert again.hashed == 0 and again.paths == first.paths

    (root / "a" / "b" / "f.txt").write_text("changed")
    assert scan(root, index).hashed == 1


def test_large_files_hashed_beside_the_walk_are_recorded_right(tmp_path: Path,
                                                                index: Index) -> None:
    """Files from BACKGROUND_HASH up are hashed by other threads while the walk goes on:
    each row still gets its own file's MD5, in every batch of rows, and a change of one
    is seen again."""
    root = tmp_path / "tree"
    bodies: dict[str, bytes] = {}
    for i in range(6):
        (root / f"d{i}").mkdir(parents=True)
        bodies[f"d{i}/big.bin"] = os.urandom(BACKGROUND_HASH + i)
        for j in range(500):  # over a batch of rows, so some are written mid-walk
            bodies[f"d{i}/small{j}.txt"] = b"s%d-%d" % (i, j)
    for path, body in bodies.items():
        (root / path).write_bytes(body)
    result = scan(root, index)
    assert result.hashed == len(bodies) and not result.skipped
    for path, body in bodies.items():
        assert index.require(path)["local_md5"] == hashlib.md5(body).hexdigest(), path
    changed = bytearray(bodies["d3/big.bin"])
    changed[-1] ^= 1
    (root / "d3" / "big.bin").write_bytes(changed)
    again = scan(root, index)
    assert again.hashed == 1
    assert index.require("d3/big.bin")["local_md5"] == hashlib.md5(changed).hexdigest()


def test_scan_marks_removed_subtrees_absent(tmp_path: Path, index: Index) -> None:
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("x")
    scan(root, index)
    (root / "a" / "b" / "f.txt").unlink()
    (root / "a" / "b").rmdir()
    (root / "a").rmdir()
    scan(root, index)
    for path in ("a", "a/b", "a/b/f.txt"):
        assert index.require(path)["local_kind"] is None


def test_scan_skips_excluded_and_leftovers(tmp_path: Path, index: Index) -> None:
    root = tmp_path / "tree"
    (root / ".cache").mkdir(parents=True)
    (root / ".cache" / "x").write_text("x")
    (root / ".f.fusesync-tmp-abcd").write_text("partial")
    result = scan(root, index, (".cache/",))
    assert index.get(".cache") is None and index.get(".cache/x") is None
    assert result.leftovers == [".f.fusesync-tmp-abcd"]
    assert index.get(".f.fusesync-tmp-abcd") is None


def test_scan_never_follows_a_symlinked_directory(tmp_path: Path, index: Index) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "out").symlink_to(outside)
    scan(root, index)
    assert index.get("out/secret") is None
    assert index.require("out")["local_kind"] == "symlink"


def test_row_writer_applies_changes_in_order(index: Index) -> None:
    """Rows are written in runs of one statement, and still in the order they were put."""
    writer = RowWriter(index, size=1000)
    writer.put("a", local_size=1)
    writer.put("b", local_size=2, local_md5="x")
    writer.put("a", local_size=3, local_md5="y")
    writer.put("a", local_size=4)
    writer.put("c", local_size=5)
    assert index.get("a") is None  # nothing written before a flush
    writer.flush()
    assert (index.get("a")["local_size"], index.get("a")["local_md5"]) == (4, "y")
    assert (index.get("b")["local_size"], index.get("b")["local_md5"]) == (2, "x")
    assert index.get("c")["local_size"] == 5

"""The three-way table of DESIGN.md, row by row, on index rows built in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fusesync.index import Index, Row
from fusesync.sync.model import local_sig, remote_sig
from fusesync.sync.plan import Op, Side, local_side, plan_pull, plan_push, remote_side

BASE = dict(
    base_kind="file", base_md5="a" * 32, base_size=3, base_mode=0o644, base_uid=1, base_gid=1,
    base_mtime_ns=10, base_target=None, base_etag="e1",
    base_rsig=remote_sig("file", "e1", 0o100644, 1, 1, 1e-8, None),
)
LOCAL_SAME = dict(
    local_kind="file", local_md5="a" * 32, local_size=3, local_mode=0o100644, local_uid=1,
    local_gid=1, local_mtime_ns=10, local_target=None,
)
REMOTE_SAME = dict(
    remote_kind="file", remote_etag="e1", remote_size=3, remote_mode=0o100644, remote_uid=1,
    remote_gid=1, remote_mtime=1e-8, remote_md5="a" * 32, remote_target=None,
)
LOCAL_CHANGED = {**LOCAL_SAME, "local_md5": "b" * 32, "local_mtime_ns": 20}
REMOTE_CHANGED = {**REMOTE_SAME, "remote_etag": "e2", "remote_md5": "c" * 32}
REMOTE_SAME_AS_LOCAL_CHANGE = {**REMOTE_SAME, "remote_etag": "e3", "remote_md5": "b" * 32}
LOCAL_GONE = {"local_kind": None}
REMOTE_GONE = {"remote_kind": None}


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.db")


def make(index: Index, **cols: Any) -> Row:
    index.upsert("dir/file.txt", **cols)
    return index.require("dir/file.txt")


@pytest.mark.parametrize(
    ("base", "local", "remote", "push", "pull"),
    [
        # L vs B      R vs B           push                 pull
        (BASE, LOCAL_CHANGED, REMOTE_SAME, Op.UPLOAD, None),
        (BASE, LOCAL_SAME, REMOTE_CHANGED, None, Op.FETCH),
        (BASE, LOCAL_CHANGED, REMOTE_SAME_AS_LOCAL_CHANGE, Op.RECORD, Op.RECORD),
        (BASE, LOCAL_CHANGED, REMOTE_CHANGED, Op.CONFLICT, Op.CONFLICT),
        (BASE, LOCAL_GONE, REMOTE_SAME, Op.DELETE_REMOTE, None),
        (BASE, LOCAL_GONE, REMOTE_CHANGED, Op.KEEP_REMOTE, Op.FETCH),
        (BASE, LOCAL_SAME, REMOTE_GONE, None, Op.DELETE_LOCAL),
        (BASE, LOCAL_CHANGED, REMOTE_GONE, Op.UPLOAD, Op.FORGET),
        (BASE, LOCAL_GONE, REMOTE_GONE, Op.FORGET, Op.FORGET),
        (BASE, LOCAL_SAME, REMOTE_SAME, None, None),
        ({}, LOCAL_SAME, {}, Op.UPLOAD, None),
        ({}, {}, REMOTE_SAME, None, Op.FETCH),
        ({}, LOCAL_SAME, REMOTE_SAME, Op.RECORD, Op.RECORD),
        ({}, LOCAL_CHANGED, REMOTE_SAME, Op.CONFLICT, Op.CONFLICT),
    ],
)
def test_three_way_table(index: Index, base, local, remote, push, pull) -> None:
    row = make(index, **base, **local, **remote)
    pushed = plan_push(row, remote_listed=True)
    pulled = plan_pull(row)
    assert (pushed.op if pushed else None) == push
    assert (pulled.op if pulled else None) == pull


def test_push_without_listing_trusts_conditional_writes(index: Index) -> None:
    row = make(index, **BASE, **LOCAL_CHANGED, **REMOTE_CHANGED)
    action = plan_push(row, remote_listed=False)
    assert action is not None and action.op == Op.UPLOAD  # the If-Match finds the conflict


@pytest.mark.parametrize(
    ("change", "side"),
    [
        ({"local_mode": 0o100600}, Side.CHANGED),  # chmod
        ({"local_uid": 2}, Side.CHANGED),  # chown
        ({"local_mtime_ns": 11}, Side.CHANGED),  # touch
        ({"local_ctime_ns": 99, "local_ino": 7}, Side.SAME),  # stat noise only
    ],
)
def test_attribute_changes_count_as_local_changes(index: Index, change, side) -> None:
    row = make(index, **BASE, **{**LOCAL_SAME, **change})
    assert local_side(row) == side


def test_directories_ignore_mtime(index: Index) -> None:
    row = make(
        index, base_kind="dir", base_mode=0o755, base_uid=1, base_gid=1,
        base_rsig=remote_sig("dir", None, 0o40755, 1, 1, None, None),
        local_kind="dir", local_mode=0o40755, local_uid=1, local_gid=1, local_mtime_ns=999,
        remote_kind="dir", remote_mode=0o40755, remote_uid=1, remote_gid=1, remote_mtime=5.0,
    )
    assert local_side(row) == Side.SAME
    assert remote_side(row) == Side.SAME


def test_signatures_distinguish_absence() -> None:
    assert local_sig(None, None, None, None, None, None, None) is None
    assert remote_sig(None, None, None, None, None, None, None) is None
    link = local_sig("symlink", "x", 0o777, 1, 1, 5, "t")
    assert link == local_sig("symlink", "x", 0, 2, 2, 6, "t")  # a link is its target


def test_sql_prefilter_keeps_every_row_with_a_local_change(index: Index) -> None:
    from fusesync.sync.plan import MAYBE_LOCAL_CHANGE

    cases = {
        "same": {**BASE, **LOCAL_SAME},
        "changed": {**BASE, **LOCAL_CHANGED},
        "chmod": {**BASE, **LOCAL_SAME, "local_mode": 0o100600},
        "touch": {**BASE, **LOCAL_SAME, "local_mtime_ns": 11},
        "deleted": {**BASE, **LOCAL_GONE},
        "new": {**LOCAL_SAME},
        "remote-only": {**REMOTE_SAME},
    }
    for path, cols in cases.items():
        index.upsert(path, **cols)
    kept = {row["path"] for row in index.rows(MAYBE_LOCAL_CHANGE)}
    planned = {row["path"] for row in index.rows() if plan_push(row, remote_listed=False)}
    assert planned <= kept
    assert "same" not in kept and "remote-only" not in kept


def test_sql_prefilter_keeps_every_row_the_remote_moved(index: Index) -> None:
    """Pull reads only REMOTE_MOVED rows: it must hold every row pull would act on."""
    from fusesync.sync.plan import REMOTE_MOVED, sql_functions

    sql_functions(index.conn)
    cases = {
        "same": {**BASE, **LOCAL_SAME, **REMOTE_SAME},
        "same-local-edit": {**BASE, **LOCAL_CHANGED, **REMOTE_SAME},
        "changed": {**BASE, **LOCAL_SAME, **REMOTE_CHANGED},
        "chmod": {**BASE, **LOCAL_SAME, **REMOTE_SAME, "remote_mode": 0o100600},
        "deleted": {**BASE, **LOCAL_SAME},
        "new": {**REMOTE_SAME},
        "local-only": {**LOCAL_SAME},
        "both-new": {**LOCAL_CHANGED, **REMOTE_SAME},
    }
    for path, cols in cases.items():
        index.upsert(path, **cols)
    kept = {row["path"] for row in index.rows(REMOTE_MOVED)}
    planned = {row["path"] for row in index.rows() if plan_pull(row)}
    assert planned <= kept
    assert {"changed", "chmod", "deleted", "new", "both-new"} <= planned
    assert not kept & {"same", "same-local-edit", "local-only"}

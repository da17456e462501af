"""Plan: the three-way table of DESIGN.md, one index row at a time.

Pure functions of a row: no I/O, no clock. Compare the local tree L and the remote R each
with the base B, and say what push or pull must do. Nothing here changes anything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from fusesync.index import Index, Row
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import Kind, local_sig, remote_sig


class Side(Enum):
    ABSENT = "absent"  # no base, not there
    NEW = "new"  # no base, there now
    SAME = "same"
    CHANGED = "changed"
    DELETED = "deleted"  # had a base, gone now


class Op(Enum):
    UPLOAD = "upload"  # push: write L to the remote (if_match base etag, or create)
    DELETE_REMOTE = "delete-remote"
    FETCH = "fetch"  # pull: write R into the tree
    DELETE_LOCAL = "delete-local"
    RECORD = "record"  # both sides agree already: record the base
    FORGET = "forget"  # both gone, or R gone and L kept as new: clear the base
    CONFLICT = "conflict"  # push: leave R; pull: keep L, write R beside it
    KEEP_REMOTE = "keep-remote"  # push: L deleted but R changed: R stays, reported


@dataclass(frozen=True, slots=True)
class Action:
    op: Op
    path: str
    kind: str | None  # the kind the action writes or removes
    size: int = 0
    reason: str = ""
    row: Row | None = field(default=None, compare=False, repr=False)  # as planned


MAYBE_LOCAL_CHANGE = """
    dirty != 0 OR base_kind IS NOT local_kind OR local_md5 IS NOT base_md5
    OR local_target IS NOT base_target
    OR (local_kind IS NOT NULL AND ((local_mode & 4095) IS NOT base_mode
        OR local_uid IS NOT base_uid OR local_gid IS NOT base_gid
        OR (local_kind = 'file' AND local_mtime_ns IS NOT base_mtime_ns)))
"""
"""SQL for the rows whose local side may differ from the base: every row `local_side`
would call NEW, CHANGED or DELETED is among them, so a push need not look at the rest."""


EMPTIED_FOLDER = """
    local_kind = 'dir' AND base_kind = 'dir' AND NOT coalesce(remote_marker, 0)
    AND NOT EXISTS (SELECT 1 FROM paths AS inside WHERE inside.parent = paths.path
        AND (inside.local_kind IS NOT NULL
             OR (inside.base_kind IS NULL AND inside.remote_kind IS NOT NULL)))
"""
"""SQL for a folder that stands empty here and that the remote knows only from the keys
below it (no 'path/' marker): unless push writes its marker, the files it held take it
with them on every other cluster. A remote-only entry below is content (a mount shows
it); a synced one deleted here is not."""


def keep_emptied(rows: Iterable[Row], planned: Sequence[Action]) -> list[Action]:
    """The uploads of the markers of emptied folders (rows of EMPTIED_FOLDER) that
    nothing else planned."""
    paths = {action.path for action in planned}
    return [Action(Op.UPLOAD, row["path"], Kind.DIR, row=row)
            for row in rows if row["path"] not in paths]


REMOTE_SIG_COLUMNS = ("remote_kind", "remote_etag", "remote_mode", "remote_uid",
                      "remote_gid", "remote_mtime", "remote_target")
"""What remote_sig is made of, in its order."""
REMOTE_SIDE_COLUMNS = ("base_kind", "base_rsig", *REMOTE_SIG_COLUMNS)
"""What remote_side reads of a row."""

REMOTE_MOVED = f"""
    (base_kind IS NOT NULL) != (remote_kind IS NOT NULL)
    OR base_rsig IS NOT remote_sig({", ".join(REMOTE_SIG_COLUMNS)})
"""
"""SQL for the rows whose remote side may differ from the base: every row `remote_side`
would call NEW, CHANGED or DELETED is among them, so a pull need not look at the rest.
Needs `sql_functions` on the connection."""


def sql_functions(conn: sqlite3.Connection) -> None:
    """Make the functions the SQL above calls known to `conn`."""
    conn.create_function("remote_sig", len(REMOTE_SIG_COLUMNS), remote_sig, deterministic=True)


def excluded(exclude: PathMatcher, row: Row) -> bool:
    """Whether the target's excludes cover this row, whichever side knows it as a dir."""
    is_dir = Kind.DIR in (row["local_kind"], row["remote_kind"], row["base_kind"])
    return exclude.matches(row["path"], is_dir)


def planned_push(index: Index, exclude: PathMatcher, remote_listed: bool) -> list[Action]:
    """What push does, row by row (`plan_push`), and the markers of folders emptied here
    (`keep_emptied`), for the local state the index holds."""
    actions = []
    # Without a listing only local changes matter: let SQLite skip the unchanged rows.
    rows = index.rows() if remote_listed else index.rows(MAYBE_LOCAL_CHANGE)
    for row in rows:
        action = plan_push(row, remote_listed)
        if action is not None and not excluded(exclude, row):
            actions.append(action)
    emptied = index.rows(EMPTIED_FOLDER)
    actions += keep_emptied((r for r in emptied if not excluded(exclude, r)), actions)
    return actions


def local_side(row: Row) -> Side:
    if row["base_kind"] is None:  # (a signature is None exactly when its kind is)
        return Side.NEW if row["local_kind"] is not None else Side.ABSENT
    now = local_sig(
        row["local_kind"], row["local_md5"], row["local_mode"], row["local_uid"],
        row["local_gid"], row["local_mtime_ns"], row["local_target"],
    )
    if now is None:
        return Side.DELETED
    base = local_sig(
        row["base_kind"], row["base_md5"], row["base_mode"], row["base_uid"],
        row["base_gid"], row["base_mtime_ns"], row["base_target"],
    )
    return Side.SAME if now == base else Side.CHANGED


def remote_side(row: Row) -> Side:
    if row["base_kind"] is None:  # no signature to build: a first pull's every row
        return Side.NEW if row["remote_kind"] is not None else Side.ABSENT
    now = remote_now_sig(row)
    if now is None:
        return Side.DELETED
    return Side.SAME if now == row["base_rsig"] else Side.CHANGED


def remote_now_sig(row: Row) -> str | None:
    return remote_sig(  # REMOTE_SIG_COLUMNS, spelled out: this runs for every planned row
        row["remote_kind"], row["remote_etag"], row["remote_mode"], row["remote_uid"],
        row["remote_gid"], row["remote_mtime"], row["remote_target"],
    )


def same_content(row: Row) -> bool:
    """Both sides hold the same thing, whatever their attributes (a false conflict)."""
    kind = row["local_kind"]
    if kind is None or kind != row["remote_kind"]:
        return False
    if kind == Kind.DIR:
        return True
    if kind == Kind.SYMLINK:
        return bool(row["local_target"] == row["remote_target"])
    return row["local_md5"] is not None and row["local_md5"] == row["remote_md5"]


def plan_push(row: Row, remote_listed: bool) -> Action | None:
    """What push does for this row. Without a listing, R is assumed to be the base and
    the conditional writes find out otherwise."""
    local = local_side(row)
    remote = remote_side(row) if remote_listed else (
        Side.SAME if row["base_kind"] is not None else Side.ABSENT
    )
    path = row["path"]
    size = row["local_size"] or 0
    match local, remote:
        case (Side.SAME | Side.ABSENT, _):
            return None
        case (Side.NEW, Side.ABSENT) | (Side.CHANGED, Side.SAME | Side.DELETED):
            return Action(Op.UPLOAD, path, row["local_kind"], size, row=row)
        case (Side.NEW | Side.CHANGED, Side.NEW | Side.CHANGED):
            if same_content(row):
                return Action(Op.RECORD, path, row["local_kind"], row=row)
            return Action(Op.CONFLICT, path, row["local_kind"], reason="changed on both sides",
                          row=row)
        case (Side.DELETED, Side.SAME):
            return Action(Op.DELETE_REMOTE, path, row["base_kind"], row=row)
        case (Side.DELETED, Side.CHANGED | Side.NEW):
            return Action(Op.KEEP_REMOTE, path, row["remote_kind"],
                          reason="deleted here but changed on the remote; the remote copy stays",
                          row=row)
        case (Side.DELETED, Side.DELETED | Side.ABSENT):
            return Action(Op.FORGET, path, None, row=row)
    return None


def plan_pull(row: Row) -> Action | None:
    """What pull does for this row (the remote has just been listed)."""
    local = local_side(row)
    remote = remote_side(row)
    path = row["path"]
    size = row["remote_size"] or 0
    match local, remote:
        case (_, Side.SAME | Side.ABSENT):
            return None
        case (Side.SAME | Side.ABSENT, Side.NEW | Side.CHANGED):
            return Action(Op.FETCH, path, row["remote_kind"], size, row=row)
        case (Side.DELETED, Side.CHANGED):
            return Action(Op.FETCH, path, row["remote_kind"], size, reason="restored", row=row)
        case (Side.NEW | Side.CHANGED, Side.NEW | Side.CHANGED):
            if same_content(row):
                return Action(Op.RECORD, path, row["local_kind"], row=row)
            return Action(Op.CONFLICT, path, row["remote_kind"], size,
                          reason="changed on both sides", row=row)
        case (Side.SAME, Side.DELETED):
            return Action(Op.DELETE_LOCAL, path, row["local_kind"], row=row)
        case (Side.CHANGED, Side.DELETED):
            return Action(Op.FORGET, path, None, row=row,
                          reason="deleted on the remote, changed here: kept")
        case (Side.DELETED, Side.DELETED):
            return Action(Op.FORGET, path, None, row=row)
    return None

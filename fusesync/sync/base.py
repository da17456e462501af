"""How a confirmed transfer becomes the new base of a path, in one place.

An index row changes only after its object is confirmed: these helpers build the column
values that the push and pull executors write once the remote or the tree has answered.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fusesync.index import Row
from fusesync.remote.base import Attrs
from fusesync.sync.localfs import group_name, user_name
from fusesync.sync.model import PERM_BITS, Kind, remote_sig

NO_BASE: dict[str, Any] = dict.fromkeys(
    (
        "base_kind", "base_md5", "base_size", "base_mode", "base_uid", "base_gid",
        "base_owner", "base_group", "base_mtime_ns", "base_target", "base_etag", "base_rsig",
    )
)
NO_LOCAL: dict[str, Any] = dict.fromkeys(
    (
        "local_kind", "local_size", "local_mtime_ns", "local_ctime_ns", "local_ino",
        "local_mode", "local_uid", "local_gid", "local_md5", "local_target",
    )
)
NO_REMOTE: dict[str, Any] = {
    **dict.fromkeys(
        (
            "remote_kind", "remote_etag", "remote_size", "remote_mode", "remote_uid",
            "remote_gid", "remote_owner", "remote_group", "remote_mtime", "remote_md5",
            "remote_target", "remote_enc",
        )
    ),
    "remote_marker": 0,
}


def local_base(row: Row | Mapping[str, Any]) -> dict[str, Any]:
    """Base columns saying: the local side is as the last scan saw it."""
    kind = row["local_kind"]
    uid, gid = row["local_uid"], row["local_gid"]
    return {
        "base_kind": kind,
        "base_md5": row["local_md5"],
        "base_size": row["local_size"],
        "base_mode": (row["local_mode"] or 0) & PERM_BITS,
        "base_uid": uid,
        "base_gid": gid,
        "base_owner": user_name(uid) if uid is not None else None,
        "base_group": group_name(gid) if gid is not None else None,
        "base_mtime_ns": row["local_mtime_ns"] if kind != Kind.DIR else None,
        "base_target": row["local_target"],
    }


def local_from_stat(st: os.stat_result, kind: Kind, md5: str | None, target: str | None
                    ) -> dict[str, Any]:
    """Local columns for a path fusesync has just written."""
    return {
        "local_kind": kind.value,
        "local_size": st.st_size if kind != Kind.DIR else 0,
        "local_mtime_ns": st.st_mtime_ns,
        "local_ctime_ns": st.st_ctime_ns,
        "local_ino": st.st_ino,
        "local_mode": st.st_mode,
        "local_uid": st.st_uid,
        "local_gid": st.st_gid,
        "local_md5": md5,
        "local_target": target,
    }


def attrs_of_local(row: Row) -> Attrs:
    """The s3fs headers for what the scan saw: full st_mode, ids, mtime in seconds."""
    mtime_ns = row["local_mtime_ns"]
    return Attrs(
        mode=row["local_mode"],
        uid=row["local_uid"],
        gid=row["local_gid"],
        mtime=mtime_ns / 1e9 if mtime_ns is not None else None,
    )


def remote_written(row: Row, etag: str | None, attrs: Attrs, marker: bool) -> dict[str, Any]:
    """Remote and remote-base columns for an object push has just written (or a dir)."""
    kind = row["local_kind"]
    uid, gid = row["local_uid"], row["local_gid"]
    return {
        "remote_kind": kind,
        "remote_etag": etag,
        "remote_size": row["local_size"],
        "remote_mode": attrs.mode,
        "remote_uid": attrs.uid,
        "remote_gid": attrs.gid,
        "remote_owner": user_name(uid) if uid is not None else None,
        "remote_group": group_name(gid) if gid is not None else None,
        "remote_mtime": attrs.mtime,
        "remote_md5": row["local_md5"],
        "remote_target": row["local_target"],
        "remote_enc": None,  # sealed uploads say otherwise (sync/sealed.py)
        "remote_marker": int(marker),
        "base_etag": etag,
        "base_rsig": remote_sig(
            kind, etag, attrs.mode, attrs.uid, attrs.gid, attrs.mtime, row["local_target"]
        ),
    }


def remote_base(row: Row) -> dict[str, Any]:
    """Remote-base columns saying: the remote side is as the last listing saw it."""
    return {
        "base_etag": row["remote_etag"],
        "base_rsig": remote_sig(
            row["remote_kind"], row["remote_etag"], row["remote_mode"], row["remote_uid"],
            row["remote_gid"], row["remote_mtime"], row["remote_target"],
        ),
    }


def remote_as_local_base(row: Row) -> dict[str, Any]:
    """Base columns as if the remote version had been pulled: used after a conflict copy,
    so that the kept local version counts as changed and the next push uploads it."""
    mtime = row["remote_mtime"]
    return {
        "base_kind": row["remote_kind"],
        "base_md5": row["remote_md5"],
        "base_size": row["remote_size"],
        "base_mode": (row["remote_mode"] or 0) & PERM_BITS,
        "base_uid": row["remote_uid"],
        "base_gid": row["remote_gid"],
        "base_owner": row["remote_owner"],
        "base_group": row["remote_group"],
        "base_mtime_ns": round(mtime * 1e9) if mtime is not None else None,
        "base_target": row["remote_target"],
        **remote_base(row),
    }

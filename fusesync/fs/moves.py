"""Renames made in the mount, carried to the remote: copies on the server, then deletes.

A rename moves remote-only entries as index rows only (journal.move_tree): each new row
still points at the object under its old path (remote_from). Before push or pull looks
at the remote (not a status or a dry run: they change nothing), every such object is
copied to its new key inside the store (no byte passes through here), the manifest learns
the new path, and only then is the old object deleted. A copy that fails leaves both rows
as they were, for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from fusesync.config import Target
from fusesync.errors import RemoteChanged, RemoteNotFound
from fusesync.fs.journal import Journal
from fusesync.index import Row
from fusesync.remote.base import Remote
from fusesync.sync.manifest import ManifestEntry
from fusesync.sync.model import Kind
from fusesync.sync.push import ManifestCache, merge_manifest
from fusesync.sync.report import Report


@dataclass
class Carried:
    copied: list[tuple[Row, str | None]] = field(default_factory=list)  # (row, new etag)
    waiting: set[str] = field(default_factory=set)  # old paths whose object stays for now


async def carry_moves(journal: Journal, remote: Remote, target: Target, report: Report,
                      concurrency: int, manifest: ManifestCache | None = None) -> set[str]:
    """Carry every pending move; returns the old paths still waiting (their rows must
    stay dirty, so the old objects stay hidden and are not shown at their old path)."""
    moves = journal.moves()
    if not moves:
        return set()
    carried = Carried()
    limiter = trio.CapacityLimiter(concurrency)

    async def copy(row: Row) -> None:
        async with limiter:
            try:
                carried.copied.append((row, await _copy(remote, target, row)))
            except RemoteChanged:
                carried.waiting.add(row["remote_from"])
                report.conflicts.append((row["path"], "its object changed on the remote since "
                                         "the rename; pull, then rename again"))
            except RemoteNotFound:
                carried.waiting.add(row["remote_from"])
                report.skipped.append((row["path"], "its object is gone from the remote"))

    async with trio.open_nursery() as nursery:
        for row in moves:
            nursery.start_soon(copy, row)
    if not carried.copied:
        return carried.waiting
    changes: dict[str, ManifestEntry | None] = {}
    for row, etag in carried.copied:
        changes[row["path"]] = _entry(row, etag)
        changes[row["remote_from"]] = None
    await merge_manifest(remote, target, changes, cache=manifest)

    async def delete(row: Row, etag: str | None) -> None:
        async with limiter:
            key = _key(target, row["remote_from"], row)
            if key is not None:
                try:
                    await remote.delete(key, if_match=row["remote_etag"])
                except RemoteChanged:  # written anew there meanwhile: it stays, listed
                    report.conflicts.append((row["remote_from"], "changed on the remote "
                                             "while its rename was carried; it stays"))
            journal.moved(row, etag)
            report.uploaded += 1
            report.deleted += 1

    async with trio.open_nursery() as nursery:
        for row, etag in carried.copied:
            nursery.start_soon(delete, row, etag)
    return carried.waiting


def _key(target: Target, path: str, row: Row) -> str | None:
    """The object holding `row` at `path`; None for a directory with no marker object."""
    if row["remote_kind"] == Kind.DIR:
        return target.prefix + path + "/" if row["remote_marker"] else None
    return target.prefix + path


async def _copy(remote: Remote, target: Target, row: Row) -> str | None:
    source = _key(target, row["remote_from"], row)
    key = _key(target, row["path"], row)
    if source is None or key is None:
        return None  # a directory only its contents imply: nothing to copy
    return await remote.copy(source, key, if_match=row["remote_etag"])


def _entry(row: Row, etag: str | None) -> ManifestEntry:
    return ManifestEntry(
        kind=row["remote_kind"], etag=etag, md5=row["remote_md5"],
        size=row["remote_size"] or 0, mode=row["remote_mode"], uid=row["remote_uid"],
        gid=row["remote_gid"], owner=row["remote_owner"], group=row["remote_group"],
        mtime=row["remote_mtime"], target=row["remote_target"],
    )

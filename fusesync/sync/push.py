"""Execute, push side: upload what changed locally with conditional writes.

A write the remote refuses (412) is a conflict to report, never an error to retry, except
that an object deleted remotely is written anew (modify beats delete). Each index row
changes only after its object is confirmed; the manifest is written last.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from fusesync.config import Target
from fusesync.errors import FusesyncError, RemoteChanged, SourceChanged
from fusesync.index import Index, Row, RowWriter
from fusesync.remote.base import DIR_CONTENT_TYPE, Attrs, Head, Remote
from fusesync.sync import base as columns
from fusesync.sync.localfs import group_name, user_name
from fusesync.sync.manifest import ManifestBody, ManifestEntry, raw
from fusesync.sync.model import Kind, md5_etag
from fusesync.sync.plan import Action, Op
from fusesync.sync.remote_scan import fetch_manifest_body
from fusesync.sync.report import Progress, Report

if TYPE_CHECKING:
    from fusesync.sync.sealed import Sealing

CONTENT_MD5_META = "fusesync-md5"
"""Our content MD5, kept on each file object: a multipart etag is no MD5 of the content."""


def _holds(head: Head, md5: str | None) -> bool:
    """Whether a remote object holds exactly the content whose MD5 is `md5`."""
    return md5 is not None and md5 in (md5_etag(head.etag), head.metadata.get(CONTENT_MD5_META))


_WRITES_MANIFEST = (Op.UPLOAD, Op.DELETE_REMOTE)


class Pusher:
    """Carries out a push plan. Owns nothing: the engine passes index, remote and report."""

    def __init__(
        self, target: Target, index: Index, remote: Remote, report: Report, progress: Progress,
        sealing: Sealing | None = None,
    ) -> None:
        """`sealing`: encrypts the files the target's encrypt list covers (sync/sealed.py)."""
        self.target = target
        self.sealing = sealing
        self.index = index
        self.remote = remote
        self.report = report
        self.progress = progress
        self.manifest_changes: dict[str, ManifestEntry | None] = {}
        self.manifest_cache: ManifestCache | None = None  # a daemon's, across its pushes
        self.rows = RowWriter(index)

    def key(self, relpath: str) -> str:
        return self.target.prefix + relpath

    async def run(self, actions: Sequence[Action], concurrency: int) -> None:
        async def worker(queue: Iterator[Action]) -> None:
            for action in queue:  # shared: each action of a phase is taken by one worker
                await self._do(action)

        try:
            async with trio.open_nursery() as nursery:
                if any(action.op in _WRITES_MANIFEST for action in actions):
                    nursery.start_soon(self._prefetch_manifest)
                # A pool of workers, not a task per file parked on a limiter (see pull.py),
                # for each phase in turn (_phases).
                for phase in _phases(actions):
                    queue = iter(phase)
                    async with trio.open_nursery() as workers:
                        for _ in range(min(len(phase), concurrency)):
                            workers.start_soon(worker, queue)
        finally:
            self.rows.flush()  # what was confirmed is recorded, even when the run fails
        await self._write_manifest()

    async def _prefetch_manifest(self) -> None:
        """Fetch the manifest while the transfers run, for the merge that ends the push; a
        cluster writing it meanwhile makes that merge's conditional write fail and retry."""
        if self.manifest_cache is None:
            self.manifest_cache = ManifestCache()
        if self.manifest_cache.body is None:
            cache = self.manifest_cache
            cache.body, cache.etag = await fetch_manifest_body(self.remote, self.target)

    async def _do(self, action: Action) -> None:
        row = action.row
        assert row is not None, "plans carry their rows"
        try:
            match action.op:
                case Op.UPLOAD:
                    await self._upload(row)
                case Op.DELETE_REMOTE:
                    await self._delete(row)
                case Op.RECORD:
                    self.rows.put(action.path, **columns.local_base(row),
                                  **columns.remote_base(row))
                case Op.FORGET:
                    self.rows.put(action.path, **columns.NO_BASE)
                case Op.CONFLICT | Op.KEEP_REMOTE:
                    self.report.conflicts.append((action.path, action.reason))
        except SourceChanged:
            self.report.skipped.append((action.path, "changed while being pushed; left for the "
                                        "next push"))
        except FileNotFoundError:
            self.report.skipped.append((action.path, "vanished while being pushed"))

    async def _upload(self, row: Row, create: bool | None = None) -> None:
        path = row["path"]
        kind = row["local_kind"]
        base_etag = row["base_etag"]
        was_folder = row["base_kind"] == Kind.DIR and kind != Kind.DIR
        if create is None:  # over a former folder: its marker's etag is not this key's
            create = row["base_kind"] is None or base_etag is None or was_folder
        attrs = columns.attrs_of_local(row)
        conditions = {"if_none_match": True} if create else {"if_match": base_etag}
        marker = False
        sealing = self.sealing if kind == Kind.FILE and self.sealing is not None \
            and self.sealing.covers(row) else None
        try:
            if was_folder:  # its marker, or the folder SeaweedFS keeps, stands in the way
                await self.remote.delete(self.key(path) + "/")
            if sealing is not None:  # encrypted: a path of its own
                etag = await sealing.upload(self.key(path), self.target.path / path, row, attrs,
                                            conditions, self._bytes)
            elif kind == Kind.FILE:
                etag = await self.remote.upload_file(
                    self.key(path), self.target.path / path, size=row["local_size"],
                    md5=row["local_md5"], attrs=attrs, progress=self._bytes,
                    metadata={CONTENT_MD5_META: row["local_md5"]}, **conditions,
                )
            elif kind == Kind.SYMLINK:
                attrs = Attrs(mode=stat.S_IFLNK | 0o777, uid=attrs.uid, gid=attrs.gid,
                              mtime=attrs.mtime)
                etag = await self.remote.put_bytes(
                    self.key(path), row["local_target"].encode("utf-8", "surrogateescape"),
                    attrs=attrs, **conditions,
                )
            else:
                if row["base_kind"] in (Kind.FILE, Kind.SYMLINK) and base_etag:
                    # a file became this folder: its object goes, or both would stand
                    await self.remote.delete(self.key(path), if_match=base_etag)
                marker = bool(row["remote_marker"]) or self._is_empty_dir(path)
                etag = None
                if marker:
                    etag = await self.remote.put_bytes(
                        self.key(path) + "/", b"", attrs=attrs, content_type=DIR_CONTENT_TYPE,
                        **({} if create else conditions),
                    )
        except RemoteChanged:
            head = await self.remote.head(self.key(path))
            if head is None and not create:
                await self._upload(row, create=True)  # deleted remotely: modify beats delete
                return
            if head is None or not (
                sealing.holds(head, row) if sealing else _holds(head, row["local_md5"])
            ):
                self.report.conflicts.append((path, "changed on the remote since the last "
                                              "sync; pull to resolve"))
                return
            # The remote already holds this content: our own write whose row a killed run
            # never recorded, or the same edit made elsewhere. Either way, it is the base.
            etag, attrs = head.etag, head.attrs
        written = columns.remote_written(row, etag, attrs, marker)
        if sealing is not None:
            written.update(sealing.row_fields(row))
        self.rows.put(path, **columns.local_base(row), **written)
        entry = ManifestEntry(
            kind=kind, etag=etag, md5=row["local_md5"], size=row["local_size"] or 0,
            mode=attrs.mode, uid=attrs.uid, gid=attrs.gid,
            owner=user_name(attrs.uid) if attrs.uid is not None else None,
            group=group_name(attrs.gid) if attrs.gid is not None else None,
            mtime=attrs.mtime, target=row["local_target"],
        )
        self.manifest_changes[path] = sealing.manifest_entry(entry, row) if sealing else entry
        if kind != Kind.DIR:
            self.report.uploaded += 1
            self.report.uploaded_bytes += row["local_size"] or 0
            self.progress.advance(files=1)

    def _bytes(self, count: int) -> None:
        self.progress.advance(size=count)  # called from a transfer thread

    def _is_empty_dir(self, path: str) -> bool:
        return self.index.count("parent = ? AND local_kind IS NOT NULL", (path,)) == 0

    async def _delete(self, row: Row) -> None:
        path = row["path"]
        key = self.key(path) + ("/" if row["base_kind"] == Kind.DIR else "")
        try:
            # A folder with no marker has no object; a store that keeps folders as
            # directories (SeaweedFS) keeps it even so, empty, until 'path/' is deleted
            # (only ever an empty one: it leaves a folder that holds keys alone).
            await self.remote.delete(key, if_match=row["base_etag"])
        except RemoteChanged:
            if await self.remote.head(key) is not None:
                self.report.conflicts.append(
                    (path, "deleted here but changed on the remote; the remote copy stays")
                )
                return
        self.rows.put(path, **columns.NO_BASE, **columns.NO_REMOTE)
        self.manifest_changes[path] = None
        if row["base_kind"] != Kind.DIR:
            self.report.deleted += 1

    async def _write_manifest(self) -> None:
        if self.manifest_changes:
            await merge_manifest(self.remote, self.target, self.manifest_changes,
                                 cache=self.manifest_cache)


def _phases(actions: Sequence[Action]) -> list[list[Action]]:
    """The push's actions in the order a store that keeps folders as directories
    (SeaweedFS) needs when a file and a folder trade places: first what takes a file's
    object away (its delete, or a folder that took its place: a write below a file whose
    delete runs at the same moment can leave both standing), then the folders' deletes,
    deepest first (a folder is only deleted once empty), then the rest."""
    first: list[Action] = []
    folders: dict[int, list[Action]] = {}
    rest: list[Action] = []
    for action in actions:
        row = action.row
        base_kind = None if row is None else row["base_kind"]
        if action.op == Op.DELETE_REMOTE and base_kind == Kind.DIR:
            folders.setdefault(action.path.count("/"), []).append(action)
        elif action.op == Op.DELETE_REMOTE or (
            action.op == Op.UPLOAD and row is not None and row["local_kind"] == Kind.DIR
            and base_kind in (Kind.FILE, Kind.SYMLINK)
        ):
            first.append(action)
        else:
            rest.append(action)
    return [first, *(folders[depth] for depth in sorted(folders, reverse=True)), rest]


@dataclass
class ManifestCache:
    """The manifest as a long-lived process (the mount daemon) last wrote it: its next
    merge starts from it instead of fetching and decoding every entry again, encodes only
    the shards its changes touch, and the conditional write still finds out when another
    cluster wrote meanwhile."""

    body: ManifestBody | None = None
    etag: str | None = None


async def merge_manifest(remote: Remote, target: Target,
                         changes: dict[str, ManifestEntry | None], attempts: int = 5,
                         cache: ManifestCache | None = None) -> None:
    """Merge `changes` (None: gone) into the manifest, conditionally, retrying on a race.
    The shards it leaves alone go out again as they were read (ManifestBody.read)."""
    for _ in range(attempts):
        if cache is not None and cache.body is not None:
            body, etag = cache.body, cache.etag
            cache.body = None  # set again only once this merge is written
        else:
            body, etag = await fetch_manifest_body(remote, target)
        for path, entry in changes.items():
            body.set(path, None if entry is None else raw(entry))
        try:
            written = await remote.put_bytes(
                target.manifest_key, body.encode(),
                content_type="application/gzip",
                **({"if_match": etag} if etag else {"if_none_match": True}),
            )
        except RemoteChanged:
            continue  # another cluster wrote it meanwhile: merge again
        if cache is not None:
            cache.body, cache.etag = body, written
        return
    raise FusesyncError("the manifest kept changing under this run; run it again")

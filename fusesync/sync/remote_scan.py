"""Detect, remote side: one paginated LIST of the prefix plus one GET of the manifest.

HEAD only objects whose listed etag differs from their manifest entry (another tool wrote
them). Keys that could escape the tree or clash are skipped and reported, never recorded.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import trio

from fusesync.config import Target
from fusesync.crypt.stream import ENC_META, TAG_META, plain_size
from fusesync.errors import RemoteUnchanged, one_error
from fusesync.index import Index
from fusesync.remote.base import Listed, Remote
from fusesync.sync import manifest as manifest_codec
from fusesync.sync.manifest import ManifestEntry, RawEntries
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Kind, md5_etag
from fusesync.sync.ranges import (
    LISTED_MANIFEST,
    NO_LISTING,
    S3_PAGE,
    LastListing,
    Range,
    RangeCut,
    key_ranges,
    last_listing,
    meet,
    settle,
)

REMOTE_COLUMNS = (
    "remote_kind",
    "remote_etag",
    "remote_size",
    "remote_mode",
    "remote_uid",
    "remote_gid",
    "remote_owner",
    "remote_group",
    "remote_mtime",
    "remote_md5",
    "remote_target",
    "remote_marker",
    "remote_enc",
)
_HEAD_CONCURRENCY = 16


@dataclass
class RemoteScan:
    objects: int = 0
    manifest: RawEntries = field(default_factory=dict)
    manifest_etag: str | None = None
    built_from: str | None = None
    """The manifest version every row came from (none from a HEAD); None: not so."""
    moved: list[str] = field(default_factory=list)
    """Paths whose remote side this listing found changed, new or gone (once recorded)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.objects == 0


async def fetch_manifest(
    remote: Remote, target: Target, if_none_match: str | None = None
) -> tuple[RawEntries, str | None]:
    """The manifest's entries as decoded (plain dicts), and its etag (None: none yet);
    RemoteUnchanged while it is still the version `if_none_match`."""
    got = await remote.get_bytes(target.manifest_key, if_none_match=if_none_match)
    return (manifest_codec.decode_raw(got[0]), got[1]) if got is not None else ({}, None)


async def fetch_manifest_body(
    remote: Remote, target: Target
) -> tuple[manifest_codec.ManifestBody, str | None]:
    """The manifest as a body to merge changes into (its shards kept as stored), and its
    etag (None: none yet)."""
    got = await remote.get_bytes(target.manifest_key)
    if got is None:
        return manifest_codec.ManifestBody({}), None
    return manifest_codec.ManifestBody.read(got[0]), got[1]


async def load_manifest(
    remote: Remote, target: Target
) -> tuple[dict[str, ManifestEntry], str | None]:
    got = await remote.get_bytes(target.manifest_key)
    if got is None:
        return {}, None
    data, etag = got
    return manifest_codec.decode(data), etag


async def scan_remote(
    remote: Remote, target: Target, index: Index, exclude: PathMatcher
) -> RemoteScan:
    """Record the remote's current state of every path in `index` (remote_* columns)."""
    rows, result = await list_remote(remote, target, exclude, last_listing(index, target))
    record_remote(index, rows, result)
    return result


async def list_remote(
    remote: Remote, target: Target, exclude: PathMatcher, last: LastListing = NO_LISTING
) -> tuple[dict[str, tuple[Any, ...]] | None, RemoteScan]:
    """The remote's state of every path, from the listing and the manifest (fetched at
    once); touches no index, so it can run while the local tree is being scanned.
    `last` (`last_listing`): what the index holds, to list in parallel ranges and, when
    the manifest is still the version the index's rows were built from and every key is
    as they say, to answer None (no row moved) without reading the manifest at all.
    With no keys known (a first pull), the manifest's paths are the guess for the
    ranges, so the manifest comes first."""
    result = RemoteScan()
    prefix = target.prefix
    unchanged = False

    async def take_manifest(last_seen: str | None = None) -> None:
        nonlocal unchanged
        try:
            result.manifest, result.manifest_etag = await fetch_manifest(
                remote, target, if_none_match=last_seen
            )
        except RemoteUnchanged:
            result.manifest_etag, unchanged = last_seen, True

    known = list(last.etags)
    manifest_first = not known
    if manifest_first:  # else page after page: 5,000 keys listed in 115-145 ms, 80-105 so
        await take_manifest()
        known = [prefix + path for path in result.manifest  # a folder is no key (meet)
                 if (entry := _entry(result.manifest, path)) is None or entry["kind"] != Kind.DIR]
    ranges = key_ranges(known, S3_PAGE)
    taken: list[Range | None] = [None] * len(ranges)

    async def take(i: int) -> None:
        taken[i] = await _take_range(remote, prefix, *ranges[i])

    with one_error():
        async with trio.open_nursery() as nursery:
            if not manifest_first:
                nursery.start_soon(take_manifest, last.manifest_etag)
            for i in range(len(ranges)):
                nursery.start_soon(take, i)
        if not meet(taken):  # a store that lists in its own order
            taken = [await _take_range(remote, prefix, None, None)]
    settled = settle([each for each in taken if each is not None], prefix, exclude)
    result.objects = settled.objects
    result.skipped.extend(settled.skipped)
    files, markers, dirs = settled.files, settled.markers, settled.dirs
    if unchanged:
        if settled.etags() == last.etags:
            result.built_from = last.manifest_etag
            return None, result
        await take_manifest()  # keys moved, not the manifest: another tool, or new excludes

    rows: dict[str, tuple[Any, ...]] = {}
    foreign: list[tuple[str, Listed]] = []
    manifest = result.manifest
    for rel, obj in files.items():
        entry = _entry(manifest, rel)
        if entry is not None and entry.get("etag") == obj.etag and entry["kind"] != Kind.DIR:
            rows[rel] = _row_from_entry(entry, obj)
        else:
            foreign.append((rel, obj))
    for rel in dirs:
        entry = _entry(manifest, rel) or {}
        mode = entry.get("mode") if entry.get("kind") == Kind.DIR else None
        rows[rel] = (
            Kind.DIR.value, markers[rel].etag if rel in markers else None, 0,
            mode or (stat.S_IFDIR | DEFAULT_DIR_MODE),
            entry.get("uid"), entry.get("gid"), entry.get("owner"), entry.get("group"),
            entry.get("mtime"), None, None, int(rel in markers), None,
        )

    limiter = trio.CapacityLimiter(_HEAD_CONCURRENCY)

    async def head_one(rel: str, obj: Listed) -> None:
        async with limiter:
            try:
                row = await _row_from_head(remote, obj)
            except _Unrecordable as exc:
                result.skipped.append((obj.key, str(exc)))
                return
        if row is not None:
            rows[rel] = row

    async with trio.open_nursery() as nursery:
        for rel, obj in foreign:
            nursery.start_soon(head_one, rel, obj)
    if not foreign:  # else HEADs, not the manifest, said what some rows hold
        result.built_from = result.manifest_etag
    return rows, result


async def _take_range(
    remote: Remote, prefix: str, start_after: str | None, last: bytes | None
) -> Range | None:
    """The keys after `start_after` up to and including `last` (None: no bound), or None
    when the store does not list them in UTF-8 byte order (as S3 does)."""
    cut = RangeCut(start_after, last)
    listing = remote.list(prefix, start_after)
    try:
        async for obj in listing:
            if not cut.take(obj):
                break
    finally:
        if isinstance(listing, AsyncGenerator):  # stopped early: close its pages
            await listing.aclose()
    return cut.range()


def record_remote(
    index: Index, rows: dict[str, tuple[Any, ...]] | None, listing: RemoteScan
) -> None:
    """Write what changed since the last listing: new or changed rows, and paths gone
    (noted in `listing.moved`); then the manifest version they were built from. None: the
    rows stand as they are."""
    if rows is None:
        return
    names = ", ".join(REMOTE_COLUMNS)
    known = {
        row[0]: tuple(row[1:])
        for row in index.conn.execute(
            f"SELECT path, {names} FROM paths WHERE remote_kind IS NOT NULL"
        )
    }
    changed = [(path, *row) for path, row in rows.items() if known.get(path) != row]
    gone = [path for path in known if path not in rows]
    with index.transaction():
        index.upsert_many(REMOTE_COLUMNS, changed)
        cleared = tuple(0 if name == "remote_marker" else None for name in REMOTE_COLUMNS)
        index.upsert_many(REMOTE_COLUMNS, ((path, *cleared) for path in gone))
        if listing.built_from:  # after the rows: writing them forgets it (schema V5)
            index.set_meta(LISTED_MANIFEST, listing.built_from)
    listing.moved = [*(row[0] for row in changed), *gone]


def _entry(manifest: RawEntries, rel: str) -> dict[str, Any] | None:
    """`rel`'s manifest entry, as decoded: read in place, as building an entry object for
    each of thousands of paths would cost a pull more than the rest of its work on them."""
    entry = manifest.get(rel)
    if isinstance(entry, dict) and isinstance(entry.get("kind"), str):
        return entry
    return None


def _row_from_entry(entry: dict[str, Any], obj: Listed) -> tuple[Any, ...]:
    kind = Kind(entry["kind"]) if entry["kind"] in Kind.__members__.values() else Kind.FILE
    default = DEFAULT_FILE_MODE if kind == Kind.FILE else 0o777
    enc = entry.get("enc")
    if enc:  # ciphertext: the plaintext's size, and a keyed tag where the MD5 stands
        size, md5 = entry.get("size", 0), entry.get("md5")
    else:
        size, md5 = obj.size, entry.get("md5") or md5_etag(obj.etag)
    mtime = entry.get("mtime")
    return (
        kind.value, obj.etag, size, entry.get("mode") or (kind.type_bits | default),
        entry.get("uid"), entry.get("gid"), entry.get("owner"), entry.get("group"),
        mtime if mtime is not None else obj.last_modified,
        md5, entry.get("target"), 0, enc,
    )


class _Unrecordable(Exception):
    """An object the index cannot record as it is; skipped, with this reason."""


async def _row_from_head(remote: Remote, obj: Listed) -> tuple[Any, ...] | None:
    """Attributes of an object another tool wrote: its s3fs headers, or defaults."""
    head = await remote.head(obj.key)
    if head is None:  # deleted between LIST and HEAD: absent
        return None
    attrs = head.attrs
    mode = attrs.mode
    kind = Kind.FILE
    target = None
    if mode is not None and stat.S_ISLNK(mode):
        kind = Kind.SYMLINK
        got = await remote.get_bytes(obj.key)
        if got is None:
            return None
        try:
            target = got[0].decode("utf-8")
        except UnicodeDecodeError:  # the index, like S3 keys, holds UTF-8 only
            raise _Unrecordable("symlink target is not valid UTF-8") from None
    elif mode is None or not stat.S_ISREG(mode):
        mode = stat.S_IFREG | DEFAULT_FILE_MODE
    size, md5 = head.size, md5_etag(head.etag)
    enc = head.metadata.get(ENC_META) if kind == Kind.FILE else None
    if enc:  # ciphertext: the plaintext's size, and the keyed tag, never the etag's MD5
        size, md5 = plain_size(head.size) or 0, head.metadata.get(TAG_META)
    return (
        kind.value, head.etag, size, mode, attrs.uid, attrs.gid, None, None,
        attrs.mtime if attrs.mtime is not None else head.last_modified,
        md5, target, 0, enc,
    )

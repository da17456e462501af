"""The manifest: every path's attributes in one object beside the prefix.

A LIST plus one GET of the manifest gives pull all attributes with no HEAD per object.
Entries are keyed by relative path; the object is gzip-compressed JSON, versioned.

A long-lived writer, the mount daemon, keeps the entries between pushes (`ManifestBody`)
and, after its first write, keeps them in shards, each compressed into a gzip member of
its own: a change encodes and compresses again only its shard. gzip allows a file of
several members, which decompress as their concatenation, one JSON text, which is all a
reader (gunzip included) sees. A push through the mount of a tree of 50,000 files had
spent ~70 ms encoding every entry again for one changed file.

Push merges its changes into the entries as plain dicts (`decode_raw`, `encode_raw`),
never building an entry object for the thousands it leaves alone. JSON goes through
orjson, 5-10x the standard library's speed; like the index, it holds UTF-8 text only.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, fields
from typing import Any

import orjson

FORMAT = 1


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    kind: str
    etag: str | None = None
    md5: str | None = None
    size: int = 0
    mode: int | None = None  # full st_mode, type bits included
    uid: int | None = None
    gid: int | None = None
    owner: str | None = None
    group: str | None = None
    mtime: float | None = None
    target: str | None = None
    enc: str | None = None  # the encryption format, when the body is ciphertext
    key: str | None = None  # then: the id of the key it is sealed under (hex)


_FIELDS = tuple(f.name for f in fields(ManifestEntry))
_KNOWN = frozenset(_FIELDS)

RawEntries = dict[str, dict[str, Any]]
"""Entries as the manifest holds them: path -> the entry's fields that are set."""


def raw(entry: ManifestEntry) -> dict[str, Any]:
    # getattr per field, not dataclasses.asdict: asdict deep-copies, 10x slower here
    return {k: v for k in _FIELDS if (v := getattr(entry, k)) is not None}


def encode(entries: dict[str, ManifestEntry]) -> bytes:
    return encode_raw({path: raw(entry) for path, entry in entries.items()})


def encode_raw(entries: RawEntries) -> bytes:
    """The manifest object in one gzip member, entries sorted: a one-off write (the CLI's
    push), which has no shards to reuse."""
    body = {"format": FORMAT, "entries": entries}
    return _member(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def decode_raw(data: bytes) -> RawEntries:
    """The entries of a manifest, unchecked; anything unreadable counts as no manifest
    (HEADs fill in)."""
    try:
        body: Any = orjson.loads(gzip.decompress(data))
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            return {}
        entries = body["entries"]
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, TypeError, KeyError, EOFError):
        return {}


def decode(data: bytes) -> dict[str, ManifestEntry]:
    """Parse a manifest into entries; malformed entries are left out."""
    return {
        path: ManifestEntry(**{k: v for k, v in entry.items() if k in _KNOWN})
        for path, entry in decode_raw(data).items()
        if isinstance(entry, dict) and isinstance(entry.get("kind"), str)
    }


SHARDS = 64
"""Gzip members the entries are spread over, by a hash of the path: a change re-encodes a
64th of them; each member costs ~20 bytes of gzip header."""


def _member(text: bytes) -> bytes:
    # level 1: a fifth of level 9's time on 5,000 entries for 12% more bytes
    return gzip.compress(text, 1, mtime=0)


_HEAD = _member(b'{"entries":{')
_TAIL = _member(b'},"format":%d}' % FORMAT)


def _shard(path: str) -> int:
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % SHARDS


class ManifestBody:
    """Raw entries and their encoding. The first `encode()` encodes every entry at once
    (a one-off write, the CLI's push, needs no more); later ones keep the entries in
    shards and compress again only those that `set` changed since the call before. The
    JSON text is that of one `orjson.dumps` of the whole document, save the order of the
    entries (later: by shard, then as they came), which no reader depends on."""

    def __init__(self, entries: RawEntries) -> None:
        self._entries: RawEntries | None = entries  # until the shards are made
        self._blocks: list[RawEntries] = []
        # per shard: its member, text led by a comma (None: to encode again)
        self._members: list[bytes | None] = [None] * SHARDS
        self._first: tuple[int, bytes] | None = None  # the first shard's, without the comma
        self._encoded = False

    def set(self, path: str, entry: dict[str, Any] | None) -> None:
        """Add, replace or (None) remove one path's entry."""
        if self._entries is not None:
            if entry is None:
                self._entries.pop(path, None)
            else:
                self._entries[path] = entry
            return
        shard = _shard(path)
        block = self._blocks[shard]
        if entry is not None:
            block[path] = entry
        elif block.pop(path, None) is None:
            return
        self._members[shard] = None
        if self._first is not None and self._first[0] == shard:
            self._first = None

    def encode(self) -> bytes:
        """The manifest object: at first one gzip member; then one for the head, one per
        shard, one for the tail."""
        if self._entries is not None:
            if not self._encoded:
                self._encoded = True
                return encode_raw(self._entries)
            self._blocks = [{} for _ in range(SHARDS)]
            for path, entry in self._entries.items():
                self._blocks[_shard(path)][path] = entry
            self._entries = None
        parts = [_HEAD]
        for shard, block in enumerate(self._blocks):
            if not block:
                continue
            if len(parts) == 1:  # the first entries: no comma before them
                if self._first is None or self._first[0] != shard:
                    self._first = (shard, _member(orjson.dumps(block)[1:-1]))
                parts.append(self._first[1])
                continue
            member = self._members[shard]
            if member is None:
                member = self._members[shard] = _member(b"," + orjson.dumps(block)[1:-1])
            parts.append(member)
        parts.append(_TAIL)
        return b"".join(parts)

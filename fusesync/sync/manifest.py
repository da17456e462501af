"""The manifest: every path's attributes in one object beside the prefix.

A LIST plus one GET of the manifest gives pull all attributes with no HEAD per object.
Entries are keyed by relative path; the object is gzip-compressed JSON, versioned.

The entries are kept in shards (`ManifestBody`), each compressed into a gzip member of
its own: a change encodes and compresses again only its shard. gzip allows a file of
several members, which decompress as their concatenation, one JSON text, which is all a
reader (gunzip included) sees. A writer that reads the manifest back (a push) keeps the
shards it does not touch as they came; the mount daemon keeps its body between pushes.
A push of one file into a tree of 50,000 had spent ~70 ms encoding every entry again.
Entries stay plain dicts (`decode_raw`), never an entry object for each of thousands.
JSON goes through orjson, 5-10x the standard library's speed; like the index, it holds
UTF-8 text only.
"""

from __future__ import annotations

import gzip
import json
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


_HEAD_TEXT = b'{"entries":{'
_TAIL_TEXT = b'},"format":%d}' % FORMAT
_HEAD, _TAIL = _member(_HEAD_TEXT), _member(_TAIL_TEXT)


def _shard(path: str) -> int:
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % SHARDS


class ManifestBody:
    """Raw entries and their encoding, in shards: `encode()` compresses again only the
    shards that `set` changed since the call before. A body `read` from a manifest
    written so keeps its shards as they came and decodes one only when `set` touches it:
    a push of one file into a tree of 5,000 had decoded and encoded every entry again
    (~14 ms). The JSON text is that of one `orjson.dumps` of the whole document, save the
    order of the entries (by shard, then as they came), which no reader depends on."""

    def __init__(self, entries: RawEntries) -> None:
        self._entries: RawEntries | None = entries  # until the shards are made
        self._blocks: list[RawEntries | None] = []  # None: as read, not decoded yet
        # per shard: its member, text led by a comma (None: to encode again)
        self._members: list[bytes | None] = [None] * SHARDS
        self._first: tuple[int, bytes] | None = None  # the first shard's, without the comma
        self._read: list[bytes | None] = [None] * SHARDS  # each shard's member as read

    @classmethod
    def read(cls, data: bytes) -> ManifestBody:
        """The body of a stored manifest: its shards kept when it is in this class's
        layout, else every entry decoded (`decode_raw`)."""
        stored = _stored_shards(data)
        if stored is None:
            return cls(decode_raw(data))
        body = cls({})
        body._entries = None
        body._blocks = [{} for _ in range(SHARDS)]
        for shard, member, first in stored:
            body._blocks[shard] = None
            body._read[shard] = member
            if first:
                body._first = (shard, member)
            else:
                body._members[shard] = member
        return body

    def _block(self, shard: int) -> RawEntries | None:
        """A shard's entries, decoded from its member if need be; None when that member
        holds a path of another shard (a manifest not of this class after all): then the
        body has gone back to every entry decoded."""
        block = self._blocks[shard]
        if block is not None:
            return block
        block = _inflate(self._stored(shard))
        if any(_shard(path) != shard for path in block):
            entries: RawEntries = {}
            for other, kept in enumerate(self._blocks):
                entries.update(kept if kept is not None else _inflate(self._stored(other)))
            self._entries = entries
            return None
        self._blocks[shard] = block
        return block

    def _stored(self, shard: int) -> bytes:
        """The member a shard not decoded yet was read in."""
        member = self._read[shard]
        assert member is not None, "a shard not decoded was read"
        return member

    def set(self, path: str, entry: dict[str, Any] | None) -> None:
        """Add, replace or (None) remove one path's entry."""
        shard = _shard(path)
        block = self._block(shard) if self._entries is None else None
        if self._entries is not None:
            if entry is None:
                self._entries.pop(path, None)
            else:
                self._entries[path] = entry
            return
        assert block is not None, "decoded, or the body holds every entry again"
        if entry is not None:
            block[path] = entry
        elif block.pop(path, None) is None:
            return
        self._members[shard] = None
        if self._first is not None and self._first[0] == shard:
            self._first = None

    def encode(self) -> bytes:
        """The manifest object: a gzip member for the head, one per shard, one for the
        tail."""
        if self._entries is not None:
            self._blocks = [{} for _ in range(SHARDS)]
            for path, entry in self._entries.items():
                blocks = self._blocks[_shard(path)]
                assert blocks is not None
                blocks[path] = entry
            self._entries = None
            self._members = [None] * SHARDS
            self._first = None
        parts = [_HEAD]
        for shard, stored in enumerate(self._blocks):
            if stored is not None and not stored:
                continue
            if len(parts) == 1:  # the first entries: no comma before them
                if self._first is None or self._first[0] != shard:
                    block = self._block(shard)
                    if block is None:
                        return self.encode()
                    self._first = (shard, _member(orjson.dumps(block)[1:-1]))
                parts.append(self._first[1])
                continue
            member = self._members[shard]
            if member is None:
                block = self._block(shard)
                if block is None:
                    return self.encode()
                member = self._members[shard] = _member(b"," + orjson.dumps(block)[1:-1])
            parts.append(member)
        parts.append(_TAIL)
        return b"".join(parts)


_JSON = json.JSONDecoder()


def _inflate(member: bytes) -> RawEntries:
    """The entries of one shard's member (its text is a run of `"path":{...}` pairs, led
    by a comma unless it came first)."""
    try:
        text = zlib.decompress(member, 31)
        block = orjson.loads(b"{" + (text[1:] if text.startswith(b",") else text) + b"}")
    except (zlib.error, ValueError):  # unreadable counts as absent, as in decode_raw
        return {}
    return block if isinstance(block, dict) else {}


def _stored_shards(data: bytes) -> list[tuple[int, bytes, bool]] | None:
    """(shard, member, first) for each shard of a manifest in ManifestBody's layout (a
    head member, one per shard in order, the first without its comma, a tail); None for
    any other (one member, as `encode_raw` writes, or anything unexpected)."""
    members: list[tuple[bytes, bytes]] = []
    rest = data
    try:
        while rest:
            inflate = zlib.decompressobj(31)
            text = inflate.decompress(rest)
            if not inflate.eof:
                return None
            members.append((rest[: len(rest) - len(inflate.unused_data)], text))
            rest = inflate.unused_data
    except zlib.error:
        return None
    if len(members) < 2 or members[0][1] != _HEAD_TEXT or members[-1][1] != _TAIL_TEXT:
        return None
    stored = []
    last = -1
    for number, (member, text) in enumerate(members[1:-1]):
        first = number == 0
        if text.startswith(b",") == first:
            return None
        try:  # the shard of its first path; _block checks every other path when decoded
            path, _ = _JSON.raw_decode(text.decode("utf-8"), 0 if first else 1)
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(path, str):
            return None
        shard = _shard(path)
        if shard <= last:
            return None
        stored.append((shard, member, first))
        last = shard
    return stored

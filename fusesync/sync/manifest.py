"""The manifest: every path's attributes in one object beside the prefix.

A LIST plus one GET of the manifest gives pull all attributes with no HEAD per object.
Entries are keyed by relative path; the object is gzip-compressed JSON, versioned.

Push merges its changes into the entries as plain dicts (`decode_raw`, `encode_raw`),
never building an entry object for the thousands it leaves alone. JSON goes through
orjson, 5-10x the standard library's speed; like the index, it holds UTF-8 text only.
"""

from __future__ import annotations

import gzip
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
    body = {"format": FORMAT, "entries": entries}
    text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    # level 1: a fifth of level 9's time on 5,000 entries for 12% more bytes
    return gzip.compress(text, 1, mtime=0)


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

"""The manifest: every path's attributes in one object beside the prefix.

A LIST plus one GET of the manifest gives pull all attributes with no HEAD per object.
Entries are keyed by relative path; the object is gzip-compressed JSON, versioned.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, fields
from typing import Any

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


def encode(entries: dict[str, ManifestEntry]) -> bytes:
    # getattr per field, not dataclasses.asdict: asdict deep-copies, 10x slower here
    body = {
        "format": FORMAT,
        "entries": {
            path: {k: v for k in _FIELDS if (v := getattr(e, k)) is not None}
            for path, e in sorted(entries.items())
        },
    }
    # level 1: a fifth of level 9's time on 5,000 entries for 12% more bytes
    return gzip.compress(json.dumps(body, separators=(",", ":")).encode(), 1, mtime=0)


def decode(data: bytes) -> dict[str, ManifestEntry]:
    """Parse a manifest; anything unreadable counts as no manifest (HEADs fill in)."""
    try:
        body: Any = json.loads(gzip.decompress(data))
        if body.get("format") != FORMAT:
            return {}
        known = set(_FIELDS)
        return {
            path: ManifestEntry(**{k: v for k, v in entry.items() if k in known})
            for path, entry in body["entries"].items()
            if isinstance(entry, dict) and isinstance(entry.get("kind"), str)
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError, EOFError):
        return {}

"""What the last listing of a target saw, and the ranges a new listing is split into.

No trio here, nor anything that imports it: a pull sends the first pages of its listing
(sync/head_start.py) before Python has imported the rest of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fusesync.config import Target
from fusesync.index import Index
from fusesync.remote.shapes import LIST_PAGE

S3_PAGE = LIST_PAGE  # keys per page of a listing, as S3Remote asks for them

LISTED_MANIFEST = "listed_manifest"
"""Meta key: the version of the manifest that the remote_* columns were built from, every
row from its entries (none from a HEAD). Writing any remote_* column elsewhere deletes it
(schema V5), so it never outlives the rows it speaks for."""


@dataclass(frozen=True)
class LastListing:
    """What the index holds of the remote: the etag of each key the last listing saw, and
    the manifest version its rows were built from (None: unknown)."""

    etags: dict[str, str | None]
    manifest_etag: str | None = None


NO_LISTING = LastListing({})


def last_listing(index: Index, target: Target) -> LastListing:
    """The keys the last listing saw under the target's prefix, and the manifest version
    the rows were built from, while no other writer has touched them."""
    etags = {
        target.prefix + path + ("/" if marker else ""): etag
        for path, marker, etag in index.conn.execute(
            "SELECT path, remote_marker, remote_etag FROM paths WHERE remote_kind IS NOT NULL "
            "AND (remote_kind != 'dir' OR remote_marker)"
        )
    }
    return LastListing(etags, index.meta(LISTED_MANIFEST) or None)


def key_ranges(known: Sequence[str], page: int) -> list[tuple[str | None, bytes | None]]:
    """Split the key space at every (page - 1)th known key into ranges (after this key,
    up to and including that one) that together cover every key once. A store lists one
    range a page at a time, but the ranges can be listed at once: a listing of 50 pages
    takes the time of a few. Unchanged, a range fits one page, and the key after its end
    on that page says it is complete."""
    ordered = sorted(key.encode("utf-8", "surrogateescape") for key in known)
    cuts = ordered[page - 2 :: page - 1] if page > 1 else []
    starts: list[str | None] = [None, *(c.decode("utf-8", "surrogateescape") for c in cuts)]
    ends: list[bytes | None] = [*cuts, None]
    return list(zip(starts, ends, strict=True))

"""What the last listing of a target saw, the ranges a new listing is split into, and how
the keys listed in them are taken.

No trio here, nor anything that imports it: a pull sends the first pages of its listing
(sync/head_start.py) before Python has imported the rest of the run, and a pull that
finds nothing new in them is over before it would have been.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from fusesync.config import Target
from fusesync.index import Index
from fusesync.remote.base import Listed
from fusesync.remote.shapes import LIST_PAGE
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import unsafe_reason

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


@dataclass(frozen=True)
class Range:
    """The keys a range was listed with, in order."""

    objects: list[Listed]
    after: str | None
    """The first key the store listed past the range's end (None: the listing ended)."""


class RangeCut:
    """Takes one range's keys (after `start_after`, up to and including `last`; None: no
    bound) as the store lists them, one at a time, and tells when to stop: at the first
    key past the range, or at one out of UTF-8 byte order (S3's order; some stores list
    in their own)."""

    def __init__(self, start_after: str | None, last: bytes | None) -> None:
        self.objects: list[Listed] = []
        self._bounded = start_after is not None or last is not None  # the whole: any order
        self._previous = start_after.encode("utf-8", "surrogateescape") if start_after else None
        self._last = last
        self._after: str | None = None
        self._ordered = True

    def take(self, obj: Listed) -> bool:
        """Take the next key listed; False: stop, the range is complete or out of order."""
        if self._bounded:
            key = obj.key.encode("utf-8", "surrogateescape")
            if self._previous is not None and key <= self._previous:
                self._ordered = False
                return False
            if self._last is not None and key > self._last:
                self._after = obj.key
                return False
            self._previous = key
        self.objects.append(obj)
        return True

    def range(self) -> Range | None:
        """The range taken, once listing stopped (or ended); None: out of order."""
        return Range(self.objects, self._after) if self._ordered else None


def meet(taken: Sequence[Range | None]) -> bool:
    """Whether the ranges took every key once: each in order, and each ending where the
    next begins. The key a range saw past its end must be the first of the next range
    (in byte order both are the first key after the cut), else the store lists in an
    order of its own that no range saw break: SeaweedFS lists a folder's keys where the
    folder's name sorts, so 'a/x' before 'a-1', and the keys after 'a-1' leave out 'a/'
    and all it holds, which the range before stopped short of."""
    ranges = [each for each in taken if each is not None]
    return len(ranges) == len(taken) and all(
        here.after == (after.objects[0].key if after.objects else after.after)
        for here, after in itertools.pairwise(ranges)
    )


@dataclass
class Settled:
    """A complete listing as the index may hold it: relative paths of files and of folders
    (with their 'path/' marker objects), what was left out and why."""

    files: dict[str, Listed] = field(default_factory=dict)
    markers: dict[str, Listed] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    objects: int = 0
    """Keys listed, those left out included."""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def etags(self) -> dict[str, str | None]:
        """Each kept key's etag, as `LastListing.etags` holds them."""
        return {obj.key: obj.etag for obj in (*self.files.values(), *self.markers.values())}


def settle(taken: Sequence[Range], prefix: str, exclude: PathMatcher) -> Settled:
    """Keys that could escape the tree are skipped and reported, excluded ones dropped, and
    a key that is both a file and a folder of others is skipped with all below it."""
    out = Settled()
    files, markers = out.files, out.markers
    for each in taken:
        for obj in each.objects:
            out.objects += 1
            rel = obj.key[len(prefix):]
            is_marker = rel.endswith("/")
            if is_marker:
                rel = rel[:-1]
            why = unsafe_reason(rel)
            if why:
                out.skipped.append((obj.key, f"unsafe key ({why})"))
                continue
            if exclude.matches(rel, is_marker):
                continue
            (markers if is_marker else files)[rel] = obj
    dirs = set(markers)
    for rel in (*files, *markers):
        dirs.update(_parents(rel))
    for rel in sorted(set(files) & dirs):
        out.skipped.append((prefix + rel, "both a file and a directory"))
        del files[rel]
        dirs.discard(rel)
        for other in [p for p in files if p.startswith(rel + "/")]:
            out.skipped.append((prefix + other, f"inside '{rel}', which is also a file"))
            del files[other]
        dirs = {d for d in dirs if not d.startswith(rel + "/")}
        for marker in [m for m in markers if m not in dirs]:
            del markers[marker]
    out.dirs = dirs
    return out


def _parents(relpath: str) -> list[str]:
    parts = relpath.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]

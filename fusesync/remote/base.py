"""The Remote protocol the sync engine talks to, and the plain records it returns.

Keys are always full keys in the bucket. Nothing here does I/O; implementations translate
their own errors into fusesync.errors and never let a transport exception escape.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# s3fs-fuse's attribute headers, without the x-amz-meta- prefix boto3 strips.
MODE, UID, GID, MTIME = "mode", "uid", "gid", "mtime"
DIR_CONTENT_TYPE = "application/x-directory"
_ID_LIMIT = 1 << 32

Progress = Callable[[int], None]
"""Called with a number of bytes just transferred (never the running total)."""


def asked_nothing() -> None:
    """What `Remote.get_bytes_soon` gives back when it sent nothing: nothing to let go."""


def format_mtime(mtime: float) -> str:
    """Seconds with exactly nine fractional digits, or none when whole.

    s3fs-fuse reads the digits after the dot as an integer count of nanoseconds, so
    "…0.5" would mean 5 ns to it: the fraction must always be written padded to nine.
    """
    if mtime < 0:  # s3fs would add the fraction to the negative seconds: stay decimal
        return "-" + format_mtime(-mtime)
    sec = math.floor(mtime)
    nsec = round((mtime - sec) * 1e9)
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return str(sec) if nsec == 0 else f"{sec}.{nsec:09d}"


def parse_mtime(value: str | None) -> float | None:
    """Decimal seconds, with or without a fraction (fusesync, s3fs, rclone); else None."""
    if value is None:
        return None
    text = value.strip()
    head, _, frac = text.partition(".")
    if not _digits(head.removeprefix("-")) or (frac and not _digits(frac)):
        return None
    try:
        parsed = float(text)
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_id(value: str | None) -> int | None:
    """A non-negative 32-bit decimal (mode, uid, gid); anything else is None."""
    if value is None:
        return None
    text = value.strip()
    if not _digits(text):
        return None
    number = int(text)
    return number if number < _ID_LIMIT else None


@dataclass(frozen=True, slots=True)
class Attrs:
    """A file's attributes as s3fs-fuse stores them in object metadata."""

    mode: int | None = None  # full st_mode, type bits included; stored in decimal
    uid: int | None = None
    gid: int | None = None
    mtime: float | None = None  # seconds since the epoch, may carry a fraction

    def to_metadata(self) -> dict[str, str]:
        md: dict[str, str] = {}
        if self.mode is not None:
            md[MODE] = str(self.mode)
        if self.uid is not None:
            md[UID] = str(self.uid)
        if self.gid is not None:
            md[GID] = str(self.gid)
        if self.mtime is not None:
            md[MTIME] = format_mtime(self.mtime)
        return md

    @classmethod
    def from_metadata(cls, md: Mapping[str, str]) -> Attrs:
        """Tolerant: a missing or malformed value becomes None, never an error."""
        lowered = {k.lower(): v for k, v in md.items()}
        return cls(
            mode=_parse_id(lowered.get(MODE)),
            uid=_parse_id(lowered.get(UID)),
            gid=_parse_id(lowered.get(GID)),
            mtime=parse_mtime(lowered.get(MTIME)),
        )


@dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a listing: what LIST tells without a HEAD."""

    key: str
    etag: str  # without the quotes S3 puts around it
    size: int
    last_modified: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Head:
    """An object's headers: what HEAD (or the start of a GET) tells."""

    key: str
    etag: str
    size: int
    last_modified: float
    attrs: Attrs
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # every x-amz-meta-*, unprefixed


class WritableFile(Protocol):
    """What download_file writes into: an open binary file, or anything that places
    `write`s at the offset of the last `seek` (calls come from worker threads, one at a
    time)."""

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def write(self, data: bytes, /) -> int | None: ...

    def truncate(self, size: int | None = ..., /) -> int: ...

    def flush(self) -> None: ...


COPY_LIMIT = 5 << 30
"""The largest object one server-side copy (S3 CopyObject) takes."""


class Remote(Protocol):
    """An object store holding the targets' objects, as the sync engine uses it.

    Every method is async and safe to call from many tasks at once. Errors are
    fusesync.errors: RemoteChanged for a failed precondition (412), RemoteNotFound for a
    missing object where the method says so, RemoteError for everything else the store
    says, SourceChanged when a local file no longer matches the hash it was sent with.
    """

    @property
    def bucket(self) -> str: ...

    async def bucket_exists(self) -> bool: ...

    async def create_bucket(self) -> None:
        """Create the bucket; one that already exists and is ours is fine."""

    def list(self, prefix: str, start_after: str | None = None) -> AsyncIterator[Listed]:
        """Every key under `prefix` (after `start_after`, if given), in the store's order
        (by UTF-8 bytes), page by page."""
        ...

    async def head(self, key: str) -> Head | None:
        """The object's headers, or None when it does not exist."""

    async def get_bytes(
        self, key: str, *, if_match: str | None = None, if_none_match: str | None = None
    ) -> tuple[bytes, str] | None:
        """(body, etag) of a small object, or None when it does not exist; RemoteChanged
        when `if_match` is given and the object is no longer that version, RemoteUnchanged
        when `if_none_match` is given and the object is still that version."""

    def get_bytes_soon(self, key: str, *, if_match: str | None = None) -> Callable[[], None]:
        """Send the request of `get_bytes(key, if_match=...)` now, so that call, made
        next, takes its answer (a fetch on open asks before it makes its temporary file);
        returns what lets the answer go unless that call took it (always call it once
        done). A remote with nothing to gain from it sends nothing."""
        ...

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        attrs: Attrs | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write a small object in one request; returns its etag."""
        ...

    async def upload_file(
        self,
        key: str,
        path: os.PathLike[str] | str,
        *,
        size: int,
        md5: str | None,
        attrs: Attrs | None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        progress: Progress | None = None,
    ) -> str:
        """Stream a local file to `key`; returns the new etag.

        `size` and `md5` (hex) are what the caller saw when it hashed the file: a file
        that no longer matches them raises SourceChanged and leaves the remote as it was.
        """
        ...

    async def download_file(
        self,
        key: str,
        dest: WritableFile,
        *,
        if_match: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Head:
        """Write the object's bytes at offsets 0..size of `dest` and truncate it there.
        `size`: the `if_match` version's size, when the caller has it from a listing (a
        large object's parts are then all asked for at once).

        Raises RemoteNotFound when the object is gone and RemoteChanged when it is not the
        `if_match` version (or changed while being read).
        """
        ...

    async def copy(self, source: str, key: str, *, if_match: str | None = None) -> str:
        """Copy object `source` to `key` inside the store (metadata kept, no bytes pass
        through here; at most COPY_LIMIT bytes); returns the new etag. RemoteNotFound when
        `source` is gone, RemoteChanged when it is not the `if_match` version."""
        ...

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete one object; a missing one is fine, another version is RemoteChanged."""

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete many objects, missing ones included, in as few requests as allowed."""

    async def abort_multipart_uploads(self, prefix: str, *, older_than: float = 0.0) -> int:
        """Abort the unfinished multipart uploads under `prefix` started more than
        `older_than` seconds ago (0: all of them); returns how many."""
        ...

    async def aclose(self) -> None:
        """Release connections; the remote must not be used afterwards."""

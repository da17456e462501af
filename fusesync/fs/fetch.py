"""Lazy fetch: a remote-only file is downloaded into the underlying tree on first open.

The object streams into a temporary file beside its final name and a read waits only
until its own range has arrived. On success the file is verified, given the remote's
mode, owner and mtime, fsynced and renamed into place (never over something local), its
folder is fsynced, and only then does its row record the new base. A small file comes
whole in one GET and is checked against its MD5 before any read is given a byte of it; a
large one streams, so its reads may see bytes before the whole is checked (a mismatch
then fails the reads after). On failure the temporary file is removed, one line goes to
the log and waiting reads fail: no partial file ever stands at the path.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from fusesync.errors import FusesyncError, RemoteChanged, RemoteNotFound
from fusesync.fs.journal import Journal
from fusesync.fs.nodes import Node
from fusesync.index import Row
from fusesync.remote.base import Remote, asked_nothing
from fusesync.sync.localfs import (
    RENAME_NOREPLACE,
    as_root,
    local_ids,
    renameat2,
    temporary_name,
)
from fusesync.sync.model import SPECIAL_BITS
from fusesync.sync.pull import remote_mtime_ns, remote_owner

if TYPE_CHECKING:
    from fusesync.sync.sealed import Sealing

log = logging.getLogger("fusesync.mount")


SMALL_FETCH = 1 << 20
"""Objects up to this size come in one GET, whole, with no transfer machinery."""


class FetchFailed(FusesyncError):
    """The download of a remote-only file failed; the path stays remote-only."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


class Fetch:
    """One download in flight: which byte ranges have arrived, and who waits for which."""

    def __init__(self, path: str, size: int, dir_fd: int, tmp: str, fd: int) -> None:
        self.path = path
        self.size = size
        self.dir_fd = dir_fd  # our own duplicate: the temporary file's directory
        self.tmp = tmp
        self.fd = fd  # the temporary file, read and written by offset
        self.done = trio.Event()
        self.error: FetchFailed | None = None
        self.lock = threading.Lock()  # ranges are added from transfer threads
        self._ranges: list[tuple[int, int]] = []
        self._written: list[tuple[int, int]] = []  # ranges written through the mount
        self._waiters: list[tuple[int, int, trio.Event]] = []

    def arrived(self, start: int, end: int) -> None:
        """Bytes [start, end) are in the temporary file (called from any thread)."""
        with self.lock:
            self._ranges = _merged(self._ranges, start, end)

    @property
    def modified(self) -> bool:
        """Something was written through the mount while the download ran."""
        return bool(self._written)

    def written_end(self) -> int:
        return max((end for _, end in self._written), default=0)

    def write(self, data: bytes, offset: int) -> int:
        """A write through the mount while the download runs (trio thread). The range is
        recorded under the lock the download writes under, so the download never
        overwrites it, however its parts arrive or are retried."""
        with self.lock:
            written = os.pwrite(self.fd, data, offset)
            self._written = _merged(self._written, offset, offset + written)
            self._ranges = _merged(self._ranges, offset, offset + written)
        return written

    def download_write(self, data: bytes, offset: int) -> None:
        """Downloaded bytes at `offset`, except where the mount wrote (any thread)."""
        with self.lock:
            end = offset + len(data)
            for start, stop in _gaps(self._written, offset, end):
                view = memoryview(data)[start - offset : stop - offset]
                while view:
                    view = view[os.pwrite(self.fd, view, start) :]
                    start = stop - len(view)
            self._ranges = _merged(self._ranges, offset, end)

    def has(self, start: int, end: int) -> bool:
        """Without the lock: `_ranges` is replaced whole, never changed in place, so a
        read of it sees one state or the next, and a read is never held up by a thread
        that holds the lock (the hash of a large file once stalled every request)."""
        end = min(end, max(self.size, self.written_end()))
        if start >= end:
            return True
        return any(s <= start and end <= e for s, e in self._ranges)

    def wake(self, _count: int = 0) -> None:
        """Let every read whose range has arrived go on (trio thread)."""
        still = []
        for start, end, event in self._waiters:
            if self.done.is_set() or self.has(start, end):
                event.set()
            else:
                still.append((start, end, event))
        self._waiters = still

    async def wait_range(self, start: int, end: int) -> None:
        """Return once [start, end) can be read; raise FetchFailed if it never will."""
        while True:
            if self.error is not None:
                raise self.error
            if self.done.is_set() or self.has(start, end):
                return
            event = trio.Event()
            self._waiters.append((start, end, event))
            await event.wait()

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise self.error


class _RangeWriter:
    """The file the remote writes into (a WritableFile): positional writes, each one
    recorded as arrived. Called from transfer threads, one call at a time."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._pos = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence == os.SEEK_END:
            offset += os.fstat(self._fetch.fd).st_size
        self._pos = offset
        return offset

    def write(self, data: bytes, /) -> int:
        self._fetch.download_write(data, self._pos)
        self._pos += len(data)
        return len(data)

    def truncate(self, size: int | None = None, /) -> int:
        size = self._pos if size is None else size
        with self._fetch.lock:  # never below what the mount wrote past the object's end
            os.ftruncate(self._fetch.fd, max(size, self._fetch.written_end()))
        return size

    def flush(self) -> None:
        pass


class Fetcher:
    """Starts and tracks the downloads of remote-only files into the tree."""

    def __init__(
        self, remote: Remote, prefix: str, journal: Journal, nursery: trio.Nursery,
        sealing: Sealing | None = None,
    ) -> None:
        """`sealing`: decrypts encrypted objects (sync/sealed.py); None: they are refused."""
        self.remote = remote
        self.sealing = sealing
        self.prefix = prefix
        self.journal = journal
        self.nursery = nursery
        self.active: dict[Node, Fetch] = {}
        self.on_fetched: Callable[[int], None] | None = None  # told each new file's size
        self.small = SMALL_FETCH  # objects up to this size: one whole GET

    def ask_soon(self, row: Row) -> Callable[[], None]:
        """For an object `start` will fetch in one GET: send that GET now, before the
        folder and the temporary file are made and the open is answered (a cold `cat` of
        small files waited for the whole open first); returns what lets it go unless the
        fetch took it (`start` takes that on)."""
        if row["remote_enc"] or (row["remote_size"] or 0) > self.small:
            return asked_nothing
        return self.remote.get_bytes_soon(self._key(row), if_match=row["remote_etag"])

    def start(self, node: Node, row: Row, dir_fd: int, name: str,
              asked: Callable[[], None] = asked_nothing) -> Fetch:
        """Begin fetching `row` into `name` inside directory `dir_fd`; returns at once.
        `asked`: from `ask_soon`, let go once the fetch is over (or could not begin)."""
        running = self.active.get(node)
        if running is not None:
            asked()
            return running
        try:
            if row["remote_enc"] and (self.sealing is None or not self.sealing.can_try):
                why = self.sealing.refused if self.sealing and self.sealing.refused else (
                    "the mount has no passphrase (mount with FUSESYNC_PASSPHRASE or "
                    "--passphrase-file)")
                log.warning("cannot open '%s': it is encrypted and %s", row["path"], why)
                raise FetchFailed(f"'{row['path']}' is encrypted: {why}", errno.EACCES)
            tmp = temporary_name(name)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
            try:
                fetch = Fetch(row["path"], row["remote_size"] or 0, os.dup(dir_fd), tmp, fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
        except BaseException:
            asked()
            raise
        self.active[node] = fetch
        self.nursery.start_soon(self._run, node, fetch, row, name, asked)
        return fetch

    def _key(self, row: Row) -> str:
        return f"{self.prefix}{row['remote_from'] or row['path']}"  # moved: its old path

    async def _run(self, node: Node, fetch: Fetch, row: Row, name: str,
                   asked: Callable[[], None]) -> None:
        placed = False
        whole: tuple[str, int] | None = None  # a small file's MD5 and size, as checked
        try:
            key = self._key(row)
            if row["remote_enc"] and self.sealing is not None:  # decrypted chunk by chunk
                await self.sealing.open_into(row, functools.partial(_arrive, fetch))
            elif fetch.size <= self.small:  # one GET on the light path, no transfer thread
                got = await self.remote.get_bytes(key, if_match=row["remote_etag"])
                if got is None:
                    raise RemoteNotFound(f"'{row['path']}' is gone from the remote")
                whole = hashlib.md5(got[0]).hexdigest(), len(got[0])
                if row["remote_md5"] and whole[0] != row["remote_md5"]:
                    # whole in memory: no read is given a byte of it before it is checked
                    raise FetchFailed("downloaded data does not match its MD5")
                fetch.download_write(got[0], 0)
                with fetch.lock:
                    os.ftruncate(fetch.fd, max(len(got[0]), fetch.written_end()))
            else:
                await self.remote.download_file(
                    key, _RangeWriter(fetch), if_match=row["remote_etag"], size=fetch.size,
                    progress=fetch.wake,
                )
            fetch.arrived(0, fetch.size)
            fetch.wake()
            md5 = await trio.to_thread.run_sync(_seal, fetch, row, whole, name)
            placed = True
            self.journal.fetched(row, os.fstat(fetch.fd), md5, changed=fetch.modified)
            if self.on_fetched is not None:
                self.on_fetched(fetch.size)
        except Exception as exc:  # whatever it is, this file fails; the mount goes on
            code = errno.ESTALE if isinstance(exc, RemoteChanged | RemoteNotFound) else errno.EIO
            if isinstance(exc, FusesyncError) and exc.errno == errno.EACCES:
                code = errno.EACCES  # encrypted, and no passphrase that opens it
            if isinstance(exc, OSError) and exc.errno == errno.EEXIST:
                message = "a local file appeared at its path meanwhile"
            else:
                message = str(exc) or repr(exc)
            expected = isinstance(exc, FusesyncError | OSError)
            log.error("fetch of '%s' failed: %s", fetch.path, message,
                      exc_info=None if expected else exc)
            fetch.error = FetchFailed(f"cannot fetch '{fetch.path}': {message}", code)
        finally:
            asked()  # taken by the GET above, or let go
            if not placed:
                with contextlib.suppress(OSError):
                    os.unlink(fetch.tmp, dir_fd=fetch.dir_fd)
                if fetch.error is None:  # cancelled: the mount is going away
                    fetch.error = FetchFailed(f"cannot fetch '{fetch.path}': interrupted")
            os.close(fetch.fd)
            os.close(fetch.dir_fd)
            self.active.pop(node, None)
            fetch.done.set()
            fetch.wake()


def _arrive(fetch: Fetch, offset: int, data: bytes) -> None:
    """Decrypted bytes at `offset` of the temporary file; reads waiting for them go on.
    Runs in a worker thread started by trio."""
    fetch.download_write(data, offset)
    trio.from_thread.run_sync(fetch.wake)


def _seal(fetch: Fetch, row: Row, whole: tuple[str, int] | None, name: str) -> str:
    """Verify the download, give it the remote's attributes, fsync it, rename it into
    place as `name` and fsync its folder, so that the row recorded next never says a file
    stands here that a power cut could take back (a push would delete the remote's copy
    of what it took for a file deleted here). Blocks. `whole`: a small file's MD5 and
    size as checked in memory, which the file holds unless it was written to meanwhile
    (else it is read back and hashed). Anything that could touch the path through the
    mount waits for the fetch to end first (View.settle, View.settle_tree).

    A file written through the mount while it streamed in, or while it was hashed, holds
    more than the download: its MD5 is no check of the transfer then, and its mtime is the
    writes' own. The hash holds no lock (trio's thread takes it for every write through
    the mount), so the check that nothing was written comes after it."""
    if whole is not None and not fetch.modified:
        md5, offset = whole
    else:  # read back without the lock: reads and writes through the mount go on
        digest = hashlib.md5()
        offset = 0
        while chunk := os.pread(fetch.fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        md5 = digest.hexdigest()
    with fetch.lock:  # a write from here on comes after the remote's attributes
        modified = fetch.modified  # (also if written while it was hashed)
        if offset != fetch.size and not (modified and offset >= fetch.size):
            raise FetchFailed(f"got {offset} bytes, expected {fetch.size}")
        if row["remote_md5"] and md5 != row["remote_md5"] and not row["remote_enc"] \
                and not modified:
            raise FetchFailed("downloaded data does not match its MD5")  # (decrypting checked)
        if as_root():
            uid, gid = local_ids(remote_owner(row))
            if uid is not None or gid is not None:
                os.fchown(fetch.fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fetch.fd, (row["remote_mode"] or 0o644) & 0o7777 & ~SPECIAL_BITS)
        mtime_ns = remote_mtime_ns(row)
        if mtime_ns is not None and not modified:
            os.utime(fetch.fd, ns=(mtime_ns, mtime_ns))
    os.fsync(fetch.fd)
    renameat2(fetch.dir_fd, fetch.tmp, fetch.dir_fd, name, RENAME_NOREPLACE)
    os.fsync(fetch.dir_fd)
    return md5


def _merged(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """`ranges` (sorted, disjoint) with [start, end) added."""
    merged: list[tuple[int, int]] = []
    for s, e in sorted([*ranges, (start, end)]):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _gaps(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of [start, end) that none of `ranges` (sorted, disjoint) covers."""
    gaps: list[tuple[int, int]] = []
    for s, e in ranges:
        if e <= start or s >= end:
            continue
        if s > start:
            gaps.append((start, s))
        start = max(start, e)
    if start < end:
        gaps.append((start, end))
    return gaps

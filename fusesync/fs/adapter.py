"""The pyfuse3 adapter: turns FUSE requests into calls on the overlay core.

It converts types (bytes names, EntryAttributes, SetattrFields) and turns every error
into a FUSE reply in one place, `errno_of`. It holds no state and makes no decision of
its own; anything unexpected is logged once and answered with EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3

from fusesync.errors import FusesyncError, StateError
from fusesync.fs.attrs import Attr, Caller, Changes, FsStats
from fusesync.fs.nodes import Detached, UnknownInode
from fusesync.fs.overlay import Overlay

log = logging.getLogger("fusesync.mount")

# Seconds the kernel may trust a name or attributes without asking. The daemon owns the
# directory: nothing changes it behind the kernel's back but a pull or an eviction, and
# those invalidate what they changed (mountsync.forget_in_kernel).
ENTRY_TIMEOUT = 60.0
# A pyfuse3 that names the folder readdir lists when opendir answered ENOSYS
# (packaging/pyfuse3, built by `make`): the kernel then sends no opendir or releasedir
# and keeps each folder's listing, answering a listing again itself until the folder
# changes through the mount or the daemon invalidates it (daemon.invalidate). With an
# unpatched pyfuse3, the daemon answers every listing, as it always did.
READDIR_BY_INODE = bool(getattr(pyfuse3, "READDIR_BY_INODE", False))
# A pyfuse3 whose FileInfo carries FOPEN_NOFLUSH (packaging/pyfuse3): closing a descriptor
# of a file opened for reading then sends no flush request, which has nothing to report
# for it (a write's error is told to descriptors that wrote). One round trip less per
# `cat`. An unpatched pyfuse3 leaves the flag off.
NOFLUSH = hasattr(pyfuse3.FileInfo(), "noflush")
_T = TypeVar("_T")
_P = ParamSpec("_P")
Ctx = pyfuse3.RequestContext


def errno_of(exc: BaseException) -> int:
    """The errno a request that raised `exc` answers with: the one place that decides."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, StateError):
        _tell_of_state(exc)
    if isinstance(exc, FusesyncError):
        return exc.errno
    if isinstance(exc, Detached | UnknownInode):
        return errno.ENOENT
    log.error("unexpected error in a request", exc_info=exc)
    return errno.EIO


_told_of_state = 0.0


def _tell_of_state(exc: StateError) -> None:
    """One log line a minute while the index cannot be written (its file system is full or
    read-only): every change through the mount fails until then, each with that errno."""
    global _told_of_state
    now = time.monotonic()
    if now - _told_of_state >= 60:
        _told_of_state = now
        log.error("%s; changes through the mount fail with %s until it can be written",
                  exc.reason, errno.errorcode.get(exc.errno, exc.errno))


def replies(
    fn: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise pyfuse3.FUSEError(errno_of(exc)) from None

    return wrapper


def changing(
    fn: Callable[Concatenate[Adapter, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[Adapter, _P], Coroutine[Any, Any, _T]]:
    """A request that may change an entry's attributes (Overlay.changing)."""
    @functools.wraps(fn)
    async def wrapper(adapter: Adapter, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with adapter.overlay.changing():
            return await fn(adapter, *args, **kwargs)

    return wrapper


def entry(attr: Attr) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = attr.ino
    out.generation = 0
    out.entry_timeout = ENTRY_TIMEOUT
    out.attr_timeout = ENTRY_TIMEOUT
    out.st_mode = attr.mode
    out.st_nlink = attr.nlink
    out.st_uid = attr.uid
    out.st_gid = attr.gid
    out.st_rdev = attr.rdev
    out.st_size = attr.size
    out.st_blksize = attr.blksize
    out.st_blocks = attr.blocks
    out.st_atime_ns = attr.atime_ns
    out.st_mtime_ns = attr.mtime_ns
    out.st_ctime_ns = attr.ctime_ns
    return out


def caller(ctx: Ctx) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.umask)


def name_of(raw: bytes) -> str:
    return os.fsdecode(raw)


class Adapter(pyfuse3.Operations):
    """pyfuse3's Operations over an Overlay; every handler is one call and a conversion.
    Those that may change attributes say so (@changing): the overlay's listings then
    reuse nothing they kept."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, overlay: Overlay) -> None:
        super().__init__()
        self.overlay = overlay

    @replies
    async def lookup(self, parent_inode: int, name: bytes, ctx: Ctx) -> pyfuse3.EntryAttributes:
        return entry(self.overlay.lookup(parent_inode, name_of(name)))

    @replies
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.overlay.forget(inode, count)

    @replies
    async def getattr(self, inode: int, ctx: Ctx) -> pyfuse3.EntryAttributes:
        return entry(self.overlay.getattr(inode))

    @replies
    @changing
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None, ctx: Ctx
                      ) -> pyfuse3.EntryAttributes:
        changes = Changes(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return entry(await self.overlay.setattr(inode, changes, fh))

    @replies
    async def readlink(self, inode: int, ctx: Ctx) -> bytes:
        return os.fsencode(self.overlay.readlink(inode))

    @replies
    @changing
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Ctx
                    ) -> pyfuse3.EntryAttributes:
        return entry(self.overlay.mknod(parent_inode, name_of(name), mode, rdev, caller(ctx)))

    @replies
    @changing
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Ctx
                    ) -> pyfuse3.EntryAttributes:
        return entry(self.overlay.mkdir(parent_inode, name_of(name), mode, caller(ctx)))

    @replies
    @changing
    async def unlink(self, parent_inode: int, name: bytes, ctx: Ctx) -> None:
        await self.overlay.unlink(parent_inode, name_of(name))

    @replies
    @changing
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Ctx) -> None:
        self.overlay.rmdir(parent_inode, name_of(name))

    @replies
    @changing
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Ctx
                      ) -> pyfuse3.EntryAttributes:
        return entry(self.overlay.symlink(
            parent_inode, name_of(name), os.fsdecode(target), caller(ctx)
        ))

    @replies
    @changing
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Ctx) -> None:
        await self.overlay.rename(
            parent_inode_old, name_of(name_old), parent_inode_new, name_of(name_new), flags
        )

    @replies
    @changing
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Ctx
                   ) -> pyfuse3.EntryAttributes:
        return entry(self.overlay.link(inode, new_parent_inode, name_of(new_name)))

    @replies
    @changing
    async def open(self, inode: int, flags: int, ctx: Ctx) -> pyfuse3.FileInfo:
        info = pyfuse3.FileInfo(fh=await self.overlay.open(inode, flags), keep_cache=True)
        if NOFLUSH and flags & os.O_ACCMODE == os.O_RDONLY:
            info.noflush = True
        return info

    @replies
    @changing
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Ctx
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = self.overlay.create(parent_inode, name_of(name), mode, flags, caller(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), entry(attr)

    @replies
    @changing
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.overlay.read(fh, off, size)

    @replies
    @changing
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.overlay.write(fh, off, buf)

    @replies
    @changing
    async def flush(self, fh: int) -> None:
        self.overlay.flush(fh)

    @replies
    @changing
    async def release(self, fh: int) -> None:
        self.overlay.release(fh)

    @replies
    @changing
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.overlay.fsync(fh, datasync)

    @replies
    async def opendir(self, inode: int, ctx: Ctx) -> int:
        if READDIR_BY_INODE:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # never again: readdir names the folder
        return self.overlay.opendir(inode)

    @replies
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """`fh` is the folder's inode with READDIR_BY_INODE, else opendir's handle."""
        dh = self.overlay.listing(fh, start_id) if READDIR_BY_INODE else fh
        replied = False
        for name, node, attr, next_id in self.overlay.readdir(dh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry(attr), next_id):
                if node is not None:
                    self.overlay.discard(node)
                break
            replied = True
            if node is not None:
                self.overlay.remember(node)
        if READDIR_BY_INODE and not replied:  # the empty reply that ends a listing
            self.overlay.listed(fh)

    @replies
    async def releasedir(self, fh: int) -> None:
        self.overlay.releasedir(fh)

    @replies
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """`fh` is the folder's inode with READDIR_BY_INODE, else opendir's handle."""
        node = self.overlay.node(fh) if READDIR_BY_INODE else self.overlay.handles.dir(fh).node
        await self.overlay.fsyncdir(node, datasync)

    @replies
    async def statfs(self, ctx: Ctx) -> pyfuse3.StatvfsData:
        return statvfs(self.overlay.statfs())

    @replies
    @changing
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Ctx) -> None:
        await self.overlay.setxattr(inode, name_of(name), value)

    @replies
    async def getxattr(self, inode: int, name: bytes, ctx: Ctx) -> bytes:
        return self.overlay.getxattr(inode, name_of(name))

    @replies
    async def listxattr(self, inode: int, ctx: Ctx) -> list[bytes]:
        return [os.fsencode(name) for name in self.overlay.listxattr(inode)]

    @replies
    @changing
    async def removexattr(self, inode: int, name: bytes, ctx: Ctx) -> None:
        self.overlay.removexattr(inode, name_of(name))


def statvfs(stats: FsStats) -> pyfuse3.StatvfsData:
    out = pyfuse3.StatvfsData()
    out.f_bsize = stats.bsize
    out.f_frsize = stats.frsize
    out.f_blocks = stats.blocks
    out.f_bfree = stats.bfree
    out.f_bavail = stats.bavail
    out.f_files = stats.files
    out.f_ffree = stats.ffree
    out.f_favail = stats.favail
    out.f_namemax = stats.namemax
    return out

"""Plain records the overlay core speaks in: attributes, callers, attribute changes.

The pyfuse3 adapter converts these to and from pyfuse3's types; nothing here imports
pyfuse3 or does I/O beyond reading the user and group databases.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from fusesync.index import Row
from fusesync.sync.localfs import Owner, local_ids
from fusesync.sync.model import SPECIAL_BITS, Kind

BLOCK = 512
BLKSIZE = 4096
_TYPE_BITS = {kind.value: kind.type_bits for kind in Kind}
_PERMISSIONS = 0o7777 & ~SPECIAL_BITS


# The columns Attr.from_remote reads: a listing of remote-only entries selects only these.
REMOTE_ATTR_COLUMNS = ("remote_kind", "remote_mode", "remote_size", "remote_mtime",
                       "remote_uid", "remote_gid", "remote_owner", "remote_group",
                       "remote_target")


class Attr(NamedTuple):
    """What getattr answers for one inode. A tuple, not a frozen dataclass: readdir makes
    one per entry, and a tuple is made in a quarter of the time."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blocks: int
    blksize: int = BLKSIZE
    rdev: int = 0

    @classmethod
    def from_stat(cls, ino: int, st: os.stat_result) -> Attr:
        return cls(ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                   st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, st.st_blocks,
                   st.st_blksize, st.st_rdev)

    @classmethod
    def from_remote(cls, ino: int, row: Row) -> Attr:
        """A remote-only entry, as a fetch would create it (pull's rules: no special bits,
        the owner only where the name or id exists here, else the mount's own user)."""
        kind = row["remote_kind"]
        if kind == Kind.SYMLINK:
            mode = stat.S_IFLNK | 0o777
            size = len((row["remote_target"] or "").encode("utf-8", "surrogateescape"))
        else:
            mode = _TYPE_BITS[kind] | ((row["remote_mode"] or 0) & _PERMISSIONS)
            size = (row["remote_size"] or 0) if kind == Kind.FILE else BLKSIZE
        uid, gid = _owner_here(os.geteuid(), row["remote_uid"], row["remote_gid"],
                               row["remote_owner"], row["remote_group"])
        mtime = row["remote_mtime"]
        mtime_ns = round(mtime * 1e9) if mtime is not None else 0
        return cls(ino, mode, 2 if kind == Kind.DIR else 1, uid, gid, size,
                   mtime_ns, mtime_ns, mtime_ns, (size + BLOCK - 1) // BLOCK)


@lru_cache(maxsize=256)
def _owner_here(euid: int, uid: int | None, gid: int | None, owner: str | None,
                group: str | None) -> tuple[int, int]:
    """The ids a remote owner gets here: mapped only when the daemon runs as root (it
    could not give files away otherwise), else the daemon's own."""
    here = local_ids(Owner(uid, gid, owner, group)) if euid == 0 else (None, None)
    return (euid if here[0] is None else here[0],
            os.getegid() if here[1] is None else here[1])


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: new files belong to them (when the daemon runs as root)."""

    uid: int
    gid: int
    umask: int = 0o022


@dataclass(frozen=True, slots=True)
class Changes:
    """A setattr request: only the fields that are not None change."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None

    @property
    def times(self) -> bool:
        return self.atime_ns is not None or self.mtime_ns is not None


@dataclass(frozen=True, slots=True)
class FsStats:
    """statfs: the underlying file system's numbers."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int

    @classmethod
    def from_statvfs(cls, st: os.statvfs_result) -> FsStats:
        return cls(
            bsize=st.f_bsize, frsize=st.f_frsize, blocks=st.f_blocks, bfree=st.f_bfree,
            bavail=st.f_bavail, files=st.f_files, ffree=st.f_ffree, favail=st.f_favail,
            namemax=st.f_namemax,
        )

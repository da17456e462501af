"""Plain records the overlay core speaks in: attributes, callers, attribute changes.

The pyfuse3 adapter converts these to and from pyfuse3's types; nothing here imports
pyfuse3 or does I/O beyond reading the user and group databases.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from fusesync.index import Row
from fusesync.sync.localfs import local_ids
from fusesync.sync.model import SPECIAL_BITS, Kind
from fusesync.sync.pull import remote_owner

BLOCK = 512
BLKSIZE = 4096


@dataclass(frozen=True, slots=True)
class Attr:
    """What getattr answers for one inode."""

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
        return cls(
            ino=ino, mode=st.st_mode, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid,
            size=st.st_size, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns, blocks=st.st_blocks, blksize=st.st_blksize,
            rdev=st.st_rdev,
        )

    @classmethod
    def from_remote(cls, ino: int, row: Row) -> Attr:
        """A remote-only entry, as a fetch would create it (pull's rules: no special bits,
        the owner only where the name or id exists here, else the mount's own user)."""
        kind = Kind(row["remote_kind"])
        mode = row["remote_mode"] or 0
        if kind == Kind.SYMLINK:
            mode = stat.S_IFLNK | 0o777
            size = len((row["remote_target"] or "").encode("utf-8", "surrogateescape"))
        else:
            mode = kind.type_bits | (mode & 0o7777 & ~SPECIAL_BITS)
            size = (row["remote_size"] or 0) if kind == Kind.FILE else BLKSIZE
        uid, gid = local_ids(remote_owner(row)) if os.geteuid() == 0 else (None, None)
        mtime = row["remote_mtime"]
        mtime_ns = round(mtime * 1e9) if mtime is not None else 0
        return cls(
            ino=ino, mode=mode, nlink=2 if kind == Kind.DIR else 1,
            uid=os.geteuid() if uid is None else uid, gid=os.getegid() if gid is None else gid,
            size=size, atime_ns=mtime_ns, mtime_ns=mtime_ns, ctime_ns=mtime_ns,
            blocks=(size + BLOCK - 1) // BLOCK,
        )


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

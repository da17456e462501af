"""The vocabulary of the sync engine: kinds of path, signatures, and path rules.

A signature is a short string that changes exactly when a side's version of a path
changes in a way sync must carry over (content, kind, mode, owner, mtime, link target).
"""

from __future__ import annotations

import stat
from enum import StrEnum

PERM_BITS = 0o7777
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
MAX_NAME_BYTES = 255
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"

    @property
    def type_bits(self) -> int:
        return {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}[self]


def kind_of(st_mode: int) -> Kind | None:
    """The kind of a local path, or None for what sync never carries (fifo, socket, device)."""
    if stat.S_ISREG(st_mode):
        return Kind.FILE
    if stat.S_ISDIR(st_mode):
        return Kind.DIR
    if stat.S_ISLNK(st_mode):
        return Kind.SYMLINK
    return None


def local_sig(
    kind: str | None,
    md5: str | None,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    mtime_ns: int | None,
    target: str | None,
) -> str | None:
    """What a local version is, for comparing the tree with the base. None: absent."""
    if kind is None:
        return None
    perm = (mode or 0) & PERM_BITS
    if kind == Kind.DIR:  # a directory's mtime moves with every child: not part of it
        return f"d:{perm:o}:{uid}:{gid}"
    if kind == Kind.SYMLINK:  # a link's own mode and times are not portable
        return f"l:{target}"
    return f"f:{md5}:{perm:o}:{uid}:{gid}:{mtime_ns}"


def remote_sig(
    kind: str | None,
    etag: str | None,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    mtime: float | None,
    target: str | None,
) -> str | None:
    """What a remote version is, for comparing the listing with the base. None: absent."""
    if kind is None:
        return None
    perm = (mode or 0) & PERM_BITS
    if kind == Kind.DIR:
        return f"d:{perm:o}:{uid}:{gid}"
    if kind == Kind.SYMLINK:
        return f"l:{target}"
    return f"f:{etag}:{perm:o}:{uid}:{gid}:{mtime!r}"


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def unsafe_reason(relpath: str) -> str | None:
    """Why a remote key's relative path must never become a local path, or None if safe."""
    if not relpath:
        return "empty path"
    if "\x00" in relpath:
        return "NUL character"
    if relpath.startswith("/"):
        return "absolute path"
    for part in relpath.split("/"):
        if part in ("", ".", ".."):
            return f"'{part}' component" if part else "empty component"
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            return f"component longer than {MAX_NAME_BYTES} bytes"
    return None


def md5_etag(etag: str | None) -> str | None:
    """The content MD5 an etag stands for: single-part etags only (no '-N' suffix)."""
    if etag and len(etag) == 32 and "-" not in etag:
        return etag.lower()
    return None

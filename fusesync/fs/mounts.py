"""What the kernel has mounted where: reading /proc/self/mountinfo, cleaning stale mounts.

A stale mount is one whose daemon died (kill -9): every access to its path fails with
"Transport endpoint is not connected". It is cleaned by a lazy unmount. Nothing here
touches a mount that is not fusesync's.
"""

from __future__ import annotations

import errno
import os
import subprocess
from enum import Enum
from pathlib import Path

from fusesync.errors import FusesyncError

FSTYPE = "fuse.fusesync"
MOUNTINFO = Path("/proc/self/mountinfo")


class MountState(Enum):
    NONE = "none"  # nothing mounted at the path
    FUSESYNC = "fusesync"  # a fusesync mount (live or stale: ask is_stale)
    OTHER = "other"  # another file system: never ours to touch


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_state(path: Path) -> MountState:
    """The topmost mount at `path` (by its absolute, symlink-free spelling)."""
    where = os.path.realpath(path) if _reachable(path) else os.path.abspath(path)
    state = MountState.NONE
    for line in MOUNTINFO.read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if len(fields) >= 5 and _unescape(fields[4]) == where:
            fstype = after.split()[0] if after else ""
            state = MountState.FUSESYNC if fstype == FSTYPE else MountState.OTHER
    return state


def _reachable(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def is_stale(path: Path) -> bool:
    """True when `path` is a FUSE mount whose daemon is gone."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def lazy_unmount(path: Path) -> None:
    """Detach the mount at `path` now; the kernel finishes once nothing uses it."""
    _fusermount(path, "-u", "-z")


def unmount(path: Path) -> None:
    """Unmount `path`; fails with a clear message when files are still open there."""
    _fusermount(path, "-u")


def _fusermount(path: Path, *flags: str) -> None:
    try:
        done = subprocess.run(
            ["fusermount3", *flags, str(path)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise FusesyncError("fusermount3 is not installed (package fuse3)") from None
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        if "busy" in why.lower():
            raise FusesyncError(f"'{path}' is busy: close the files and shells using it first")
        raise FusesyncError(f"cannot unmount '{path}': {why}")

"""Open file and directory handles of the mount: plain records, by handle number.

A file handle owns one descriptor of the underlying file (or of a fetch's temporary file
while it streams in). Nothing here does I/O beyond closing what it owns.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from fusesync.fs.fetch import Fetch
from fusesync.fs.nodes import Node
from fusesync.index import Row


@dataclass(eq=False)
class Handle:
    node: Node
    fd: int
    writable: bool
    fetch: Fetch | None = None  # the download this handle reads from while it runs
    marked: int = 0  # the journal number this handle last marked its path with


@dataclass(eq=False)
class DirHandle:
    node: Node
    names: list[str] = field(default_factory=list)  # fixed at opendir: stable offsets
    remote: dict[str, Row] = field(default_factory=dict)  # the remote-only ones' rows
    # Each name's offset, ascending, for a listing asked by inode (View.listing); None:
    # a name's offset is its position in `names`.
    offsets: list[int] | None = None


class Handles:
    def __init__(self) -> None:
        self._files: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next = 1

    def _number(self) -> int:
        number = self._next
        self._next += 1
        return number

    def add(self, handle: Handle) -> int:
        number = self._number()
        self._files[number] = handle
        handle.node.opened += 1
        return number

    def get(self, fh: int) -> Handle:
        try:
            return self._files[fh]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def pop(self, fh: int) -> Handle:
        handle = self.get(fh)
        del self._files[fh]
        os.close(handle.fd)
        return handle

    def any_for(self, node: Node) -> Handle | None:
        """An open handle on `node` (to answer for an unlinked but open file)."""
        if not node.opened:
            return None
        return next((h for h in self._files.values() if h.node is node), None)

    def open_nodes(self, writable: bool = False) -> set[Node]:
        """Nodes with an open handle (only writable ones when `writable`)."""
        return {h.node for h in self._files.values() if h.writable or not writable}

    def add_dir(self, handle: DirHandle) -> int:
        number = self._number()
        self._dirs[number] = handle
        return number

    def dir(self, dh: int) -> DirHandle:
        try:
            return self._dirs[dh]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def drop_dir(self, dh: int) -> None:
        self._dirs.pop(dh, None)

    def close_all(self) -> None:
        for handle in self._files.values():
            os.close(handle.fd)
        self._files.clear()
        self._dirs.clear()

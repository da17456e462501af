"""Descriptors of the underlying directories, reached from the kept root descriptor.

Each directory node's descriptor is opened from its parent's with O_NOFOLLOW and kept in
a small LRU; a descriptor follows its directory through renames, so the cache is keyed by
node, not path. Nothing here resolves a path through the mount or follows a symlink.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

from fusesync.fs.nodes import ROOT_INODE, Node

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class DirFds:
    """node -> open descriptor of its directory in the underlying tree.

    A descriptor from get() is valid until the next await: never hold one across it.
    """

    def __init__(self, root_fd: int, capacity: int = 512) -> None:
        self.root_fd = root_fd
        self.capacity = capacity
        self._fds: OrderedDict[Node, int] = OrderedDict()

    def get(self, node: Node) -> int | None:
        """The directory's descriptor, or None when it does not exist locally."""
        if node.inode == ROOT_INODE:
            return self.root_fd
        fd = self._fds.get(node)
        if fd is not None:
            self._fds.move_to_end(node)
            return fd
        if node.parent is None:
            return None
        parent_fd = self.get(node.parent)
        if parent_fd is None:
            return None
        try:
            fd = os.open(node.name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in _MISSING:
                return None
            raise
        self._fds[node] = fd
        if len(self._fds) > self.capacity:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def drop(self, node: Node) -> None:
        """Forget the descriptors of `node` and of every known node below it."""
        for below in node.walk():
            fd = self._fds.pop(below, None)
            if fd is not None:
                os.close(fd)

    def clear(self) -> None:
        """After the tree changed behind the mount's back (a pull inside the daemon)."""
        while self._fds:
            _, fd = self._fds.popitem()
            os.close(fd)


def proc_path(dir_fd: int, name: str) -> str:
    """A path to `name` in `dir_fd` that never goes through the mount (for calls that
    take no dir_fd, such as the xattr ones)."""
    return f"/proc/self/fd/{dir_fd}/{name}"

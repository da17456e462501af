"""The overlay core: the union tree (view.py, namespace.py) plus contents and attributes.

Opening a remote-only file starts its fetch and every handle streams from it: a read
waits only for its own range, a write lands at once and the download never overwrites
it (fetch.py), fsync waits for the file to be in place. Writes, truncates, chmod, chown,
utimens and xattr changes go to the underlying file and mark its row in the journal in
the same step. No pyfuse3 here: the adapter converts requests and errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

import trio

from fusesync.fs.attrs import Attr, Caller, Changes
from fusesync.fs.dirs import proc_path
from fusesync.fs.fetch import Fetch
from fusesync.fs.handles import Handle
from fusesync.fs.namespace import Namespace
from fusesync.fs.nodes import ROOT_INODE, Node
from fusesync.fs.view import fail

_KEPT_FLAGS = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC
XATTR_NAMESPACE = "user."


def _writable(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY


def _settled(handle: Handle) -> Fetch | None:
    """The fetch `handle` still depends on; forgotten once it has placed the file. A
    failed one stays, so its error reaches every later request on the handle."""
    fetch = handle.fetch
    if fetch is not None and fetch.done.is_set():
        if fetch.error is not None:
            raise fetch.error
        handle.fetch = fetch = None
    return fetch


class Overlay(Namespace):
    """Everything the mount answers, by inode and handle number."""

    # -- opening ---------------------------------------------------------------------

    def _open_local(self, node: Node, flags: int) -> int | None:
        dir_fd, name = self._where(node)
        if dir_fd is None:
            return None
        try:
            return os.open(name, (flags & _KEPT_FLAGS) | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=dir_fd)
        except FileNotFoundError:
            return None

    async def open(self, ino: int, flags: int) -> int:
        node = self.node(ino)
        self.last_used[node.path] = time.monotonic()
        truncating = bool(flags & os.O_TRUNC) and _writable(flags)
        if truncating:  # the kernel passes O_TRUNC here (atomic_o_trunc), not as setattr
            await self._truncate_remote_only(node)
        fetch = self.fetcher.active.get(node) if self.fetcher else None
        if fetch is None:
            fd = self._open_local(node, flags)
            if fd is not None:
                fh = self._handle(node, fd, flags)
                if truncating:
                    self._touched(self.handles.get(fh))
                return fh
            row = self._remote(node)
            if row is None:
                raise fail(errno.ENOENT, node.path)
            fetch = self.start_fetch(node, row)
        return self.handles.add(Handle(node, os.dup(fetch.fd), _writable(flags), fetch))

    def _handle(self, node: Node, fd: int, flags: int) -> int:
        return self.handles.add(Handle(node, fd, _writable(flags)))

    def create(
        self, parent_ino: int, name: str, mode: int, flags: int, caller: Caller
    ) -> tuple[int, Attr]:
        parent = self.node(parent_ino)
        dir_fd, path = self._new_entry(parent, name)
        how = (flags & _KEPT_FLAGS) | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, how | os.O_EXCL, 0o600, dir_fd=dir_fd)
            made = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = os.open(name, how, 0o600, dir_fd=dir_fd)
            made = False
        try:
            os.fchmod(fd, mode & ~caller.umask & 0o7777)
            self._own(dir_fd, name, caller)
            self._mark(path)
            node = self.inodes.child(parent, name)
            attr = Attr.from_stat(node.inode, os.fstat(fd))
        except BaseException:
            os.close(fd)
            if made:  # (the journal could not be written, say): as if never made
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)
            raise
        self.inodes.remember(node)
        fh = self.handles.add(Handle(node, fd, _writable(flags), marked=self.journal.seq))
        return fh, attr

    # -- contents --------------------------------------------------------------------

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles.get(fh)
        if handle.fetch is not None:
            await handle.fetch.wait_range(offset, offset + size)
            _settled(handle)
        return os.pread(handle.fd, size, offset)

    def _touched(self, handle: Handle) -> None:
        """Journal a change through `handle`: once per push, not once per write."""
        if handle.marked != self.journal.seq and not handle.node.detached:
            self._mark(handle.node.path)
            handle.marked = self.journal.seq

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handles.get(fh)
        fetch = _settled(handle)
        if fetch is not None:  # still streaming in: the fetch marks the journal once placed
            return fetch.write(data, offset)
        written = os.pwrite(handle.fd, data, offset)
        self._touched(handle)
        return written

    def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)  # data is in the underlying file; nothing is buffered
        if handle.fetch is not None and handle.fetch.error is not None and handle.fetch.modified:
            raise handle.fetch.error  # what was written while it streamed in is lost

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if handle.fetch is not None and handle.writable:
            await handle.fetch.wait()  # durable only once renamed into place
            handle.fetch = None
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, handle.fd)

    async def fsyncdir(self, node: Node, datasync: bool) -> None:
        """A folder's entries as they stand in the underlying tree reach the disk: what
        an fsync of a folder through the mount asks, after a new or renamed file (SQLite,
        editors and mail tools make a rename durable so). A remote-only folder has none."""
        fd = self.dirs.get(node)
        if fd is None:
            return
        fd = os.dup(fd)  # kept across the await, which may close the cached one
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
        finally:
            os.close(fd)

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        self.inodes.release(handle.node)

    # -- attributes ------------------------------------------------------------------

    async def setattr(self, ino: int, changes: Changes, fh: int | None) -> Attr:
        node = self.node(ino)
        handle = self.handles.get(fh) if fh else None
        if handle is None and node.detached:
            # fchmod, fchown, futimens of an unlinked file: the kernel names no handle
            handle = self.handles.any_for(node)
        if handle is not None and handle.fetch is not None:
            await handle.fetch.wait()
            handle.fetch = None
        if handle is None and not node.detached:
            if changes.size == 0 and changes.mode is None and changes.uid is None \
                    and changes.gid is None:
                await self._truncate_remote_only(node)
            await self.materialize(node)
        if node.inode == ROOT_INODE or (node.detached and handle is not None):
            fd = self.root_fd if handle is None else handle.fd
            self._change_fd(fd, changes)
        else:
            dir_fd, name = self._where(node)
            if dir_fd is None:
                raise fail(errno.ENOENT, node.path)
            self._change_at(dir_fd, name, changes, handle)
            self._mark(node.path, is_dir=self._kind(node) == "dir")
        return self.attr(node)

    async def _truncate_remote_only(self, node: Node) -> None:
        """`> file` on a remote-only file: no need to fetch what is about to be dropped."""
        row = self._remote_only(node)
        if row is None or row["remote_kind"] != "file":
            return
        await self.settle(node)
        if self._remote_only(node) is None:
            return  # a fetch in flight placed it meanwhile: O_TRUNC truncates that
        assert node.parent is not None
        dir_fd = self.local_dir(node.parent)
        fd = os.open(node.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        os.close(fd)
        self._apply_remote(dir_fd, node.name, row)
        self.journal.adopt_remote(node.path)

    @staticmethod
    def _change_fd(fd: int, changes: Changes) -> None:
        if changes.uid is not None or changes.gid is not None:
            os.fchown(fd, -1 if changes.uid is None else changes.uid,
                      -1 if changes.gid is None else changes.gid)
        if changes.mode is not None:
            os.fchmod(fd, changes.mode & 0o7777)
        if changes.size is not None:
            os.ftruncate(fd, changes.size)
        if changes.times:
            st = os.fstat(fd)
            os.utime(fd, ns=(
                st.st_atime_ns if changes.atime_ns is None else changes.atime_ns,
                st.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns,
            ))

    @staticmethod
    def _change_at(dir_fd: int, name: str, changes: Changes, handle: Handle | None) -> None:
        if changes.uid is not None or changes.gid is not None:
            os.chown(name, -1 if changes.uid is None else changes.uid,
                     -1 if changes.gid is None else changes.gid,
                     dir_fd=dir_fd, follow_symlinks=False)
        if changes.mode is not None:
            os.chmod(name, changes.mode & 0o7777, dir_fd=dir_fd, follow_symlinks=False)
        if changes.size is not None:
            if handle is not None and handle.writable:
                os.ftruncate(handle.fd, changes.size)
            else:
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    os.ftruncate(fd, changes.size)
                finally:
                    os.close(fd)
        if changes.times:
            st = os.lstat(name, dir_fd=dir_fd)
            os.utime(name, ns=(
                st.st_atime_ns if changes.atime_ns is None else changes.atime_ns,
                st.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns,
            ), dir_fd=dir_fd, follow_symlinks=False)

    # -- extended attributes (user.* only; other namespaces are not supported) --------

    def _xattr_target(self, node: Node) -> str | int | None:
        """What the os.*xattr calls take for `node`, or None for a remote-only entry."""
        if node.inode == ROOT_INODE:
            return self.root_fd
        dir_fd, name = self._where(node)
        if dir_fd is None or self._lstat(node) is None:
            if self._remote(node) is None:
                raise fail(errno.ENOENT, node.path)
            return None
        return proc_path(dir_fd, name)

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        if not name.startswith(XATTR_NAMESPACE):
            raise fail(errno.EOPNOTSUPP, name)
        node = self.node(ino)
        await self.materialize(node)
        target = self._xattr_target(node)
        if target is None:
            raise fail(errno.ENOENT, node.path)
        os.setxattr(target, name, value, follow_symlinks=False)
        self._mark(node.path)

    def getxattr(self, ino: int, name: str) -> bytes:
        if not name.startswith(XATTR_NAMESPACE):
            # "not supported", not "no such attribute": `ls -l` asks for security.selinux
            # and system.posix_acl_access on every file, and stops asking for the rest of
            # the mount (one device) only on EOPNOTSUPP, which saves two requests a file
            raise fail(errno.EOPNOTSUPP, name)
        target = self._xattr_target(self.node(ino))
        if target is None:
            raise fail(errno.ENODATA, name)
        return os.getxattr(target, name, follow_symlinks=False)

    def listxattr(self, ino: int) -> list[str]:
        target = self._xattr_target(self.node(ino))
        if target is None:
            return []
        names = os.listxattr(target, follow_symlinks=False)
        return [name for name in names if name.startswith(XATTR_NAMESPACE)]

    def removexattr(self, ino: int, name: str) -> None:
        if not name.startswith(XATTR_NAMESPACE):
            raise fail(errno.EOPNOTSUPP, name)
        node = self.node(ino)
        target = self._xattr_target(node)
        if target is None:
            raise fail(errno.ENODATA, name)
        os.removexattr(target, name, follow_symlinks=False)
        self._mark(node.path)

    def close(self) -> None:
        self.handles.close_all()
        self.dirs.clear()

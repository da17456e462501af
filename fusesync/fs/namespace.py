"""The overlay's namespace changes: create, mkdir, symlink, unlink, rmdir, rename.

Each is a plain change of the underlying directory plus a journal mark, made in the same
step. A rename moves the rows of a whole directory in one transaction: what is remote-only
below it moves as rows pointing at the old objects (push copies them on the server), with
no download, except what no server-side copy can carry (encrypted, or over COPY_LIMIT).
Errors are OSError with the errno POSIX names. No pyfuse3.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from fusesync.fs.attrs import Attr, Caller
from fusesync.fs.nodes import Node
from fusesync.fs.view import View, check_name, fail
from fusesync.sync.localfs import RENAME_EXCHANGE, RENAME_NOREPLACE, TMP_MARK, renameat2
from fusesync.sync.model import Kind, join


class Namespace(View):
    """The view, plus the changes of its shape."""

    def _own(self, dir_fd: int, name: str, caller: Caller) -> None:
        """New entries belong to the caller; a setgid directory's group wins, as in ext4."""
        if not self.as_root:
            return
        parent_mode = os.fstat(dir_fd).st_mode
        gid = -1 if parent_mode & stat.S_ISGID else caller.gid
        os.chown(name, caller.uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def _new_entry(self, parent: Node, name: str) -> tuple[int, str]:
        """Checks before creating `name`: valid, not taken locally or by a remote entry."""
        check_name(name)
        dir_fd = self.local_dir(parent)
        path = join(parent.path, name)
        if self.journal.remote_entry(path) is not None:
            try:
                os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                raise fail(errno.EEXIST, path) from None  # a remote-only entry holds it
        return dir_fd, path

    def _entered(self, parent: Node, name: str, path: str, is_dir: bool) -> Attr:
        self._mark(path, is_dir)
        node = self.inodes.child(parent, name)
        attr = self.attr(node)
        self.inodes.remember(node)
        return attr

    def mkdir(self, parent_ino: int, name: str, mode: int, caller: Caller) -> Attr:
        parent = self.node(parent_ino)
        dir_fd, path = self._new_entry(parent, name)
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        if os.fstat(dir_fd).st_mode & stat.S_ISGID:
            mode |= stat.S_ISGID
        os.chmod(name, mode & ~caller.umask & 0o7777, dir_fd=dir_fd, follow_symlinks=False)
        self._own(dir_fd, name, caller)
        return self._entered(parent, name, path, True)

    def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, caller: Caller) -> Attr:
        """Fifos, sockets, plain files; device nodes only for a caller the kernel let
        through (it checks CAP_MKNOD before asking us): the mount is nodev, so they
        cannot be opened through it, and push leaves every special file alone."""
        parent = self.node(parent_ino)
        dir_fd, path = self._new_entry(parent, name)
        devices = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        os.mknod(name, stat.S_IFMT(mode) | 0o600, rdev if devices else 0, dir_fd=dir_fd)
        os.chmod(name, mode & ~caller.umask & 0o7777, dir_fd=dir_fd, follow_symlinks=False)
        self._own(dir_fd, name, caller)
        return self._entered(parent, name, path, False)

    def symlink(self, parent_ino: int, name: str, target: str, caller: Caller) -> Attr:
        parent = self.node(parent_ino)
        dir_fd, path = self._new_entry(parent, name)
        os.symlink(target, name, dir_fd=dir_fd)
        self._own(dir_fd, name, caller)
        return self._entered(parent, name, path, False)

    def link(self, ino: int, parent_ino: int, name: str) -> Attr:
        """Hard links are refused with EPERM (as POSIX allows for a file system that does
        not support them): the remote keeps one object per path."""
        raise fail(errno.EPERM, name)

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self.node(parent_ino)
        node = self.inodes.child(parent, name)
        with self.inodes.held(node):
            await self.settle(node)
            self._unlink(parent, node)

    def _unlink(self, parent: Node, node: Node) -> None:
        path = node.path
        dir_fd = self.dirs.get(parent)
        try:
            if dir_fd is None:
                raise FileNotFoundError
            os.unlink(node.name, dir_fd=dir_fd)
            self._mark(path)
        except FileNotFoundError:
            row = self._remote(node)
            if row is None:
                raise fail(errno.ENOENT, path) from None
            if row["remote_kind"] == Kind.DIR:
                raise fail(errno.EISDIR, path) from None
            self._keep_folder(parent)
            self.journal.adopt_remote(path)
        self.inodes.detach(parent, node.name)

    def _keep_folder(self, parent: Node) -> None:
        """A remote-only entry is removed from `parent`: a remote-only folder is made here
        (as on first use), so that, left empty, push keeps it by a marker
        (plan.EMPTIED_FOLDER) instead of letting it go with the last key below it."""
        self.local_dir(parent)

    def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self.node(parent_ino)
        node = self.inodes.child(parent, name)
        with self.inodes.held(node):
            self._rmdir(parent, node)

    def _rmdir(self, parent: Node, node: Node) -> None:
        path = node.path
        kind = self._kind(node)
        if kind is None:
            raise fail(errno.ENOENT, path)
        if kind != Kind.DIR:
            raise fail(errno.ENOTDIR, path)
        if not self.is_empty(node):
            raise fail(errno.ENOTEMPTY, path)
        self.keep_removed(node)
        dir_fd = self.dirs.get(parent)
        if dir_fd is not None and self._lstat(node) is not None:
            self._remove_leftovers(node)
            self.dirs.drop(node)
            os.rmdir(node.name, dir_fd=dir_fd)
        else:
            self._keep_folder(parent)
            self.journal.adopt_remote(path)
        self.journal.mark_tree(path)
        self.inodes.detach(parent, node.name)

    def _remove_local(self, node: Node) -> None:
        """Remove what stands at `node` in the tree (an empty dir or a non-dir), if any."""
        st = self._lstat(node)
        dir_fd = self.dirs.get(node.parent) if node.parent is not None else None
        if st is None or dir_fd is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self._remove_leftovers(node)
            self.dirs.drop(node)
            os.rmdir(node.name, dir_fd=dir_fd)
        else:
            os.unlink(node.name, dir_fd=dir_fd)

    def _remove_leftovers(self, node: Node) -> None:
        """Temporary files of interrupted fetches: invisible, but they keep a dir busy."""
        fd = self.dirs.get(node)
        if fd is None:
            return
        for name in os.listdir(fd):
            if TMP_MARK in name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)

    async def rename(
        self, old_parent_ino: int, old: str, new_parent_ino: int, new: str, flags: int
    ) -> None:
        old_parent, new_parent = self.node(old_parent_ino), self.node(new_parent_ino)
        check_name(new)
        src = self.inodes.child(old_parent, old)
        dst = self.inodes.child(new_parent, new)
        if src is dst:
            return
        with self.inodes.held(src, dst):
            await self._rename(src, dst, flags)

    async def _rename(self, src: Node, dst: Node, flags: int) -> None:
        assert src.parent is not None and dst.parent is not None
        old_parent, old, new_parent, new = src.parent, src.name, dst.parent, dst.name
        src_kind, dst_kind = self._kind(src), self._kind(dst)
        if src_kind is None:
            raise fail(errno.ENOENT, src.path)
        if flags & RENAME_NOREPLACE and dst_kind is not None:
            raise fail(errno.EEXIST, dst.path)
        if flags & RENAME_EXCHANGE and dst_kind is None:
            raise fail(errno.ENOENT, dst.path)
        if flags & RENAME_EXCHANGE:
            await self.materialize_tree(src)
            await self.materialize_tree(dst)
        else:
            await self.settle_tree(src)
            await self.fetch_uncopyable(src)  # the rest moves without a download
        if dst_kind is not None and not flags & RENAME_EXCHANGE:
            if dst_kind == Kind.DIR and src_kind != Kind.DIR:
                raise fail(errno.EISDIR, dst.path)
            if dst_kind != Kind.DIR and src_kind == Kind.DIR:
                raise fail(errno.ENOTDIR, dst.path)
            if dst_kind == Kind.DIR and not self.is_empty(dst):
                raise fail(errno.ENOTEMPTY, dst.path)
            if dst_kind == Kind.DIR:
                self.keep_removed(dst)
            await self.settle(dst)
            if self._remote_only(dst) is not None:
                self.journal.adopt_remote(dst.path)
        src_path, dst_path = src.path, dst.path
        if flags & RENAME_EXCHANGE or self._lstat(src) is not None:
            src_fd = self.local_dir(old_parent)  # fetched again: awaits may have closed one
            dst_fd = self.local_dir(new_parent)
            if dst_kind == Kind.DIR and not flags & RENAME_EXCHANGE:
                self._remove_leftovers(dst)
            renameat2(src_fd, old, dst_fd, new, flags & (RENAME_NOREPLACE | RENAME_EXCHANGE))
        else:  # remote-only: only its rows move; what stood at dst locally goes
            self._remove_local(dst)
        if flags & RENAME_EXCHANGE:
            self.journal.exchange_trees(src_path, dst_path)
            self.inodes.exchange(old_parent, old, new_parent, new)
        else:
            self.journal.move_tree(src_path, dst_path)
            self.dirs.drop(dst)
            self.inodes.move(old_parent, old, new_parent, new)

"""The overlay's view: the target's directory plus its remote-only entries, as one tree.

Names, attributes and listings come from the underlying directory (through the kept
descriptor, never through the mount) or from the index; a remote-only entry becomes local
here (a directory made, a symlink written, a file fetched). Errors are OSError or
FusesyncError, both with an errno. No pyfuse3 here; changes are namespace.py's.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator

from fusesync.fs.attrs import Attr, FsStats
from fusesync.fs.dirs import DirFds
from fusesync.fs.fetch import Fetch, Fetcher, FetchFailed
from fusesync.fs.handles import DirHandle, Handles
from fusesync.fs.journal import Journal
from fusesync.fs.nodes import ROOT_INODE, InodeTable, Node
from fusesync.index import Row
from fusesync.remote.base import COPY_LIMIT
from fusesync.sync.localfs import TMP_MARK, local_ids
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import SPECIAL_BITS, Kind
from fusesync.sync.pull import remote_owner
from fusesync.sync.scan import md5_text

REMOTE_ATTRS_KEPT = 200_000  # remote-only entries' attributes kept between listings
LOCAL_ATTRS_KEPT = 200_000  # local entries' attributes kept between listings
LISTINGS_KEPT = 256  # listings asked by inode being read at once (View.listing)
_DOTS = {".": 1, "..": 2}
_HASHED = (1 << 62) - 1


def name_offset(name: str) -> int:
    """The offset of `name` in a listing asked by inode: one no other name's coming or
    going moves (ext4's listings work alike, by a hash of the name), in 3 .. 2**62 + 2
    (an off_t; '.' and '..' take 1 and 2). The hash is this process's: offsets live as
    long as the mount. Two names of one hash (odds of 2**-62 a pair) are both listed,
    unless a reply ends between them. A 32-bit program listing with the old getdents
    (not getdents64) cannot hold such offsets: ext4 gives those 32-bit hashes, FUSE
    cannot tell who asks."""
    return _DOTS.get(name) or 3 + (hash(name) & _HASHED)
# Seconds a listing may reuse a local entry's attributes. Every change through the mount
# forgets them at once (View.changing); this bounds only changes made beside the mount,
# which the design does not expect (the kernel itself trusts attributes for 60 s).
KEEP_LOCAL_ATTRS = 5.0


def fail(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


def check_name(name: str) -> None:
    """Names the journal can record: valid UTF-8, and never one of our temporary names."""
    if TMP_MARK in name:
        raise fail(errno.EINVAL, name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(errno.EILSEQ, name) from None


def _dot_attr(ino: int) -> Attr:
    """What a listing gives for '.' and '..': the kernel takes only their inode number
    and type from it (fuse_direntplus_link skips both names), so nothing is looked up."""
    return Attr(ino, stat.S_IFDIR, 2, 0, 0, 0, 0, 0, 0, 0)


class View:
    """The mounted tree, by inode. Call from one trio thread; safe across awaits."""

    def __init__(
        self,
        root_fd: int,
        journal: Journal,
        fetcher: Fetcher | None = None,
        exclude: PathMatcher | None = None,
    ) -> None:
        self.root_fd = root_fd
        self.journal = journal
        self.fetcher = fetcher
        self.exclude = exclude or PathMatcher(())
        self.inodes = InodeTable()
        self.dirs = DirFds(root_fd)
        self.handles = Handles()
        self.last_used: dict[str, float] = {}  # path -> when last opened (for --cache-limit)
        self.removed: dict[int, Attr] = {}  # inode -> last attributes of a removed dir
        # inode -> (the listed row, its Attr): kept while listings return that same row
        self._remote_attrs: dict[int, tuple[Row, Attr]] = {}
        # what listings saw of the local tree, reused while nothing may have changed it
        # (_kept_local): inode -> Attr of an entry, inode -> a directory's local names
        self._local_attrs: dict[int, Attr] = {}
        self._local_names: dict[int, list[str]] = {}
        self._listings: dict[int, int] = {}  # directory inode -> its listing's handle
        self._local_at: tuple[int, tuple[int, int, int], int] | None = None
        self._changes = 0  # requests that may change attributes, begun or ended
        self._changing = 0  # such requests in flight
        self.as_root = os.geteuid() == 0

    # -- resolving -------------------------------------------------------------------

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Around anything that may change an entry's attributes (every request but the
        lookups, listings and reads of metadata; a push or pull run by the daemon):
        listings keep no local attributes while it runs and forget those kept before."""
        self._changes += 1
        self._changing += 1
        try:
            yield
        finally:
            self._changing -= 1
            self._changes += 1

    def _kept_local(self) -> bool:
        """Whether listings may reuse (and add to) what they saw of the local tree: not
        while a change is in flight. What they kept is forgotten when a change begins or
        ends, when any index row changes (a fetch placed, a file evicted), and after
        KEEP_LOCAL_ATTRS seconds."""
        if self._changing:
            return False
        epoch = (self._changes, self.journal.index.version(),
                 int(time.monotonic() // KEEP_LOCAL_ATTRS))
        if epoch != self._local_at:
            self._local_attrs.clear()
            self._local_names.clear()
            self._local_at = epoch
        return True

    def _kept_local_attrs(self) -> dict[int, Attr] | None:
        return self._local_attrs if self._kept_local() else None

    def node(self, ino: int) -> Node:
        return self.inodes.get(ino)

    def _where(self, node: Node) -> tuple[int | None, str]:
        """(descriptor of the containing directory, or None if it is not local; name)."""
        if node.parent is None:
            raise fail(errno.ENOENT, node.name)
        return self.dirs.get(node.parent), node.name

    def _lstat(self, node: Node) -> os.stat_result | None:
        if node.inode == ROOT_INODE:
            return os.fstat(self.root_fd)
        dir_fd, name = self._where(node)
        if dir_fd is None:
            return None
        try:
            return os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None

    def _remote(self, node: Node) -> Row | None:
        path = node.path
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return self.journal.remote_entry(path)

    def _remote_only(self, node: Node) -> Row | None:
        """The row of a remote-only entry: on the remote, nothing local at its path."""
        return None if self._lstat(node) is not None else self._remote(node)

    def attr(self, node: Node) -> Attr:
        if node.detached:
            handle = self.handles.any_for(node)
            if handle is None:
                if node.inode in self.removed:
                    return self.removed[node.inode]
                raise fail(errno.ENOENT)
            return Attr.from_stat(node.inode, os.fstat(handle.fd))
        st = self._lstat(node)
        if st is not None:
            return Attr.from_stat(node.inode, st)
        row = self._remote(node)
        if row is None:
            raise fail(errno.ENOENT, node.path)
        attr = Attr.from_remote(node.inode, row)
        fetch = self.fetcher.active.get(node) if self.fetcher else None
        if fetch is not None and fetch.modified:  # written while it streams in
            st = os.fstat(fetch.fd)
            size = max(st.st_size, fetch.size)
            attr = attr._replace(size=size, blocks=st.st_blocks, mtime_ns=st.st_mtime_ns,
                                 ctime_ns=st.st_ctime_ns)
        return attr

    def _kind(self, node: Node) -> Kind | None:
        st = self._lstat(node)
        if st is not None:
            return Kind.DIR if stat.S_ISDIR(st.st_mode) else Kind.FILE
        row = self._remote(node)
        return Kind(row["remote_kind"]) if row is not None else None

    def _mark(self, path: str, is_dir: bool = False) -> None:
        if path and not self.exclude.matches(path, is_dir):
            self.journal.mark(path)

    # -- lookups and listings ----------------------------------------------------------

    def lookup(self, parent_ino: int, name: str) -> Attr:
        parent = self.node(parent_ino)
        if name == ".":
            node = parent
        elif name == "..":
            node = parent.parent or self.inodes.root
        elif TMP_MARK in name:
            raise fail(errno.ENOENT, name)
        else:
            node = self.inodes.child(parent, name)
        try:
            attr = self.attr(node)
        except BaseException:
            self.inodes.forget(node.inode, 0)
            raise
        self.inodes.remember(node)
        return attr

    def getattr(self, ino: int) -> Attr:
        return self.attr(self.node(ino))

    def forget(self, inode: int, count: int) -> None:
        self.inodes.forget(inode, count)
        if inode in self.removed and not self.inodes.known(inode):
            del self.removed[inode]

    def keep_removed(self, node: Node) -> None:
        """`node`, a directory, is about to go: a process still inside it (its cwd, an open
        descriptor) can stat it afterwards, as on any file system, with no links left."""
        with contextlib.suppress(OSError):
            self.removed[node.inode] = self.attr(node)._replace(nlink=0)

    def readlink(self, ino: int) -> str:
        node = self.node(ino)
        dir_fd, name = self._where(node)
        if dir_fd is not None:
            try:
                return os.readlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        row = self._remote(node)
        if row is None or row["remote_kind"] != Kind.SYMLINK:
            raise fail(errno.ENOENT if row is None else errno.EINVAL, node.path)
        return str(row["remote_target"])

    def _names(self, node: Node, listing: bool = False) -> tuple[list[str], dict[str, Row]]:
        """A directory's local names and its remote-only entries not among them; for a
        `listing` (opendir), local names may be the ones a listing kept (_kept_local)."""
        reuse = listing and self._kept_local()
        kept = self._local_names.get(node.inode) if reuse else None
        fd = self.dirs.get(node) if kept is None else None
        local: list[str] = []
        if kept is not None:
            local = kept
        elif fd is not None:
            local = [name for name in os.listdir(fd) if TMP_MARK not in name]
            if reuse and len(self._local_names) < LOCAL_ATTRS_KEPT:
                self._local_names[node.inode] = local
        elif self._remote(node) is None:
            raise fail(errno.ENOENT, node.path)
        try:
            remote = self.journal.remote_children(node.path)
        except UnicodeEncodeError:
            remote = {}
        present = set(local)
        return local, {n: r for n, r in remote.items() if n not in present}

    def opendir(self, ino: int) -> int:
        node = self.node(ino)
        if node.detached:  # removed while someone still has it open (or as cwd): empty
            return self.handles.add_dir(DirHandle(node, []))
        local, remote = self._names(node, listing=True)
        return self.handles.add_dir(DirHandle(node, [".", "..", *local, *remote], remote))

    def listing(self, ino: int, start: int) -> int:
        """The handle a listing asked by inode reads (no opendir: pyfuse3's
        READDIR_BY_INODE). Offset 0 takes a new snapshot; the offsets after it read the
        one there is, or a new one (dropped over LISTINGS_KEPT, or after listed()): with
        offsets by name (name_offset), a name that stays is listed once by any reader,
        whichever snapshot each call reads."""
        dh = self._listings.pop(ino, None)
        if dh is not None and start == 0:
            self.handles.drop_dir(dh)
            dh = None
        if dh is None:
            dh = self.opendir(ino)
            # By name, not position: the kernel may resume any reader's listing from the
            # one it keeps, or from a later snapshot, at an offset a snapshot gave before
            handle = self.handles.dir(dh)
            keyed = sorted((name_offset(name), name) for name in handle.names)
            handle.names = [name for _, name in keyed]
            handle.offsets = [offset for offset, _ in keyed]
        self._listings[ino] = dh  # the most recent last
        if len(self._listings) > LISTINGS_KEPT:
            self.handles.drop_dir(self._listings.pop(next(iter(self._listings))))
        return dh

    def listed(self, ino: int) -> None:
        """The kernel read the listing of `ino` to its end."""
        dh = self._listings.pop(ino, None)
        if dh is not None:
            self.handles.drop_dir(dh)

    def readdir(self, dh: int, start: int) -> Iterator[tuple[str, Node | None, Attr, int]]:
        """Entries from offset `start`: (name, node, attributes, next offset). The caller
        must call remember() or discard() on each node it is given; '.' and '..' come
        with no node, as the kernel takes no reference for them, and with only their
        inode number and type (_dot_attr)."""
        handle = self.handles.dir(dh)
        parent = handle.node
        # One descriptor for the whole batch (no await until the caller is done with it),
        # none when every name is a remote-only one, and no per-entry walk to the root:
        # the common case costs one lstat an entry, or nothing.
        listed_locally = len(handle.names) > len(handle.remote) + 2  # '.', '..' and those
        dir_fd = self.dirs.get(parent) if listed_locally and not parent.detached else None
        fetching = self._fetching()
        kept = self._kept_local_attrs() if dir_fd is not None else None
        offsets = handle.offsets
        first = start if offsets is None else bisect.bisect_right(offsets, start)
        for position in range(first, len(handle.names)):
            name = handle.names[position]
            offset = position + 1 if offsets is None else offsets[position]
            if name == "." or name == "..":
                dot = parent if name == "." else parent.parent or self.inodes.root
                yield name, None, _dot_attr(dot.inode), offset
                continue
            node = self.inodes.child(parent, name)
            row = handle.remote.get(name)
            try:
                if fetching and node in fetching:
                    attr = self.attr(node)
                elif row is not None:
                    # a remote-only entry as listed at opendir: no lstat, no query
                    attr = self._remote_attr(node, row)
                else:
                    attr = self._local_attr(dir_fd, node, kept)
            except FileNotFoundError:
                self.discard(node)  # gone since opendir: skipped, offsets stay stable
                continue
            yield name, node, attr, offset

    def _remote_attr(self, node: Node, row: Row) -> Attr:
        """Attr.from_remote, made again only when the listing gives another row (the
        journal keeps the rows it lists until the index changes). Inode numbers are never
        reused, so a kept one cannot answer for another node."""
        kept = self._remote_attrs.get(node.inode)
        if kept is not None and kept[0] is row:
            return kept[1]
        attr = Attr.from_remote(node.inode, row)
        if len(self._remote_attrs) >= REMOTE_ATTRS_KEPT:
            self._remote_attrs.clear()
        self._remote_attrs[node.inode] = (row, attr)
        return attr

    def _local_attr(self, dir_fd: int | None, node: Node, kept: dict[int, Attr] | None
                    ) -> Attr:
        """attr() of a name the local listing had, in the directory `dir_fd`; reused
        from `kept` (_kept_local_attrs) when there, and added to it."""
        if kept is not None:
            attr = kept.get(node.inode)
            if attr is not None:
                return attr
        if dir_fd is not None:
            try:
                attr = Attr.from_stat(node.inode, os.lstat(node.name, dir_fd=dir_fd))
            except FileNotFoundError:
                pass
            else:
                if kept is not None and len(kept) < LOCAL_ATTRS_KEPT:
                    kept[node.inode] = attr
                return attr
        return self.attr(node)  # gone, or the directory is: whatever attr() finds now

    def _fetching(self) -> dict[Node, Fetch]:
        return self.fetcher.active if self.fetcher else {}

    def remember(self, node: Node) -> None:
        self.inodes.remember(node)

    def discard(self, node: Node) -> None:
        self.inodes.forget(node.inode, 0)

    def releasedir(self, dh: int) -> None:
        self.handles.drop_dir(dh)

    def is_empty(self, node: Node) -> bool:
        local, remote = self._names(node)
        return not local and not remote

    def statfs(self) -> FsStats:
        return FsStats.from_statvfs(os.statvfs(self.root_fd))

    # -- making remote-only entries local ----------------------------------------------

    def local_dir(self, node: Node) -> int:
        """The directory's descriptor, creating it from its remote-only entry if needed."""
        fd = self.dirs.get(node)
        if fd is not None:
            return fd
        row = self._remote(node)
        if row is None or node.parent is None:
            raise fail(errno.ENOENT, node.path)
        if row["remote_kind"] != Kind.DIR:
            raise fail(errno.ENOTDIR, node.path)
        parent_fd = self.local_dir(node.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(node.name, 0o700, dir_fd=parent_fd)
            os.fsync(parent_fd)  # on disk before its row says it is here (as a fetch)
        self._apply_remote(parent_fd, node.name, row)
        self.journal.fetched(row, os.lstat(node.name, dir_fd=parent_fd), None)
        fd = self.dirs.get(node)
        if fd is None:
            raise fail(errno.ENOENT, node.path)
        return fd

    def _apply_remote(self, dir_fd: int, name: str, row: Row) -> None:
        if self.as_root:
            uid, gid = local_ids(remote_owner(row))
            if uid is not None or gid is not None:
                os.chown(name, -1 if uid is None else uid, -1 if gid is None else gid,
                         dir_fd=dir_fd, follow_symlinks=False)
        if row["remote_kind"] != Kind.SYMLINK:
            mode = (row["remote_mode"] or 0o755) & 0o7777 & ~SPECIAL_BITS
            os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)

    async def materialize(self, node: Node) -> None:
        """Make a remote-only entry local: a directory is created, a symlink written, a
        file fetched (waiting for the whole file). Local entries are left as they are."""
        fetch = self.fetcher.active.get(node) if self.fetcher else None
        if fetch is not None:
            await fetch.wait()
            return
        row = self._remote_only(node)
        if row is None:
            return
        kind = row["remote_kind"]
        if kind == Kind.DIR:
            self.local_dir(node)
        elif kind == Kind.SYMLINK:
            assert node.parent is not None
            parent_fd = self.local_dir(node.parent)
            os.symlink(row["remote_target"], node.name, dir_fd=parent_fd)
            os.fsync(parent_fd)  # on disk before its row says it is here (as a fetch)
            self._apply_remote(parent_fd, node.name, row)
            st = os.lstat(node.name, dir_fd=parent_fd)
            self.journal.fetched(row, st, md5_text(row["remote_target"]))
        else:
            await self.start_fetch(node, row).wait()

    def start_fetch(self, node: Node, row: Row) -> Fetch:
        if self.fetcher is None:
            raise FetchFailed(f"cannot fetch '{row['path']}': the remote is not connected")
        assert node.parent is not None
        asked = self.fetcher.ask_soon(row)
        try:
            parent_fd = self.local_dir(node.parent)
        except BaseException:
            asked()
            raise
        return self.fetcher.start(node, row, parent_fd, node.name, asked)

    async def materialize_tree(self, node: Node) -> None:
        """Make `node` and every remote-only entry below it local (before an exchange)."""
        await self.materialize(node)
        await self._materialize_below(node, "1")

    async def fetch_uncopyable(self, node: Node) -> None:
        """Fetch the remote-only files at or below `node` that no server-side copy can
        move (encrypted: their path is sealed in; or larger than one copy takes)."""
        uncopyable = "remote_enc IS NOT NULL OR coalesce(remote_size, 0) > ?"
        row = self._remote_only(node)
        if row is not None and row["remote_kind"] == Kind.FILE and (
            row["remote_enc"] or (row["remote_size"] or 0) > COPY_LIMIT
        ):
            await self.materialize(node)
        await self._materialize_below(node, uncopyable, (COPY_LIMIT,))

    async def _materialize_below(self, node: Node, where: str,
                                 params: tuple[object, ...] = ()) -> None:
        if self._kind(node) != Kind.DIR:
            return  # a file stands here: remote entries "below" it are not part of the view
        base = node.path
        rows = self.journal.index.rows(
            f"path > ? AND path < ? AND remote_kind IS NOT NULL AND dirty = 0 AND ({where})",
            (base + "/", base + "0", *params),
        )
        made: list[Node] = []
        for row in list(rows):
            below = node
            for part in row["path"][len(base) + 1 :].split("/"):
                below = self.inodes.child(below, part)
                made.append(below)
            await self.materialize(below)
        for below in reversed(made):
            self.inodes.forget(below.inode, 0)

    async def settle(self, node: Node) -> None:
        """Wait for a fetch of `node` in flight to end, however it ends."""
        fetch = self.fetcher.active.get(node) if self.fetcher else None
        if fetch is not None:
            await fetch.done.wait()

    async def settle_tree(self, node: Node) -> None:
        """Wait for every fetch in flight at or below `node` to end. A folder moved while
        a file in it streams in carries the temporary file along: the fetch would land
        the file at the new path and record it at the old one."""
        while self.fetcher is not None:
            inside = [fetch for at, fetch in self.fetcher.active.items() if _within(at, node)]
            if not inside:
                return
            await inside[0].done.wait()


def _within(node: Node | None, top: Node) -> bool:
    """`node` is `top` or below it."""
    while node is not None:
        if node is top:
            return True
        node = node.parent
    return False

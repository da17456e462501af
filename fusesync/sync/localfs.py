"""Writes into the local tree that untrusted remote data can never steer outside it.

Every path is reached from the target's own directory descriptor one component at a time
with O_NOFOLLOW; files land under a temporary name, are fsynced and renamed into place
(small files in batches: written, made durable by one syncfs, then renamed; file by file
when other programs hold much unwritten data, which a syncfs would write back first).
Every change of the tree's names is numbered; `Tree.durable` says how many are known to
be on disk, so that an index never records a file in place before its rename would
survive a power cut (RowWriter holds such rows until then).
All functions block: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import itertools
import os
import pwd
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import BinaryIO

from fusesync.errors import FusesyncError
from fusesync.sync.model import SPECIAL_BITS

TMP_MARK = ".fusesync-tmp-"
"""Temporary files carry this in their name; scans ignore them, the next pull removes them."""

_tmp_tag = secrets.token_hex(4)  # this process's, then a count: no syscall per name
_tmp_serial = itertools.count()


def _new_tmp_tag() -> None:
    global _tmp_tag
    _tmp_tag = secrets.token_hex(4)


os.register_at_fork(after_in_child=_new_tmp_tag)


def temporary_name(name: str) -> str:
    """A fresh hidden name beside `name` for a file that is not in place yet (created
    with O_EXCL all the same)."""
    return f".{name[:200]}{TMP_MARK}{_tmp_tag}{next(_tmp_serial):x}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

DIRTY_ELSEWHERE = 256 << 20
"""Bytes waiting to be written back, beyond a batch's own, above which the batch is made
durable file by file (an fsync each) instead of by one syncfs. syncfs writes back every
dirty page of the file system first: with 2 GiB another program had just written
(`/proc/meminfo` Dirty), it took 0.92 s for 128 small files, the fsyncs 0.02 s; on a quiet
system one syncfs per batch is the cheaper (5,000 files: 0.20-0.26 s, an fsync each
0.95-1.07 s, or 0.48 s from 16 threads)."""


UNSETTLED_CHANGES = 1024
"""Changes a batch fsynced file by file (see DIRTY_ELSEWHERE) leaves to wait before the
landing makes them durable itself (an fsync of each folder they touched), so that the
index's rows for them (RowWriter) do not all wait for the end of the run."""


class UnsafePath(FusesyncError):
    """A component of the path is a symlink or not a directory: nothing is written."""


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int | None
    gid: int | None
    owner: str | None
    group: str | None


@dataclass(slots=True)
class Landing:
    """One small file to write whole: what `Tree.land` needs, and what it answers."""

    relpath: str
    body: bytes
    mode: int
    mtime_ns: int | None
    owner: Owner | None
    expect: Version | bool | None = True  # as for Tree.write_file
    final_name: str | None = None
    result: os.stat_result | Exception | None = field(default=None, repr=False)


class Tree:
    """The target's directory, held open; paths are relative to it."""

    def __init__(self, root: str | os.PathLike[str] | int) -> None:
        """Open `root`, or take a duplicate of an already open directory descriptor."""
        self.fd = os.dup(root) if isinstance(root, int) else os.open(root, _DIR_FLAGS)
        self._umask = _current_umask()
        self.changed = 0  # changes of names made so far (renames, new and removed entries)
        self.durable = 0  # how many of the first of them are known to be on disk
        self._unsynced: dict[str, int] = {}  # folder -> number of its latest change
        self._marks = threading.Lock()  # changes are made from several worker threads

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def parent_dir(self, relpath: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """Yield (fd of the containing directory, final name), never following a symlink."""
        *dirs, name = relpath.split("/")
        fd = os.dup(self.fd)
        try:
            for depth, part in enumerate(dirs):
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                        self._changed_in("/".join(dirs[:depth]))
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(
                            f"'{relpath}': '{part}' is a symlink or a file here; nothing written"
                        ) from exc
                    raise
                os.close(fd)
                fd = next_fd
            yield fd, name
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _folder_of(self, relpath: str, expect: Version | bool | None
                   ) -> Iterator[tuple[int, str]]:
        """parent_dir for a file about to land: its folders are made where it is new, but
        not where a local file is expected there (`expect` a Version): a folder gone since
        the scan was removed or renamed locally, and making it again would leave an empty
        one behind."""
        expected = isinstance(expect, tuple)
        with contextlib.ExitStack() as stack:
            try:
                found = stack.enter_context(self.parent_dir(relpath, create=not expected))
            except (FileNotFoundError, NotADirectoryError):
                if not expected:
                    raise
                raise LocalChanged(f"'{relpath}' changed locally during the pull; kept"
                                   ) from None
            yield found

    # -- durability of names ---------------------------------------------------------

    def _changed_in(self, folder: str) -> None:
        """An entry of `folder` was made, renamed or removed (call after the change)."""
        with self._marks:
            self.changed += 1
            self._unsynced[folder] = self.changed

    def _synced(self, upto: int) -> None:
        """Every change numbered up to `upto` is on disk."""
        with self._marks:
            if upto > self.durable:
                self.durable = upto
                self._unsynced = {f: n for f, n in self._unsynced.items() if n > upto}

    def settle(self) -> None:
        """Make every change made so far durable: one syncfs, or beside much data other
        programs left unwritten (DIRTY_ELSEWHERE), an fsync of each folder changed."""
        with self._marks:
            upto = self.changed
            folders = list(self._unsynced)
        if upto <= self.durable:
            return
        if _much_unwritten():
            for folder in folders:
                self._sync_folder(folder)
        else:
            _sync_file_system(self.fd)
        self._synced(upto)

    def _sync_folder(self, folder: str) -> None:
        """fsync(2) of a folder: its entries as they stand reach the disk. One gone or
        replaced since was a change of its own parent's, synced as well."""
        if not folder:
            os.fsync(self.fd)
            return
        try:
            with self.parent_dir(folder) as (dfd, name):
                fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return
            raise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lstat(self, relpath: str) -> os.stat_result | None:
        try:
            with self.parent_dir(relpath) as (dfd, name):
                return os.lstat(name, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            return None

    def write_file(
        self,
        relpath: str,
        fill: Callable[[BinaryIO], None],
        mode: int,
        mtime_ns: int | None,
        owner: Owner | None,
        expect: Version | bool | None = True,
        final_name: str | None = None,
    ) -> os.stat_result:
        """Create `relpath` (or `final_name` beside it) from `fill(file)`, atomically.

        `expect` guards against a local change racing the pull: a stat result the path
        must still match, None if it must still be absent, True for no check.
        """
        with self._folder_of(relpath, expect) as (dfd, name):
            name = final_name or name
            tmp = temporary_name(name)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                with os.fdopen(fd, "w+b", closefd=False) as f:
                    fill(f)
                    f.flush()
                _apply(fd, mode, mtime_ns, owner)
                os.fsync(fd)
                _place(dfd, tmp, name, expect, relpath)
                self._changed_in(_folder(relpath))
                return os.fstat(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            finally:
                os.close(fd)

    def land(self, batch: Sequence[Landing]) -> None:
        """Write each file of `batch` under a temporary name, make them all durable with one
        syncfs of the tree's file system (an fsync each beside much data other programs
        left unwritten: DIRTY_ELSEWHERE), then rename each into place if its path is still
        as expected. Sets each item's `result`: the stat of the landed file, or the error
        that left its path alone. One fsync per file cost a pull of small files more than
        its downloads did; the promise is the same: no path ever holds a partial file."""
        parents: dict[str, int] = {}
        staged: list[tuple[Landing, int, int, str, str]] = []  # item, dir fd, fd, tmp, name
        try:
            for item in batch:
                try:
                    staged.append(self._stage(item, parents))
                except Exception as exc:
                    item.result = exc
            if staged:
                if _much_unwritten(own=sum(len(item.body) for item, *_ in staged)):
                    for _, _, fd, _, _ in staged:
                        os.fsync(fd)
                else:
                    upto = self.changed
                    _sync_file_system(self.fd)
                    self._synced(upto)  # the renames of earlier batches too
            for item, dfd, fd, tmp, name in staged:
                try:
                    _place(dfd, tmp, name, item.expect, item.relpath)
                    self._changed_in(_folder(item.relpath))
                    st = os.fstat(fd)
                    if stat.S_IMODE(st.st_mode) != _plain_mode(item.mode):  # a default ACL
                        os.fchmod(fd, _plain_mode(item.mode))
                        st = os.fstat(fd)
                    item.result = st
                except Exception as exc:
                    item.result = exc
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dfd)
            if self.changed - self.durable >= UNSETTLED_CHANGES:
                self.settle()
        except BaseException:
            for _, dfd, _, tmp, _ in staged:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
            raise
        finally:
            for _, _, fd, _, _ in staged:
                os.close(fd)
            for dfd in parents.values():
                os.close(dfd)

    def _stage(self, item: Landing, parents: dict[str, int]) -> tuple[Landing, int, int, str, str]:
        folder, _, name = item.relpath.rpartition("/")
        dfd = parents.get(folder)
        if dfd is None:
            with self._folder_of(item.relpath, item.expect) as (opened, _):
                dfd = parents[folder] = os.dup(opened)
        name = item.final_name or name
        tmp = temporary_name(name)
        # Created with its final mode where the umask leaves it whole (one fchmod less a
        # file; `land` checks the mode it got), else private until it is chmodded.
        mode = _plain_mode(item.mode)
        created = mode if not mode & self._umask else 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     created, dir_fd=dfd)
        try:
            view = memoryview(item.body)
            while view:
                view = view[os.write(fd, view):]
            _apply(fd, item.mode, item.mtime_ns, item.owner, created=created)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return item, dfd, fd, tmp, name

    def write_symlink(
        self, relpath: str, target: str, expect: Version | bool | None = True,
        final_name: str | None = None,
    ) -> os.stat_result:
        with self._folder_of(relpath, expect) as (dfd, name):
            name = final_name or name
            tmp = temporary_name(name)
            os.symlink(target, tmp, dir_fd=dfd)
            try:
                _place(dfd, tmp, name, expect, relpath)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            self._changed_in(_folder(relpath))
            return os.lstat(name, dir_fd=dfd)

    def make_dir(self, relpath: str, mode: int, owner: Owner | None) -> os.stat_result:
        with self.parent_dir(relpath, create=True) as (dfd, name):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=dfd)
                self._changed_in(_folder(relpath))
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)  # refuses a symlink in its place
            try:
                _apply(fd, mode, None, owner)
                return os.fstat(fd)
            finally:
                os.close(fd)

    def remove(self, relpath: str, expect: Version | None) -> bool:
        """Remove a file, symlink or empty directory if it is still as `expect` saw it."""
        try:
            with self.parent_dir(relpath) as (dfd, name):
                st = os.lstat(name, dir_fd=dfd)
                if stat.S_ISDIR(st.st_mode):
                    try:
                        os.rmdir(name, dir_fd=dfd)
                    except OSError as exc:
                        if exc.errno == errno.ENOTEMPTY:
                            return False
                        raise
                    self._changed_in(_folder(relpath))
                    return True
                if expect is not None and version(st) != expect:
                    return False
                os.unlink(name, dir_fd=dfd)
                self._changed_in(_folder(relpath))
                return True
        except (FileNotFoundError, NotADirectoryError):
            return True

    def remove_leftover(self, relpath: str) -> None:
        with contextlib.suppress(OSError, UnsafePath), self.parent_dir(relpath) as (dfd, name):
            if TMP_MARK in name:
                os.unlink(name, dir_fd=dfd)


class LocalChanged(FusesyncError):
    """The local path changed after the scan: the pull leaves it alone."""


Version = tuple[int, int, int, int]
"""(inode, size, mtime_ns, st_mode): a local path's version as a scan saw it."""


def _folder(relpath: str) -> str:
    return relpath.rpartition("/")[0]


def version(st: os.stat_result) -> Version:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


def _place(dfd: int, tmp: str, name: str, expect: Version | bool | None, rel: str) -> None:
    """Rename `tmp` to `name` if the path is still as `expect` says (Tree.write_file).
    Where nothing may stand, the kernel refuses atomically (RENAME_NOREPLACE): a file
    made there after any check the pull could make is never replaced. File systems
    without it (some network ones) get the check just before the rename."""
    if expect is None or expect is False:
        try:
            renameat2(dfd, tmp, dfd, name, RENAME_NOREPLACE)
            return
        except FileExistsError:
            raise LocalChanged(f"'{rel}' appeared locally during the pull; kept") from None
        except OSError as exc:
            if exc.errno not in _NO_RENAMEAT2:
                raise
    _check_expected(dfd, name, expect, rel)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def _check_expected(dfd: int, name: str, expect: Version | bool | None, rel: str) -> None:
    if expect is True:
        return
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        st = None
    if expect is None or expect is False:
        if st is not None:
            raise LocalChanged(f"'{rel}' appeared locally during the pull; kept")
        return
    if st is None or version(st) != expect:
        raise LocalChanged(f"'{rel}' changed locally during the pull; kept")
    if stat.S_ISDIR(st.st_mode):
        raise LocalChanged(f"'{rel}' is a directory here; kept")


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_NO_RENAMEAT2 = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
"""What renameat2 answers where the C library or the file system lacks it or a flag."""


def renameat2(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> None:
    """rename with RENAME_NOREPLACE or RENAME_EXCHANGE (Linux renameat2, through libc);
    OSError(ENOSYS) where the C library has none."""
    if not flags:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    call = getattr(_libc, "renameat2", None)
    if call is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), src)
    if call(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


def _unwritten_bytes() -> int:
    """Bytes of the system's page cache not yet on disk (`Dirty` + `Writeback` in
    /proc/meminfo); 0 where that is not known."""
    found = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", "rb") as meminfo:
        for line in meminfo:
            if line.startswith((b"Dirty:", b"Writeback:")):
                found += int(line.split()[1]) * 1024  # in kB
    return found


def _much_unwritten(own: int = 0) -> bool:
    """Other programs hold more than DIRTY_ELSEWHERE of unwritten data (beyond `own`, the
    caller's): a syncfs would wait for it, so durability goes folder or file by file."""
    return _unwritten_bytes() - own > DIRTY_ELSEWHERE


def _sync_file_system(fd: int) -> None:
    """syncfs(2): everything written to the file system holding `fd` reaches the disk."""
    syncfs = getattr(_libc, "syncfs", None)
    if syncfs is None:  # not Linux: the whole system, then
        os.sync()
        return
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _plain_mode(mode: int) -> int:
    """The permission bits a pulled file gets: setuid, setgid and sticky dropped."""
    return mode & 0o7777 & ~SPECIAL_BITS


def _apply(fd: int, mode: int, mtime_ns: int | None, owner: Owner | None,
           created: int | None = None) -> None:
    """Owner first (chown clears setuid bits), then mode without special bits (unless the
    file was `created` with them), then times."""
    if owner is not None and as_root():
        uid, gid = local_ids(owner)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    if created != _plain_mode(mode):
        os.fchmod(fd, _plain_mode(mode))
    if mtime_ns is not None:
        os.utime(fd, ns=(mtime_ns, mtime_ns))


@cache
def as_root() -> bool:
    """Whether this process may give files their owners (asked once)."""
    return os.geteuid() == 0


def _current_umask() -> int:
    """The process's umask, read without setting it (Linux tells it in /proc since 4.7;
    elsewhere it is set and set back)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@lru_cache(maxsize=4096)
def _uid_for(name: str | None, uid: int | None) -> int | None:
    if name:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_uid
    if uid is not None:
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(uid).pw_uid
    return None


@lru_cache(maxsize=4096)
def _gid_for(name: str | None, gid: int | None) -> int | None:
    if name:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name).gr_gid
    if gid is not None:
        with contextlib.suppress(KeyError):
            return grp.getgrgid(gid).gr_gid
    return None


def local_ids(owner: Owner) -> tuple[int | None, int | None]:
    """The local ids for a remote owner: by name first, then by id, only if it exists.

    Root (id 0) is never granted from remote data: such a file keeps the puller's ids.
    """
    uid = _uid_for(owner.owner, owner.uid)
    gid = _gid_for(owner.group, owner.gid)
    return (uid or None), (gid or None)


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    with contextlib.suppress(KeyError):
        return grp.getgrgid(gid).gr_name
    return None

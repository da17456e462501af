"""POSIX conformance through a real mount: errno values and edge cases, case by case.

Modelled on pjdfstest's cases (tests/<syscall>/NN.t there), which need a network fetch
and a C build this suite cannot make on CI; run the suite itself by hand as described in
the README. Callers other than root act in forked children with other ids, so the mount
allows other users and the kernel checks permissions (default_permissions) as it would
for any file system.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mounting import as_user, assert_clean_log, mounted, open_to_all
from syncenv import Cluster, fill

pytestmark = pytest.mark.timeout(120)

NOBODY, OTHER = 65534, 65533
_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


@pytest.fixture
def home(two: Cluster) -> Iterator[Path]:
    open_to_all(two.home)
    with mounted(two.home, two.env, "default", "--allow-other"):
        work = two.home / "work"
        work.mkdir()
        work.chmod(0o755)
        yield work
    assert_clean_log(two)


def errno_of(action: Callable[[], object]) -> int:
    """0 when `action` succeeds, else the errno it fails with."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def renameat2(src: Path, dst: Path, flags: int) -> int:
    if _libc.renameat2(AT_FDCWD, bytes(src), AT_FDCWD, bytes(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


def make(kind: str, path: Path) -> None:
    """One entry of each kind pjdfstest's create_file makes."""
    if kind == "regular":
        path.write_bytes(b"")
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "char":
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    elif kind == "block":
        os.mknod(path, stat.S_IFBLK | 0o644, os.makedev(7, 200))
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    else:
        os.symlink("test", path)


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()


KINDS = ("regular", "dir", "fifo", "char", "block", "socket", "symlink")


def test_names_and_paths(home: Path) -> None:
    """ENAMETOOLONG, ENOENT, ENOTDIR, ELOOP, EEXIST, EISDIR, ENOTEMPTY (pjdfstest */01-08)."""
    longest, too_long = home / ("n" * 255), home / ("n" * 256)
    longest.write_text("x")
    os.rename(longest, home / "short")
    for action in (lambda: too_long.write_text("x"), lambda: too_long.mkdir(),
                   lambda: os.symlink("t", too_long), lambda: os.rename(home / "short", too_long),
                   lambda: too_long.unlink(), lambda: too_long.rmdir()):
        assert errno_of(action) == errno.ENAMETOOLONG
    os.symlink("n" * 1000, home / "long-target")  # a long target is no long name
    assert os.readlink(home / "long-target") == "n" * 1000
    assert errno_of(lambda: (home / "none" / "x").write_text("x")) == errno.ENOENT
    assert errno_of(lambda: os.rename(home / "none" / "x", home / "y")) == errno.ENOENT
    assert errno_of(lambda: os.open(home / "short" / "x", os.O_RDONLY)) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(home / "short" / "x", home / "y")) == errno.ENOTDIR
    os.symlink("loop2", home / "loop1")
    os.symlink("loop1", home / "loop2")
    for action in (lambda: os.open(home / "loop1" / "x", os.O_RDONLY),
                   lambda: os.unlink(home / "loop1" / "x"), lambda: os.rmdir(home / "loop2" / "x"),
                   lambda: os.rename(home / "short", home / "loop1" / "x"),
                   lambda: os.truncate(home / "loop1" / "x", 0), lambda: os.stat(home / "loop1")):
        assert errno_of(action) == errno.ELOOP
    assert errno_of(lambda: os.open(home / "loop1", os.O_RDONLY | os.O_NOFOLLOW)) == errno.ELOOP
    for kind in KINDS:
        make(kind, home / "taken")
        assert errno_of(lambda: os.mkdir(home / "taken")) == errno.EEXIST
        assert errno_of(lambda: os.symlink("t", home / "taken")) == errno.EEXIST
        assert errno_of(lambda: os.open(home / "taken", os.O_CREAT | os.O_EXCL)) == errno.EEXIST
        remove(home / "taken")
    (home / "d").mkdir()
    assert errno_of(lambda: os.open(home / "d", os.O_WRONLY)) == errno.EISDIR
    assert errno_of(lambda: os.open(home / "d", os.O_RDWR | os.O_TRUNC)) == errno.EISDIR
    assert errno_of(lambda: os.truncate(home / "d", 0)) == errno.EISDIR
    assert errno_of(lambda: os.unlink(home / "d")) == errno.EISDIR
    assert errno_of(lambda: os.rmdir(home / "short")) == errno.ENOTDIR
    assert errno_of(lambda: os.rmdir(f"{home}/d/.")) == errno.EINVAL  # (pathlib drops '.')
    (home / "d" / "f").write_text("f")
    assert errno_of(lambda: os.rmdir(home / "d")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.truncate(home / "short", -1)) == errno.EINVAL
    fd = os.open(home / "short", os.O_RDONLY)
    assert errno_of(lambda: os.ftruncate(fd, 0)) == errno.EINVAL
    os.close(fd)
    assert errno_of(lambda: os.readlink(home / "short")) == errno.EINVAL
    assert sorted(os.listdir(home / "d")) == ["f"]
    assert {".", ".."} <= set(os.popen(f"ls -a {home / 'd'}").read().split())


def test_rename(home: Path) -> None:
    """rename keeps the inode and replaces what it may (pjdfstest rename/00, 12-14, 18-20,
    22, 24); RENAME_NOREPLACE and RENAME_EXCHANGE answer as the kernel's own file systems."""
    for kind in KINDS:
        make(kind, home / "a")
        inode = os.lstat(home / "a").st_ino
        ctime = os.lstat(home / "a").st_ctime_ns
        time.sleep(0.02)  # past the kernel's coarse clock tick
        os.rename(home / "a", home / "b")
        assert errno_of(lambda: os.lstat(home / "a")) == errno.ENOENT
        assert os.lstat(home / "b").st_ino == inode and os.lstat(home / "b").st_ctime_ns > ctime
        if kind != "dir":
            make(kind, home / "c")
            os.rename(home / "b", home / "c")  # over an existing entry of its kind
            assert os.lstat(home / "c").st_ino == inode
            (home / "d").mkdir()
            assert errno_of(lambda: os.rename(home / "c", home / "d")) == errno.EISDIR
            assert errno_of(lambda: os.rename(home / "d", home / "c")) == errno.ENOTDIR
            (home / "d").rmdir()
            remove(home / "c")
        else:
            remove(home / "b")
    (home / "p").mkdir()
    (home / "p" / "child").mkdir()
    (home / "q").mkdir()
    assert os.lstat(home / "p").st_nlink == 3
    os.rename(home / "p" / "child", home / "q" / "child")
    assert os.lstat(home / "p").st_nlink == 2 and os.lstat(home / "q").st_nlink == 3
    assert os.stat(home / "q" / "child" / "..").st_ino == os.stat(home / "q").st_ino
    assert errno_of(lambda: os.rename(home / "q", home / "q" / "child" / "x")) == errno.EINVAL
    assert errno_of(lambda: os.rename(f"{home}/q/child/.", home / "x")) in (
        errno.EINVAL, errno.EBUSY)
    (home / "q" / "child" / "f").write_text("f")
    assert errno_of(lambda: os.rename(home / "p", home / "q")) in (errno.ENOTEMPTY, errno.EEXIST)
    (home / "file").write_text("file")
    os.rename(home / "file", home / "file")  # onto itself: nothing happens
    assert renameat2(home / "file", home / "p", RENAME_NOREPLACE) == errno.EEXIST
    os.symlink("nowhere", home / "dangling")
    assert renameat2(home / "file", home / "dangling", RENAME_NOREPLACE) == errno.EEXIST
    assert renameat2(home / "file", home / "missing", RENAME_EXCHANGE) == errno.ENOENT
    assert renameat2(home / "file", home / "p", RENAME_EXCHANGE | RENAME_NOREPLACE) == \
        errno.EINVAL
    assert renameat2(home / "file", home / "q", RENAME_EXCHANGE) == 0  # file <-> dir
    assert (home / "q").read_text() == "file" and (home / "file" / "child" / "f").exists()
    assert renameat2(home / "file", home / "fresh", RENAME_NOREPLACE) == 0
    assert (home / "fresh" / "child" / "f").read_text() == "f"


def test_open_files_outlive_unlink_and_rmdir(home: Path) -> None:
    """An unlinked file stays usable through its descriptor (pjdfstest unlink/14), with
    fchmod, fchown, futimens and ftruncate too; a removed directory lists empty."""
    fd = os.open(home / "f", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"hello")
    os.unlink(home / "f")
    assert os.fstat(fd).st_nlink == 0 and os.pread(fd, 5, 0) == b"hello"
    os.write(fd, b", world")
    os.ftruncate(fd, 8)
    os.fchmod(fd, 0o600)
    os.fchown(fd, NOBODY, NOBODY)
    os.utime(fd, ns=(1_000_000_001, 2_000_000_002))
    st = os.fstat(fd)
    assert (st.st_size, stat.S_IMODE(st.st_mode), st.st_uid) == (8, 0o600, NOBODY)
    assert st.st_mtime_ns == 2_000_000_002 and os.pread(fd, 100, 0) == b"hello, w"
    os.close(fd)
    assert not (home / "f").exists()
    (home / "gone").mkdir()
    dir_fd = os.open(home / "gone", os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(home / "gone")
    assert os.listdir(dir_fd) == [] and os.fstat(dir_fd).st_nlink == 0
    assert errno_of(lambda: os.open("x", os.O_CREAT | os.O_WRONLY, dir_fd=dir_fd)) == \
        errno.ENOENT
    os.close(dir_fd)


def test_append_truncate_and_sparse(home: Path) -> None:
    """O_APPEND writes land at the end wherever the offset is; O_TRUNC and truncate."""
    (home / "log").write_bytes(b"12345")
    fd = os.open(home / "log", os.O_RDWR | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"ab")
    os.close(fd)
    assert (home / "log").read_bytes() == b"12345ab"
    fd = os.open(home / "log", os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.close(fd)
    os.truncate(home / "log", 1 << 20)
    assert (home / "log").read_bytes() == b"\0" * (1 << 20)
    fd = os.open(home / "log", os.O_RDWR)
    os.ftruncate(fd, 3)
    os.pwrite(fd, b"end", (2 << 30) + 1)  # past 2 GiB (pjdfstest open/25)
    os.close(fd)
    assert os.stat(home / "log").st_size == (2 << 30) + 4


def test_permissions_are_the_kernels(home: Path) -> None:
    """default_permissions: every check a plain file system makes (pjdfstest */05-06,
    open/06-08, chmod/07, chown/07, unlink/11, rename/09, truncate/06)."""
    (home / "mine").mkdir()
    os.chown(home / "mine", NOBODY, NOBODY)
    (home / "mine" / "f").write_text("f")
    os.chmod(home / "mine" / "f", 0o600)
    assert as_user(NOBODY, NOBODY, lambda: (home / "mine" / "f").read_text()) == errno.EACCES
    assert as_user(NOBODY, NOBODY, lambda: (home / "mine" / "g").write_text("g")) == 0
    assert as_user(NOBODY, NOBODY, lambda: os.truncate(home / "mine" / "f", 0)) == errno.EACCES
    assert as_user(NOBODY, NOBODY, lambda: os.chmod(home / "mine" / "f", 0o666)) == errno.EPERM
    assert as_user(NOBODY, NOBODY, lambda: os.chown(home / "mine" / "g", OTHER, -1)) == \
        errno.EPERM
    assert as_user(NOBODY, NOBODY, lambda: os.chown(home / "mine" / "g", -1, OTHER),
                   (NOBODY, OTHER)) == 0  # the owner may give it to one of its groups
    assert os.stat(home / "mine" / "g").st_gid == OTHER
    assert as_user(NOBODY, NOBODY, lambda: os.chown(home / "mine" / "f", -1, -1)) == 0
    assert as_user(NOBODY, NOBODY, lambda: os.unlink(home / "mine" / "f")) == 0  # its dir
    (home / "mine").chmod(0o644)  # no search
    assert as_user(NOBODY, NOBODY, lambda: os.stat(home / "mine" / "g")) == errno.EACCES
    (home / "mine").chmod(0o555)  # no write
    assert as_user(NOBODY, NOBODY, lambda: os.unlink(home / "mine" / "g")) == errno.EACCES
    assert as_user(NOBODY, NOBODY, lambda: os.rename(home / "mine" / "g", home / "x")) == \
        errno.EACCES
    (home / "mine").chmod(0o755)
    (home / "sticky").mkdir()
    os.chmod(home / "sticky", 0o1777)
    (home / "sticky" / "roots").write_text("r")
    os.chmod(home / "sticky" / "roots", 0o666)
    assert as_user(NOBODY, NOBODY, lambda: os.unlink(home / "sticky" / "roots")) in (
        errno.EACCES, errno.EPERM)
    assert as_user(NOBODY, NOBODY, lambda: os.rename(home / "sticky" / "roots",
                                                      home / "sticky" / "x")) in (
        errno.EACCES, errno.EPERM)
    assert as_user(NOBODY, NOBODY, lambda: (home / "sticky" / "roots").write_text("w")) == 0
    assert as_user(OTHER, OTHER, lambda: (home / "sticky" / "others").write_text("o")) == 0
    assert as_user(OTHER, OTHER, lambda: os.unlink(home / "sticky" / "others")) == 0


def test_modes_set_ids_and_times(home: Path) -> None:
    """Creation modes under a umask, set-id bits cleared as Linux clears them, utimensat
    (pjdfstest open/00, mkdir/00, chmod/00, chmod/12, chown/00, utimensat/*)."""
    old = os.umask(0o077)
    try:
        fd = os.open(home / "m", os.O_CREAT | os.O_WRONLY, 0o151)
        os.close(fd)
        os.mkdir(home / "md", 0o345)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(home / "m").st_mode) == 0o100
    assert stat.S_IMODE(os.stat(home / "md").st_mode) == 0o300
    fd = os.open(home / "zero", os.O_CREAT | os.O_RDWR, 0)
    os.ftruncate(fd, 0)  # the mode of a new file limits no descriptor opened with it
    os.close(fd)
    assert stat.S_IMODE(os.stat(home / "zero").st_mode) == 0
    (home / "suid").write_text("x")
    os.chmod(home / "suid", 0o6777)
    assert as_user(NOBODY, NOBODY, lambda: append(home / "suid", b"y")) == 0
    assert stat.S_IMODE(os.stat(home / "suid").st_mode) == 0o777  # a write by another
    os.chown(home / "suid", OTHER, OTHER)
    os.chmod(home / "suid", 0o2755)
    assert as_user(OTHER, NOBODY, lambda: os.chmod(home / "suid", 0o2755)) == 0
    assert stat.S_IMODE(os.stat(home / "suid").st_mode) == 0o755  # not in its group
    (home / "sgid").mkdir()
    os.chmod(home / "sgid", 0o2755)
    os.chown(home / "sgid", 0, OTHER)
    (home / "sgid" / "in").mkdir()
    assert os.stat(home / "sgid" / "in").st_gid == OTHER
    assert os.stat(home / "sgid" / "in").st_mode & stat.S_ISGID
    (home / "t").write_text("t")
    os.utime(home / "t", ns=(100_000_000_100_000_000, 200_000_000_200_000_000))
    st = os.stat(home / "t")
    assert (st.st_atime_ns, st.st_mtime_ns) == (100_000_000_100_000_000, 200_000_000_200_000_000)
    os.utime(home / "t", ns=(2**31 * 10**9, 2**32 * 10**9))  # past 2038
    assert os.stat(home / "t").st_mtime == 2**32
    os.chmod(home / "t", 0o666)
    assert as_user(NOBODY, NOBODY, lambda: os.utime(home / "t")) == 0  # now: may write
    assert as_user(NOBODY, NOBODY, lambda: os.utime(home / "t", (1, 1))) == errno.EPERM
    os.chmod(home / "t", 0o644)
    assert as_user(NOBODY, NOBODY, lambda: os.utime(home / "t")) == errno.EACCES


def test_special_files(home: Path) -> None:
    """fifos, sockets and (for root) device nodes are created as asked (pjdfstest
    mknod/00, mkfifo/00, open/17, open/24); the mount is nodev, so a device stays shut."""
    make("fifo", home / "fifo")
    assert errno_of(lambda: os.open(home / "fifo", os.O_WRONLY | os.O_NONBLOCK)) == errno.ENXIO
    make("socket", home / "sock")
    assert stat.S_ISSOCK(os.lstat(home / "sock").st_mode)
    assert errno_of(lambda: os.open(home / "sock", os.O_RDONLY)) == errno.ENXIO
    make("char", home / "null")
    st = os.lstat(home / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert errno_of(lambda: os.open(home / "null", os.O_RDONLY)) == errno.EACCES
    (home / "open").mkdir(mode=0o777)
    os.chmod(home / "open", 0o777)
    assert as_user(NOBODY, NOBODY, lambda: os.mknod(home / "open" / "dev", stat.S_IFCHR | 0o600,
                                                    os.makedev(1, 3))) == errno.EPERM
    assert errno_of(lambda: os.setxattr(home / "fifo", "trusted.x", b"1")) == errno.EOPNOTSUPP


def test_only_user_xattrs_are_supported(home: Path) -> None:
    """Other namespaces answer EOPNOTSUPP, as on a file system without them: `ls -l` then
    stops asking each file for its SELinux label and ACL (coreutils remembers that per
    device), instead of two requests to the daemon per file."""
    (home / "f").write_text("x")
    os.setxattr(home / "f", "user.colour", b"blue")
    assert os.getxattr(home / "f", "user.colour") == b"blue"
    assert errno_of(lambda: os.getxattr(home / "f", "user.none")) == errno.ENODATA
    assert errno_of(lambda: os.removexattr(home / "f", "user.none")) == errno.ENODATA
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        assert errno_of(lambda n=name: os.getxattr(home / "f", n)) == errno.EOPNOTSUPP, name
        assert errno_of(lambda n=name: os.removexattr(home / "f", n)) == errno.EOPNOTSUPP, name
    # user::rw- group::r-- other::r--, as setfacl writes it: version 2, (tag, perm, id)s
    acl = struct.pack("<I" + "HHI" * 3, 2, 0x01, 6, 2**32 - 1, 0x04, 4, 2**32 - 1,
                      0x20, 4, 2**32 - 1)
    assert errno_of(lambda: os.setxattr(home / "f", "system.posix_acl_access", acl)) \
        == errno.EOPNOTSUPP
    assert os.listxattr(home / "f") == ["user.colour"]


@pytest.mark.xfail(strict=True, raises=PermissionError,
                   reason="hard links are refused with EPERM by design: pushed as separate "
                          "objects they could not stay links (pjdfstest link/*)")
def test_hard_links(home: Path) -> None:
    (home / "one").write_text("one")
    os.link(home / "one", home / "two")
    assert os.stat(home / "one").st_nlink == 2


def test_refused_hard_link_says_eperm(home: Path) -> None:
    (home / "one").write_text("one")
    assert errno_of(lambda: os.link(home / "one", home / "two")) == errno.EPERM
    assert os.stat(home / "one").st_nlink == 1 and not (home / "two").exists()


def test_a_full_file_system_answers_enospc_and_leaves_nothing_half_made(
    small_home: Path, fusesync_env
) -> None:
    """A mounted home out of room (or quota), its state inside it as by default: a write
    fails with ENOSPC as it would on the plain folder, and so does a new name, which the
    journal cannot record then (it was EIO, with the file made all the same and a
    traceback in the log); one log line says why. With room again, all goes on."""
    cluster = Cluster(small_home, fusesync_env.server, fusesync_env.bucket)
    cluster.env["XDG_STATE_HOME"] = str(cluster.home / ".local" / "state")
    home = cluster.home
    with mounted(home, cluster.env):
        (home / "before.txt").write_text("room yet\n")
        filler = fill(home)
        assert errno_of(lambda: append(home / "before.txt", b"x" * 8192)) == errno.ENOSPC
        assert errno_of(lambda: (home / "new.txt").write_text("x")) == errno.ENOSPC
        assert not (home / "new.txt").exists() and "new.txt" not in os.listdir(home)
        filler.unlink()
        (home / "new.txt").write_text("room again\n")
    assert (home / "new.txt").read_text() == "room again\n"
    log = (cluster.home / ".local/state/fusesync/default/mount.log").read_text()
    told = [line for line in log.splitlines() if " ERROR " in line]
    assert len(told) == 1 and "No space left on device" in told[0], told
    assert "Traceback" not in log
    cluster.push()
    assert cluster.cli("status").output.splitlines()[-1] == "   in step: nothing to push or pull"

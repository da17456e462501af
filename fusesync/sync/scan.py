"""Detect, local side: walk the target's tree and record what is there in the index.

One stat per path; a file is hashed only when its (size, mtime, ctime, inode, mode) moved
since the last scan. `scan_tree` walks everything (push, status); `scan_paths` looks only
at the paths it is given (pull: the paths the remote changed). Blocking: run them in a
worker thread. They never change the tree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fusesync.index import Index
from fusesync.sync.localfs import TMP_MARK
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import Kind, join, kind_of

LOCAL_COLUMNS = (
    "local_kind",
    "local_size",
    "local_mtime_ns",
    "local_ctime_ns",
    "local_ino",
    "local_mode",
    "local_uid",
    "local_gid",
    "local_md5",
    "local_target",
)
_ABSENT = (None,) * len(LOCAL_COLUMNS)
KEEP: tuple[Any, ...] = ("keep",)
"""`_observe`'s answer for a path whose row must stay as it is."""
_BATCH = 2000
BACKGROUND_HASH = 1 << 20
"""Files at least this large are hashed by other threads while the walk goes on (hashlib
lets go of the GIL on large buffers): the first scan of the bench's home (5,000 small
files, three of 64 MiB) had hashed them one after the other, 0.25 s of its 0.42."""
_HASHERS = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ScanResult:
    paths: int = 0
    hashed: int = 0
    hashed_bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    leftovers: list[str] = field(default_factory=list)  # temporary files of an interrupted pull


def md5_file(path: str | os.PathLike[str], dir_fd: int | None = None) -> str:
    """Hex MD5 of a file's content, read without following a final symlink. Blocks."""
    return _md5_fd(os.open(path, _FILE_FLAGS, dir_fd=dir_fd))


def _md5_fd(fd: int) -> str:
    """Hex MD5 of what `fd` reads; closes it."""
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def md5_text(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogateescape")).hexdigest()


Local = tuple[Any, ...]
"""A path's LOCAL_COLUMNS as the last scan recorded them, in that order: plain tuples,
which a scan of 5,000 paths compares in a third of the time sqlite3.Row takes."""
_KIND, _SIZE, _MTIME, _CTIME, _INO, _MODE, _MD5 = 0, 1, 2, 3, 4, 5, 8
_CHILDREN = f"SELECT path, {', '.join(LOCAL_COLUMNS)} FROM paths WHERE parent = ?"


def _children(index: Index, parent: str) -> dict[str, Local]:
    """The recorded local state of the rows directly inside `parent`, by name."""
    cursor = index.conn.cursor()
    cursor.row_factory = None
    return {row[0].rpartition("/")[2]: row[1:] for row in cursor.execute(_CHILDREN, (parent,))}


def _stat_unchanged(local: Local, st: os.stat_result) -> bool:
    return bool(
        local[_KIND] == Kind.FILE
        and local[_MD5] is not None
        and local[_SIZE] == st.st_size
        and local[_MTIME] == st.st_mtime_ns
        and local[_CTIME] == st.st_ctime_ns
        and local[_INO] == st.st_ino
        and local[_MODE] == st.st_mode
    )


def open_dir(root_fd: int, relpath: str) -> int:
    """A descriptor of directory `relpath` under `root_fd`, never through a symlink."""
    fd = os.dup(root_fd)
    for part in relpath.split("/") if relpath else ():
        try:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = next_fd
    return fd


def scan_tree(
    root_fd: int,
    index: Index,
    exclude: PathMatcher,
    on_progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Record the current state of every path under the directory `root_fd` in `index`.

    Works through descriptors only, so the mount daemon can scan the directory its own
    mount covers. Blocks.
    """
    with ThreadPoolExecutor(_HASHERS, thread_name_prefix="fusesync-hash") as hashers:
        return _scan_tree(root_fd, index, exclude, on_progress, hashers)


def _hashed(rows: list[tuple[Any, ...]], result: ScanResult) -> Iterator[tuple[Any, ...]]:
    """`rows` with every MD5 still being computed waited for; a file that could not be
    read after all keeps its row as it was (as `_observe`'s KEEP)."""
    at = 1 + LOCAL_COLUMNS.index("local_md5")  # a pending row starts with its path
    for row in rows:
        md5 = row[at]
        if isinstance(md5, Future):
            try:
                md5 = md5.result()
            except OSError as exc:
                result.skipped.append((row[0], f"unreadable: {exc.strerror}"))
                continue
            row = (*row[:at], md5, *row[at + 1:])
        yield row


def _scan_tree(
    root_fd: int,
    index: Index,
    exclude: PathMatcher,
    on_progress: Callable[[int], None] | None,
    hashers: ThreadPoolExecutor,
) -> ScanResult:
    result = ScanResult()
    pending: list[tuple[Any, ...]] = []

    def flush() -> None:
        if pending:
            rows = list(_hashed(pending, result))
            with index.transaction():
                index.upsert_many(LOCAL_COLUMNS, rows)
            pending.clear()

    def mark_absent(relpath: str, local: Local) -> None:
        pending.append((relpath, *_ABSENT))
        if local[_KIND] == Kind.DIR:
            mark_absent_below(relpath)

    def mark_absent_below(relpath: str) -> None:
        for below in index.descendants(relpath):
            if below["local_kind"] is not None:
                pending.append((below["path"], *_ABSENT))

    stack = [""]
    while stack:
        parent = stack.pop()
        known = _children(index, parent)
        try:
            dir_fd = open_dir(root_fd, parent)
        except OSError as exc:
            result.skipped.append((parent, f"unreadable directory: {exc.strerror}"))
            continue
        try:
            entries = list(os.scandir(dir_fd))
        except OSError as exc:
            os.close(dir_fd)
            result.skipped.append((parent or ".", f"unreadable directory: {exc.strerror}"))
            continue  # its rows keep their last local state: nothing is taken as deleted
        seen: set[str] = set()
        for entry in entries:
            name = entry.name
            relpath = join(parent, name)
            if TMP_MARK in name:
                result.leftovers.append(relpath)
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                result.skipped.append((relpath, "name is not valid UTF-8"))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished while we looked: absent
            local = known.get(name)
            values = _observe(dir_fd, name, relpath, st, local, exclude, result, hashers)
            if values is None:
                continue
            seen.add(name)
            if values is KEEP:
                continue
            if values[0] == Kind.DIR:
                stack.append(relpath)
            elif local is not None and local[_KIND] == Kind.DIR:
                mark_absent_below(relpath)  # a folder that is a file now: all it held is gone
            if local != values:
                pending.append((relpath, *values))
        os.close(dir_fd)
        for name, local in known.items():
            if name not in seen and local[_KIND] is not None:
                relpath = join(parent, name)
                if not exclude.matches(relpath, local[_KIND] == Kind.DIR):
                    mark_absent(relpath, local)
        if len(pending) >= _BATCH:
            flush()
        if on_progress:
            on_progress(result.paths)
    flush()
    return result


def _observe(
    dir_fd: int,
    name: str,
    relpath: str,
    st: os.stat_result,
    local: Local | None,
    exclude: PathMatcher,
    result: ScanResult,
    hashers: ThreadPoolExecutor | None = None,
) -> tuple[Any, ...] | None:
    """The local columns for one path as `st` shows it (hashing a file whose stat moved
    since `local` was recorded; a large one, given `hashers`, there: its MD5 is then a
    Future); None when the path is not one the index records here (excluded, or a special
    file), KEEP when it cannot be read now: its row stays as the last scan saw it, so an
    unreadable file is never taken for a deleted one."""
    kind = kind_of(st.st_mode)
    if kind is None:
        if not exclude.matches(relpath):
            result.skipped.append((relpath, "special file (fifo, socket or device)"))
        return None
    if exclude.matches(relpath, kind == Kind.DIR):
        return None
    result.paths += 1
    md5: str | Future[str] | None = None
    target: str | None = None
    if kind == Kind.FILE:
        if local is not None and _stat_unchanged(local, st):
            md5 = local[_MD5]
        else:
            try:
                if hashers is not None and st.st_size >= BACKGROUND_HASH:
                    md5 = hashers.submit(_md5_fd, os.open(name, _FILE_FLAGS, dir_fd=dir_fd))
                else:
                    md5 = md5_file(name, dir_fd=dir_fd)
            except OSError as exc:
                result.skipped.append((relpath, f"unreadable: {exc.strerror}"))
                return KEEP
            result.hashed += 1
            result.hashed_bytes += st.st_size
    elif kind == Kind.SYMLINK:
        target = os.readlink(name, dir_fd=dir_fd)
        try:
            target.encode("utf-8")
        except UnicodeEncodeError:  # as for names: the index and S3 keys hold UTF-8 only
            result.skipped.append((relpath, "symlink target is not valid UTF-8"))
            return KEEP  # a row it had stays as it was: never taken for deleted
        md5 = md5_text(target)
    return (
        kind.value,
        st.st_size if kind != Kind.DIR else 0,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        md5,
        target,
    )


def scan_paths(
    root_fd: int, index: Index, paths: Mapping[str, Local | None], exclude: PathMatcher
) -> ScanResult:
    """Record the current local state of just `paths` (relative, none excluded, in any
    order, each with its LOCAL_COLUMNS as the index holds them) in `index`, as
    `scan_tree` would have recorded it. A path below a symlink, a file or a missing
    directory is absent, as the walk would not reach it."""
    result = ScanResult()
    parents: dict[str, int | None] = {}
    pending: list[tuple[Any, ...]] = []
    try:
        for relpath, local in paths.items():
            parent, _, name = relpath.rpartition("/")
            if parent not in parents:
                try:
                    parents[parent] = open_dir(root_fd, parent)
                except OSError:  # missing, a symlink or a file: the walk would not get here
                    parents[parent] = None
            dir_fd = parents[parent]
            values: tuple[Any, ...] | None = None
            if dir_fd is not None:
                try:
                    st = os.lstat(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                else:
                    if TMP_MARK not in name:
                        values = _observe(dir_fd, name, relpath, st, local, exclude, result)
            if values is KEEP:
                continue
            if values is None:
                values = _ABSENT
            if local != values:
                pending.append((relpath, *values))
    finally:
        for fd in parents.values():
            if fd is not None:
                os.close(fd)
    with index.transaction():
        index.upsert_many(LOCAL_COLUMNS, pending)
    return result


"""The one hierarchy of domain errors.

Every error a user can cause or meet carries the exit status the CLI returns and the
errno the mount answers with; the CLI and the FUSE adapter translate them in one place
each and nowhere else.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterator
from contextlib import contextmanager


class FusesyncError(Exception):
    """An error with a clear one-line message for the user."""

    exit_status: int = 1
    errno: int = _errno.EIO


class UsageError(FusesyncError):
    """The command line asked for something that cannot be meant (exit status 2)."""

    exit_status = 2
    errno = _errno.EINVAL


class ConfigError(FusesyncError):
    """The settings file is missing something, unreadable, or not valid TOML."""

    errno = _errno.EINVAL


class NotConfigured(ConfigError):
    """No bucket is set yet: the user must run `fusesync setup` first."""


class TargetError(FusesyncError):
    """A target name or path is invalid, unknown, or clashes with another target."""

    errno = _errno.EINVAL


class Declined(FusesyncError):
    """The user answered no at a prompt, or no answer could be read."""

    errno = _errno.ECANCELED


class BusyError(FusesyncError):
    """Another process owns the target (a push, a pull, or the mount daemon)."""

    errno = _errno.EBUSY

    def __init__(self, message: str, activity: str | None = None) -> None:
        super().__init__(message)
        self.activity = activity  # what the owner is doing ('push', 'mount'...), if known


class RemoteError(FusesyncError):
    """The object store refused or could not be reached."""

    errno = _errno.EIO


class RemoteChanged(RemoteError):
    """The remote object is no longer the one the index knows (412 on a conditional write)."""

    errno = _errno.ESTALE


class RemoteUnchanged(RemoteError):
    """The remote object is still the version named (304 on a conditional read)."""


class RemoteNotFound(RemoteError):
    """The object is not (or no longer) on the remote."""

    errno = _errno.ENOENT


class BucketNotFound(RemoteError):
    """The configured bucket does not exist (or the endpoint says so)."""


class SourceChanged(FusesyncError):
    """A local file changed between being hashed and being uploaded; push it again later."""

    errno = _errno.EAGAIN


class IntegrityError(FusesyncError):
    """Data read back does not verify (a truncated, corrupted or reordered object)."""

    errno = _errno.EIO


class WriteRefused(FusesyncError):
    """A file system refused a write for want of room (ENOSPC, EDQUOT) or as read-only
    (EROFS); the errno is the one it answered."""

    def __init__(self, message: str, code: int = _errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


class TreeFull(WriteRefused):
    """The target's file system refused a write: every write after it would fail the same
    way, so the run stops."""


class StateError(WriteRefused):
    """fusesync's own files (a target's lock or index) cannot be written."""

    def __init__(self, message: str, code: int = _errno.EIO) -> None:
        super().__init__(f"{message}; {NO_ROOM[code]}" if code in NO_ROOM else message, code)
        self.reason = message  # without what to do about it


NO_ROOM = {_errno.ENOSPC: "make room and try again",
           _errno.EDQUOT: "make room or have the quota raised, then try again"}


class SafetyStop(FusesyncError):
    """A guard stopped a run before it could destroy data (empty listing, --max-delete)."""

    errno = _errno.ECANCELED


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a user should hear about: a domain error first, else the first one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (KeyboardInterrupt, FusesyncError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


@contextmanager
def one_error() -> Iterator[None]:
    """Let a nursery's error group leave as the one error a caller can catch and show."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise first_leaf(group) from group

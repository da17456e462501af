"""One owner per target: a push, a pull, or the mount daemon.

An advisory lock (flock) on a file in the target's state folder; the kernel drops it when
its holder dies, so a killed run never leaves the target locked. The file names the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from fusesync.errors import BusyError, StateError


class TargetLock:
    """Hold with `with TargetLock(state_dir, name, "push"):`; fails at once when taken."""

    def __init__(self, state_dir: Path, target: str, activity: str) -> None:
        self.path = state_dir / "lock"
        self.target = target
        self.activity = activity
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _unwritable(self.path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            if len(holder) < 2:
                raise BusyError(f"target '{self.target}' is busy: in use") from None
            activity, pid = holder[:2]
            if activity == "mount":
                raise BusyError(f"target '{self.target}' is mounted (daemon pid {pid}): run "
                                f"'fusesync unmount {self.target}' first", activity) from None
            raise BusyError(f"target '{self.target}' is busy: {activity} running as pid {pid}",
                            activity) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.activity} {os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise _unwritable(self.path, exc) from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _unwritable(path: Path, exc: OSError) -> StateError:
    return StateError(f"cannot write '{path}': {exc.strerror}", exc.errno or errno.EIO)

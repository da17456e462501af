"""Real mounts for the tests: `fusesync mount NAME --foreground` in a subprocess.

`Mount.start` waits until the path is a mount point; `Mount.stop` unmounts lazily
(fusermount3 -u -z) and ends the subprocess by its pid, also when the test failed. A
mount must never outlive its test, and nothing here touches a mount it did not make.
Also the helpers the test_mount*.py files share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from syncenv import Cluster

MOUNT_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


def is_mounted(path: Path) -> bool:
    """True when `path` is a mount point in /proc/self/mountinfo (works for stale ones)."""
    where = os.path.abspath(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4].replace("\\040", " ") == where:
            return True
    return False


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Mount:
    """One `fusesync mount` subprocess and the path it mounts."""

    path: Path
    env: dict[str, str]
    name: str = "default"
    args: tuple[str, ...] = ()
    log_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fusesync.cli", "mount", self.name, "--foreground",
                *self.args]

    def start(self) -> Mount:
        out_dir = self.log_dir or self.path.parent
        self.stdout = out_dir / f"mount-{self.name}-{os.getpid()}-{time.monotonic_ns()}.out"
        with self.stdout.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(), env={**os.environ, **self.env}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"fusesync mount exited ({self.proc.returncode}):\n"
                                   f"{self.output()}")
            return is_mounted(self.path) and "mounted at" in self.output()

        try:
            wait_until(up, MOUNT_TIMEOUT, f"the mount at {self.path}")
        except BaseException:
            self.stop()
            raise
        return self

    def output(self) -> str:
        try:
            return self.stdout.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """kill -9 the daemon: the mount stays behind, stale."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(EXIT_TIMEOUT)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Lazy unmount if still mounted, then make sure our subprocess is gone."""
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False,
                           capture_output=True)
        if self.proc is None:
            return
        try:
            self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(EXIT_TIMEOUT)


@contextlib.contextmanager
def mounted(path: Path, env: dict[str, str], name: str = "default",
            *args: str) -> Iterator[Mount]:
    """A live mount of target `name` at `path` for the duration of the block."""
    mount = Mount(path, env, name, args)
    mount.start()
    try:
        yield mount
    finally:
        mount.stop()


def as_user(uid: int, gid: int, action: Callable[[], object],
            groups: tuple[int, ...] = ()) -> int:
    """Run `action` in a forked child with these ids; 0 when it returned, else the errno
    of the OSError it raised. Nothing is executed: the child needs no interpreter of its
    own that the user may not be allowed to run."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 255
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                action()
                code = 0
            except OSError as exc:
                code = exc.errno or 255
        finally:
            os.write(write_end, str(code).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return int(answer or b"255")


def open_to_all(path: Path) -> None:
    """Let every user traverse the folders down to `path` (test folders are 0700)."""
    for folder in [*reversed(path.parents), path]:
        if str(folder).startswith(tempfile.gettempdir() + "/"):
            folder.chmod(folder.stat().st_mode | 0o011)


def forward_in(env: dict[str, str], verb: str, name: str = "default",
               **args: object) -> tuple[int, str]:
    """Run `verb` in the mount daemon of target `name`, as the CLI does while mounted."""
    from fusesync.config import Config
    from fusesync.fs.forward import forward

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        target = Config.load().target(name)
        reply = forward(target, verb, dict(args))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert reply is not None, f"no mount daemon answers for '{name}'"
    return reply


# -- shared by the test_mount*.py files ---------------------------------------------------


def assert_clean_log(cluster: Cluster, allowed: tuple[str, ...] = ()) -> None:
    """No warning or error in the daemon's log beyond those the test provoked."""
    log = cluster.state / "default" / "mount.log"
    bad = [line for line in log.read_text().splitlines()
           if (" ERROR " in line or " WARNING " in line or "Traceback" in line)
           and not any(a in line for a in allowed)]
    assert not bad, "\n".join(bad)


def dirty_paths(cluster: Cluster) -> set[str]:
    db = sqlite3.connect(cluster.state / "default" / "index.db")
    try:
        return {row[0] for row in db.execute("SELECT path FROM paths WHERE dirty != 0")}
    finally:
        db.close()


def local_kind(cluster: Cluster, path: str) -> str | None:
    """What the index says stands in the directory at `path` (None: remote-only)."""
    db = sqlite3.connect(cluster.state / "default" / "index.db")
    try:
        row = db.execute("SELECT local_kind FROM paths WHERE path = ?", (path,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def populate_remote(one: Cluster) -> None:
    """Cluster one pushes a small home; cluster two pulls nothing yet."""
    (one.home / "docs").mkdir()
    (one.home / "docs" / "notes.txt").write_text("remote notes\n")
    (one.home / "big.bin").write_bytes(os.urandom(3 << 20))
    (one.home / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (one.home / "script.sh").chmod(0o750)
    os.utime(one.home / "script.sh", (1_600_000_000, 1_600_000_000))
    (one.home / "link").symlink_to("docs/notes.txt")
    one.push()


def mounted_run(cluster: Cluster, verb: str, status: int = 0, **args: object) -> str:
    """push, pull or status inside the daemon, as the CLI forwards them while mounted."""
    code, output = forward_in(cluster.env, verb, **args)
    assert code == status, output
    return output


def remote_only_state(two: Cluster) -> None:
    """Two learns the remote into its index without fetching: a pull while mounted."""
    with mounted(two.home, two.env):
        mounted_run(two, "pull")

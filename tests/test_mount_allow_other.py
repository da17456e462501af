"""--allow-other for a user other than root: throwaway users (made here, removed after)
mount and read, and the kernel checks every other user's permissions (default_permissions).

The mounting user runs the system's python3 with this checkout and its virtualenv's
packages on PYTHONPATH: the virtualenv's own interpreter may sit where only root can go.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.mounting import Mount, as_user, is_mounted, open_to_all

from fusesync.fs.daemon import fuse_conf_allows_other

if TYPE_CHECKING:
    from conftest import FusesyncEnv

pytestmark = pytest.mark.timeout(180)

SYSTEM_PYTHON = Path("/usr/bin/python3")
FUSE_CONF = Path("/etc/fuse.conf")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def command(self, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                str(SYSTEM_PYTHON), "-m", "fusesync.cli", *args]


@contextlib.contextmanager
def throwaway_user(prefix: str) -> Iterator[User]:
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell",
                    "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextlib.contextmanager
def fuse_conf_allowing_other() -> Iterator[None]:
    before = FUSE_CONF.read_bytes() if FUSE_CONF.exists() else None
    FUSE_CONF.write_bytes((before or b"") + b"\nuser_allow_other\n")
    try:
        yield
    finally:
        if before is None:
            FUSE_CONF.unlink()
        else:
            FUSE_CONF.write_bytes(before)


@contextlib.contextmanager
def dev_fuse_for_everyone() -> Iterator[None]:
    """/dev/fuse as most systems have it (0666); some containers keep it root's alone."""
    dev = Path("/dev/fuse")
    before = dev.stat().st_mode & 0o777
    dev.chmod(0o666)
    try:
        yield
    finally:
        dev.chmod(before)


class MountAs(Mount):
    """A mount whose daemon runs as `user`."""

    user: User

    def command(self) -> list[str]:
        return self.user.command("mount", self.name, "--foreground", *self.args)


@pytest.fixture
def owner(tmp_path: Path, fusesync_env: FusesyncEnv) -> Iterator[tuple[User, dict[str, str]]]:
    """A user of its own with a home and fusesync set up on the test's bucket."""
    if not SYSTEM_PYTHON.exists():
        pytest.fail(f"{SYSTEM_PYTHON} is needed to run fusesync as another user")
    with throwaway_user("fsown") as user:
        root = tmp_path / "owner"
        (root / "home").mkdir(parents=True)
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(root)], check=True)
        os.chmod(root / "home", 0o755)
        open_to_all(root)
        site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **fusesync_env.server.env(),
            "HOME": str(root / "home"), "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_STATE_HOME": str(root / "state"), "XDG_CACHE_HOME": str(root / "cache"),
            "USER": user.name, "LOGNAME": user.name, "PYTHONPATH": f"{REPO}:{site}",
            "FUSESYNC_SITE_CONFIG": str(root / "site-config.toml"),  # none: not the machine's
        }
        setup = subprocess.run(
            user.command("setup", "--bucket", fusesync_env.bucket, "--endpoint-url",
                         fusesync_env.server.endpoint_url, "--addressing-style", "path"),
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
        yield user, env


def test_allow_other_needs_user_allow_other(owner: tuple[User, dict[str, str]]) -> None:
    user, env = owner
    if fuse_conf_allows_other():
        pytest.skip("this machine's /etc/fuse.conf already allows other users")
    with dev_fuse_for_everyone():
        result = subprocess.run(user.command("mount", "--foreground", "--allow-other"),
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "needs 'user_allow_other' in /etc/fuse.conf" in result.stdout + result.stderr
    assert not is_mounted(Path(env["HOME"]))


def test_another_user_reads_through_an_allow_other_mount(
    owner: tuple[User, dict[str, str]],
) -> None:
    user, env = owner
    home = Path(env["HOME"])
    with throwaway_user("fsread") as reader, fuse_conf_allowing_other(), \
            dev_fuse_for_everyone():
        mount = MountAs(home, env, "default", ("--allow-other",))
        mount.user = user
        mount.start()
        try:
            (home / "public.txt").write_text("for everyone")
            (home / "private.txt").write_text("for the owner")
            (home / "private.txt").chmod(0o600)
            (home / "closed").mkdir(mode=0o700)
            (home / "closed" / "inside.txt").write_text("inside")
            st = os.stat(home / "private.txt")
            assert (st.st_uid, st.st_gid) == (user.uid, user.gid)  # the daemon's own files

            def read(path: Path) -> int:
                return as_user(reader.uid, reader.gid, lambda: path.read_text())

            assert read(home / "public.txt") == 0
            assert as_user(reader.uid, reader.gid, lambda: os.listdir(home)) == 0
            assert read(home / "private.txt") == errno.EACCES
            assert as_user(reader.uid, reader.gid, lambda: os.listdir(home / "closed")) == \
                errno.EACCES
            assert read(home / "closed" / "inside.txt") == errno.EACCES
            assert as_user(reader.uid, reader.gid,
                           lambda: (home / "new.txt").write_text("x")) == errno.EACCES
            assert as_user(reader.uid, reader.gid,
                           lambda: os.chmod(home / "public.txt", 0o666)) == errno.EPERM
            assert as_user(user.uid, user.gid, lambda: (home / "private.txt").read_text()) == 0
        finally:
            mount.stop()
        # without --allow-other the kernel lets no other user in at all
        mount = MountAs(home, env, "default", ())
        mount.user = user
        mount.start()
        try:
            assert as_user(reader.uid, reader.gid,
                           lambda: (home / "public.txt").read_text()) == errno.EACCES
            assert as_user(user.uid, user.gid, lambda: (home / "public.txt").read_text()) == 0
        finally:
            mount.stop()
    assert (home / "private.txt").read_text() == "for the owner"
    log = Path(env["XDG_STATE_HOME"]) / "fusesync" / "default" / "mount.log"
    assert " ERROR " not in log.read_text()

"""The first-login hooks the package installs (/etc/profile.d/fusesync.sh and its csh twin),
sourced by a real non-root user against the real S3 server, with the packaged command.

A user of the test's own is made with useradd and removed after it, failed or not. The
first login pulls the user's 'default' target in the background; the second does nothing;
an unreachable store leaves the login unharmed (exit 0 at once) and says why in the log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.package import Package, built_package
from syncenv import Cluster

pytestmark = pytest.mark.timeout(300)

HOOKS = {"sh": "etc/profile.d/fusesync.sh", "tcsh": "etc/csh/login.d/fusesync"}
SOURCE = {"sh": ".", "tcsh": "source"}
JOB_TIMEOUT = 90.0  # a pull of a few files, or a store's retries running out


@dataclass(frozen=True)
class LoginUser:
    name: str
    uid: int
    home: Path
    site: Path  # the site settings file the hook is pointed at

    @property
    def state(self) -> Path:
        return self.home / ".local/state/fusesync"

    @property
    def log(self) -> Path:
        return self.state / "first-login.log"

    def processes(self) -> list[str]:
        """'PID STATE COMMAND' of each live process of this user (a zombie has ended: it
        only waits to be reaped by PID 1, which in a container may take its time)."""
        found = subprocess.run(["ps", "-u", str(self.uid), "-o", "pid=,stat=,args="],
                               capture_output=True, text=True)
        return [line.strip() for line in found.stdout.splitlines()
                if not line.split()[1].startswith("Z")]

    def wait_idle(self) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def package() -> Package:
    return built_package()


@pytest.fixture
def user() -> Iterator[LoginUser]:
    """A fresh user whose home lies in a throwaway folder; removed after the test with
    every process the test started as it."""
    base = Path(tempfile.mkdtemp(prefix="fusesync-login-"))
    base.chmod(0o755)
    name = f"fsl{secrets.token_hex(5)}"
    home = base / name
    try:
        subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell",
                        "/bin/sh", "--user-group", name], check=True, capture_output=True)
        uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                                 check=True).stdout)
        login_user = LoginUser(name, uid, home, base / "site.toml")
        yield login_user
    finally:
        with contextlib.suppress(NameError):  # useradd itself failed: nothing ran as it
            _end_processes(login_user)
        # --force: a zombie of the user's, not yet reaped by PID 1, must not keep it.
        subprocess.run(["userdel", "--force", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        assert subprocess.run(["id", name], capture_output=True).returncode != 0, name


def _end_processes(user: LoginUser) -> None:
    """Let the user's background jobs (started by this test) finish, then end the rest."""
    user.wait_idle()
    for process in user.processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(process.split()[0]), signal.SIGKILL)


def write_site(user: LoginUser, bucket: str, endpoint: str, mode: str = "pull") -> None:
    user.site.write_text(f'bucket = "{bucket}"\nendpoint_url = "{endpoint}"\n'
                         f'addressing_style = "path"\nfirst_login = "{mode}"  # the hook\n')
    user.site.chmod(0o644)


def login(user: LoginUser, package: Package, server, shell: str) -> tuple[str, float]:
    """What a login shell does with the hook: source it, then go on. Returns the shell's
    output and how long the login took; fails unless the shell exited 0."""
    hook = package.root / HOOKS[shell]
    started = time.monotonic()
    output = as_user(user, package, server, shell, "-c", f"{SOURCE[shell]} {hook}; echo login-ok")
    return output, time.monotonic() - started


def as_user(user: LoginUser, package: Package, server, *command: str) -> str:
    """Run `command` as the user, in the bare environment of a login; its output, or fail."""
    env = {
        "HOME": str(user.home), "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8",
        "PATH": f"{package.root}/usr/bin:/usr/bin:/bin", "FUSESYNC_SITE_CONFIG": str(user.site),
        **server.env(),
    }
    done = subprocess.run(
        ["runuser", "-u", user.name, "--", "env", "-i",
         *(f"{key}={value}" for key, value in env.items()), *command],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def wait_for_log(user: LoginUser, line: str) -> str:
    """The first-login log once the job has written its last line, which must be `line`."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        text = user.log.read_text() if user.log.exists() else ""
        last = text.splitlines()[-1] if text else ""
        if last.startswith(("fusesync first login: done", "fusesync first login: failed")):
            assert last.startswith(line), text
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"the first login's job did not finish:\n{text}")
        time.sleep(0.1)


def seed(tmp_path: Path, server, bucket: str, user: LoginUser) -> Cluster:
    """Another cluster where this user pushed their home before."""
    cluster = Cluster(tmp_path / "earlier", server, bucket)
    cluster.env.update(USER=user.name, LOGNAME=user.name)
    (cluster.home / "projects").mkdir()
    (cluster.home / "projects" / "notes.txt").write_text("written on an earlier cluster\n")
    (cluster.home / "bin").mkdir()
    (cluster.home / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (cluster.home / "bin" / "run.sh").chmod(0o750)
    (cluster.home / ".profile").write_text("# the user's own, from an earlier cluster\n")
    cluster.push()
    return cluster


@pytest.mark.parametrize("shell", ["sh", "tcsh"])
def test_first_login_pulls_and_the_second_does_nothing(
    shell: str, user: LoginUser, package: Package, fusesync_env, tmp_path: Path
) -> None:
    server, bucket = fusesync_env.server, fusesync_env.bucket
    earlier = seed(tmp_path, server, bucket, user)
    write_site(user, bucket, server.endpoint_url)
    skeleton = (user.home / ".profile").read_text()  # useradd copied /etc/skel

    output, seconds = login(user, package, server, shell)
    assert output == "login-ok\n"
    assert seconds < 1.0, f"the login took {seconds:.2f} s"
    log = wait_for_log(user, "fusesync first login: done")  # exit status 3 is done too
    assert "fusesync first login: pull default" in log
    # The skeleton's .profile and the user's remote one: the skeleton's stays in place,
    # the user's lands beside it.
    assert (user.home / ".profile").read_text() == skeleton
    (conflict,) = user.home.glob(".profile*conflict*")
    assert conflict.read_text() == "# the user's own, from an earlier cluster\n"
    notes = user.home / "projects" / "notes.txt"
    assert notes.read_text() == "written on an earlier cluster\n"
    script = (user.home / "bin" / "run.sh").stat()
    assert (script.st_uid, script.st_mode & 0o777) == (user.uid, 0o750)
    assert (user.state / "first-login").exists()

    # The earlier cluster changes a file; a second login must not pull it, nor start anything.
    (earlier.home / "projects" / "notes.txt").write_text("changed later\n")
    earlier.push()
    user.wait_idle()  # the first login's job, past its last line
    output, seconds = login(user, package, server, shell)
    assert output == "login-ok\n"
    assert seconds < 1.0, f"the login took {seconds:.2f} s"
    assert user.processes() == []
    assert user.log.read_text() == log
    assert notes.read_text() == "written on an earlier cluster\n"


@pytest.mark.parametrize("shell", ["sh", "tcsh"])
def test_unreachable_store_leaves_the_login_unharmed(
    shell: str, user: LoginUser, package: Package, fusesync_env
) -> None:
    with socket_nobody_answers() as endpoint:
        write_site(user, fusesync_env.bucket, endpoint)
        output, seconds = login(user, package, fusesync_env.server, shell)
        assert output == "login-ok\n"
        assert seconds < 1.0, f"the login took {seconds:.2f} s"
        log = wait_for_log(user, "fusesync first login: failed")
    assert f"fusesync pull: cannot reach {endpoint}" in log
    assert "the next login tries again" in log
    assert not (user.state / "first-login").exists()  # so the next login tries again
    assert "Traceback" not in log


def test_root_and_a_site_without_first_login_are_left_alone(
    user: LoginUser, package: Package, fusesync_env, tmp_path: Path
) -> None:
    write_site(user, fusesync_env.bucket, fusesync_env.server.endpoint_url, mode="off")
    output, _ = login(user, package, fusesync_env.server, "sh")
    assert output == "login-ok\n" and user.processes() == []
    assert not user.state.exists()

    write_site(user, fusesync_env.bucket, fusesync_env.server.endpoint_url)
    home = tmp_path / "root-home"
    home.mkdir()
    done = subprocess.run(
        ["sh", "-c", f". {package.root / HOOKS['sh']}; echo login-ok"],
        env={"HOME": str(home), "PATH": f"{package.root}/usr/bin:/usr/bin:/bin",
             "FUSESYNC_SITE_CONFIG": str(user.site)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert os.geteuid() != 0 or (done.stdout == "login-ok\n" and list(home.iterdir()) == [])


@contextlib.contextmanager
def socket_nobody_answers() -> Iterator[str]:
    """An endpoint on loopback whose port is held but never listened on: refused at once."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def test_the_sh_and_csh_hooks_run_the_same_job(package: Package) -> None:
    """Only the checks differ between the two shells; the background job is one sh text."""
    jobs = set()
    for hook in HOOKS.values():
        text = (package.root / hook).read_text()
        start = text.index("/bin/sh -c '") + len("/bin/sh -c '")
        jobs.add(text[start:text.index("'", start)])
    assert len(jobs) == 1
    (job,) = jobs
    assert 'fusesync "$1" default; s=$?;' in job  # pull, or mount (which pulls)

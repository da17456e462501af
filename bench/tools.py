"""The tools under test: how each one pushes a directory to a prefix and pulls it back.

Every tool gets the same local SeaweedFS, its own prefix of one bucket, and settings a
competent user would choose; none reads the user's own configuration files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.support.seaweed import SeaweedServer

VENV_BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 3600.0
WORKERS = "32"  # parallel transfers/checkers for the peers that take a number
FUSESYNC_USER = "bench"
FUSESYNC_TARGET = "bench"
_OWN_ENV_PREFIXES = ("AWS_", "RCLONE_", "S3_", "FUSESYNC_", "XDG_")


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: Path

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Outcome:
    returncode: int
    seconds: float
    output: str


def settle() -> None:
    """Write every dirty page back before a timed command (untimed): a tool that makes its
    writes durable (fusesync's syncfs, a mount's `sync`) would otherwise also write back
    what the commands before it left in the page cache, another tool's 220 MB pull
    among them, and pay for it depending on the order."""
    os.sync()


def execute(cmd: Command) -> Outcome:
    """Run `cmd` to its end, output captured; wall-clock seconds from start to exit."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd.argv,
        env=cmd.env,
        cwd=cmd.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    seconds = time.perf_counter() - start
    return Outcome(proc.returncode, seconds, proc.stdout.decode(errors="replace"))


@dataclass(frozen=True)
class Workspace:
    """One tool's corner of the run: its folder, the tree to push and the folder to pull into."""

    root: Path
    src: Path
    dest: Path
    bucket: str
    server: SeaweedServer

    def base_env(self) -> dict[str, str]:
        """The caller's environment without any S3 tool's settings, plus the server's keys."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV_PREFIXES)}
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        env.update(self.server.env())
        env.update(
            HOME=str(home),
            USER=FUSESYNC_USER,
            LANG="C.UTF-8",
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}",
        )
        return env


class Tool(ABC):
    name: ClassVar[str]
    program: ClassVar[str]
    version_args: ClassVar[tuple[str, ...]] = ("--version",)

    def __init__(self, exe: Path, ws: Workspace) -> None:
        self.exe = str(exe)
        self.ws = ws
        self.env = ws.base_env()

    @classmethod
    def locate(cls) -> Path | None:
        """The venv's copy of the program, else the first one on PATH."""
        beside = VENV_BIN / cls.program
        if beside.is_file() and os.access(beside, os.X_OK):
            return beside
        found = shutil.which(cls.program)
        return Path(found) if found else None

    @classmethod
    def version(cls, exe: Path) -> str:
        try:
            proc = subprocess.run(
                [str(exe), *cls.version_args], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

    @property
    def remote(self) -> str:
        return f"s3://{self.ws.bucket}/peers/{self.name}/"

    def setup(self) -> None:  # noqa: B027 (most tools need none)
        """Write settings; untimed."""

    @abstractmethod
    def push(self) -> Command: ...

    @abstractmethod
    def pull(self) -> Command: ...

    def _cmd(self, *args: str) -> Command:
        return Command([self.exe, *args], self.env, self.ws.root)


class Fusesync(Tool):
    """Cluster A pushes; cluster B (its own config and state, same bucket) pulls."""

    name = "fusesync"
    program = "fusesync"

    def setup(self) -> None:
        # As installed: pip (and the .deb) compile the package's bytecode at install time,
        # an editable checkout does not, and with PYTHONDONTWRITEBYTECODE set every run
        # would compile fusesync's sources anew. py_compile writes regardless of it.
        import compileall

        import fusesync

        compileall.compile_dir(Path(fusesync.__file__).parent, quiet=1)
        self.env_a = self._cluster("a", self.ws.src)
        self.env_b = self._cluster("b", self.ws.dest)

    def _cluster(self, side: str, folder: Path) -> dict[str, str]:
        env = dict(self.env)
        env["XDG_CONFIG_HOME"] = str(self.ws.root / side / "config")
        env["XDG_STATE_HOME"] = str(self.ws.root / side / "state")
        url = self.ws.server.endpoint_url
        setup = ("setup", "--bucket", self.ws.bucket, "--endpoint-url", url)
        for args in ((*setup, "--addressing-style", "path"), ("add", FUSESYNC_TARGET, str(folder))):
            cmd = Command([self.exe, *args], env, self.ws.root)
            outcome = execute(cmd)
            if outcome.returncode != 0:
                raise RuntimeError(
                    f"'{cmd.shell()}' exited {outcome.returncode}:\n{outcome.output.strip()}"
                )
        return env

    def push(self) -> Command:
        return Command([self.exe, "push", FUSESYNC_TARGET], self.env_a, self.ws.root)

    def pull(self) -> Command:
        return Command([self.exe, "pull", FUSESYNC_TARGET], self.env_b, self.ws.root)


class AwsCli(Tool):
    name = "aws"
    program = "aws"

    def setup(self) -> None:
        config = self.ws.root / "aws-config"
        config.write_text("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
        self.env["AWS_CONFIG_FILE"] = str(config)

    def _sync(self, source: str, dest: str) -> Command:
        url = self.ws.server.endpoint_url
        return self._cmd(
            "s3", "sync", source, dest, "--delete", "--only-show-errors", "--endpoint-url", url
        )

    def push(self) -> Command:
        return self._sync(str(self.ws.src), self.remote)

    def pull(self) -> Command:
        return self._sync(self.remote, str(self.ws.dest))


class Rclone(Tool):
    """Default comparison (size + modtime); that reads each object's mtime with a HEAD."""

    name = "rclone"
    program = "rclone"
    version_args = ("version",)

    def setup(self) -> None:
        config = self.ws.root / "rclone.conf"
        config.touch()
        self.env["RCLONE_CONFIG"] = str(config)  # an empty file, not ~/.config/rclone
        for key, value in {
            "TYPE": "s3",
            "PROVIDER": "SeaweedFS",
            "ENDPOINT": self.ws.server.endpoint_url,
            "ACCESS_KEY_ID": self.ws.server.access_key,
            "SECRET_ACCESS_KEY": self.ws.server.secret_key,
            "REGION": self.ws.server.region,
            "FORCE_PATH_STYLE": "true",
        }.items():
            self.env[f"RCLONE_CONFIG_BENCH_{key}"] = value

    @property
    def remote(self) -> str:
        return f"bench:{self.ws.bucket}/peers/{self.name}"

    def _sync(self, source: str, dest: str) -> Command:
        flags = ("--transfers", WORKERS, "--checkers", WORKERS, "--fast-list")
        return self._cmd("sync", source, dest, *flags)

    def push(self) -> Command:
        return self._sync(str(self.ws.src), self.remote)

    def pull(self) -> Command:
        return self._sync(self.remote, str(self.ws.dest))


class S5cmd(Tool):
    name = "s5cmd"
    program = "s5cmd"
    version_args = ("version",)

    def _sync(self, source: str, dest: str) -> Command:
        url = self.ws.server.endpoint_url
        return self._cmd(
            "--endpoint-url", url, "--numworkers", WORKERS, "sync", "--delete", source, dest
        )

    def push(self) -> Command:
        return self._sync(f"{self.ws.src}/", self.remote)

    def pull(self) -> Command:
        return self._sync(f"{self.remote}*", f"{self.ws.dest}/")


class S3cmd(Tool):
    """Single-threaded; compares size + MD5, so every run reads every local file."""

    name = "s3cmd"
    program = "s3cmd"

    def setup(self) -> None:
        host = self.ws.server.endpoint_url.removeprefix("http://")
        self.config = self.ws.root / "s3cfg"
        self.config.write_text(
            "[default]\n"
            f"access_key = {self.ws.server.access_key}\n"
            f"secret_key = {self.ws.server.secret_key}\n"
            f"host_base = {host}\n"
            f"host_bucket = {host}\n"
            f"bucket_location = {self.ws.server.region}\n"
            "use_https = False\n"
            "signature_v2 = False\n"
        )
        self.config.chmod(0o600)

    def _sync(self, source: str, dest: str) -> Command:
        return self._cmd(
            "-c", str(self.config), "sync", "--delete-removed", "--no-progress", source, dest
        )

    def push(self) -> Command:
        return self._sync(f"{self.ws.src}/", self.remote)

    def pull(self) -> Command:
        return self._sync(self.remote, f"{self.ws.dest}/")


TOOLS: dict[str, type[Tool]] = {t.name: t for t in (Fusesync, AwsCli, Rclone, S5cmd, S3cmd)}

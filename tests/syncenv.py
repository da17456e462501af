"""Clusters for sync tests: each a home directory and fusesync state of its own, all on
one real S3 server and one bucket, driven through the real CLI."""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from fusesync.cli import cli


@dataclass
class Cluster:
    """One machine's view: HOME (the default target), config and state folders."""

    root: Path
    server: Any
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **self.server.env(),
            "HOME": str(self.home),
            "USER": "tester",
            "LOGNAME": "tester",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_STATE_HOME": str(self.root / "state"),
        }
        result = self.cli("setup", "--bucket", self.bucket, "--endpoint-url",
                          self.server.endpoint_url, "--addressing-style", "path")
        assert result.exit_code == 0, result.output

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def state(self) -> Path:
        return self.root / "state" / "fusesync"

    def cli(self, *args: str, input: str | None = None) -> Result:
        saved = {k: os.environ.get(k) for k in self.env}
        try:
            return CliRunner().invoke(cli, list(args), input=input, env=self.env,
                                      catch_exceptions=False)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def push(self, *args: str, status: int = 0) -> Result:
        result = self.cli("push", *args)
        assert result.exit_code == status, result.output
        return result

    def pull(self, *args: str, status: int = 0) -> Result:
        result = self.cli("pull", *args)
        assert result.exit_code == status, result.output
        return result

    def status_json(self, name: str = "default") -> dict[str, Any]:
        result = self.cli("status", name, "--json")
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.output)
        return data


def tree_of(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int, str | bytes]]:
    """path -> (kind, permission bits, content or link target), for comparing trees."""
    out: dict[str, tuple[str, int, str | bytes]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        st = path.lstat()
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", perm, "")
        else:
            out[rel] = ("file", perm, path.read_bytes())
    return out


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(obj["Key"] for obj in page.get("Contents", []))
    return found


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system holding `folder` but for `leave` bytes; the filler's path."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = 0
        try:
            while True:
                size += os.write(fd, b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        if leave:
            os.ftruncate(fd, max(0, size - leave))
    finally:
        os.close(fd)
    return filler

"""Shared fixtures: one real S3 server per session, a fresh bucket and a sealed-off home per test.

Nothing here may touch the real home directory, the user's AWS settings or real AWS.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.seaweed import SeaweedError, SeaweedServer
from syncenv import Cluster

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class FusesyncEnv:
    """What a test running the CLI needs to know about the environment it was given."""

    home: Path
    config_path: Path  # $XDG_CONFIG_HOME/fusesync/config.toml (not created)
    state_dir: Path  # $XDG_STATE_HOME/fusesync (not created)
    server: SeaweedServer
    bucket: str


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """The session's S3 server; every test that needs it fails (not skips) if it cannot start."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except SeaweedError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: SeaweedServer) -> S3Client:
    return s3_server.client()


@pytest.fixture
def bucket(s3_server: SeaweedServer) -> Iterator[str]:
    """A new, empty bucket of its own for each test, deleted after it with what it holds
    (each bucket is a SeaweedFS collection holding volume slots of its own)."""
    name = f"test-{secrets.token_hex(8)}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):  # the server may be down: a test stopped it
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
        client.delete_bucket(Bucket=name)


@pytest.fixture
def fusesync_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: SeaweedServer,
    bucket: str,
) -> FusesyncEnv:
    """A fresh HOME and XDG dirs, USER=tester and the server's credentials, for this test only.

    The root is apart from `tmp_path`, so a test's own folders never fall inside HOME.
    """
    root = tmp_path_factory.mktemp("fusesync-env")
    home = root / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("FUSESYNC_CONFIG", raising=False)
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_STATE_HOME": str(root / "state"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "XDG_DATA_HOME": str(root / "data"),
        "USER": "tester",
        "LOGNAME": "tester",  # getpass.getuser() reads LOGNAME before USER
        "FUSESYNC_SITE_CONFIG": str(root / "site-config.toml"),  # never the machine's own
        **s3_server.env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return FusesyncEnv(
        home=home,
        config_path=root / "config" / "fusesync" / "config.toml",
        state_dir=root / "state" / "fusesync",
        server=s3_server,
        bucket=bucket,
    )


@pytest.fixture
def one(tmp_path: Path, fusesync_env: FusesyncEnv) -> Cluster:
    """A first cluster: its own HOME (the default target) and state, set up on the bucket."""
    return Cluster(tmp_path / "one", fusesync_env.server, fusesync_env.bucket)


@pytest.fixture
def two(tmp_path: Path, fusesync_env: FusesyncEnv) -> Cluster:
    """A second cluster on the same bucket and prefix as `one`."""
    return Cluster(tmp_path / "two", fusesync_env.server, fusesync_env.bucket)


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A folder on a file system of its own with 512 KiB of room (tmpfs: the tests run as
    root), for what a full home or quota does."""
    home = tmp_path / "small" / "home"
    home.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(home)],
                   check=True, capture_output=True)
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True, capture_output=True)

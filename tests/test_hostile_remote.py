"""A remote that lists keys meant to escape the tree: pull skips and reports each one."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner
from support.hostile_s3 import HostileS3

from fusesync.cli import cli

PREFIX = "sync/tester/default/"
LONG_OK = "/".join(["d" * 200] * 4) + "/" + "f" * 150  # over 950 bytes, every part <= 255

HOSTILE = {
    "../escape": "'..' component",
    "a/../../up": "'..' component",
    "./dot": "'.' component",
    "a//b": "empty component",
    "/abs": "absolute path",
    "nul\x00name": "NUL character",
    "x" * 256: "component longer than 255 bytes",
    "y" * 1024: "component longer than 255 bytes",
    "clash": "both a file and a directory",
    "clash/inner": "inside 'clash', which is also a file",
}


def test_hostile_keys_are_skipped_and_reported(fusesync_env, tmp_path: Path) -> None:
    objects = {PREFIX + key: b"evil" for key in HOSTILE}
    objects[PREFIX + "good.txt"] = b"good"
    objects[PREFIX + LONG_OK] = b"long but fine"
    stub = HostileS3("hostile-bucket", objects)
    home = fusesync_env.home
    runner = CliRunner()
    with stub.running():
        setup = ["setup", "--bucket", "hostile-bucket", "--endpoint-url", stub.endpoint_url,
                 "--addressing-style", "path"]
        assert runner.invoke(cli, setup).exit_code == 0
        result = runner.invoke(cli, ["pull"], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    assert (home / "good.txt").read_bytes() == b"good"
    assert (home / LONG_OK).read_bytes() == b"long but fine"
    skipped = [line for line in result.output.splitlines() if line.startswith("   skipped: ")]
    assert len(skipped) == len(HOSTILE), result.output
    for key, why in HOSTILE.items():
        shown = PREFIX + key
        assert any(why in line and shown.replace("\x00", "") [:60] in line.replace("\x00", "")
                   for line in skipped), (key, result.output)
    # beside HOME: only fusesync's own config and state folders, nothing the remote named
    assert {p.name for p in home.parent.iterdir()} <= {"home", "config", "state"}
    assert not os.path.lexists("/abs")
    assert not (home / "clash").exists()
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert written == sorted(["good.txt", LONG_OK])
    assert not any(os.path.lexists(home.parent / name) for name in ("escape", "up", "abs"))


def test_a_stalled_download_fails_the_pull_with_a_clear_line(
    fusesync_env, tmp_path: Path, monkeypatch
) -> None:
    """A store that sends headers and then nothing: the pull gives up after the idle
    timeout with one line, keeps what landed, and leaves no partial file."""
    from fusesync.remote.crt import CrtClient

    monkeypatch.setattr(CrtClient, "idle_timeout", 1.0)
    objects = {PREFIX + f"f{i}": b"fine %d" % i for i in range(5)}
    objects[PREFIX + "stuck"] = b"never arrives"
    stub = HostileS3("stalling-bucket", objects, stalled=frozenset({PREFIX + "stuck"}))
    home = fusesync_env.home
    runner = CliRunner()
    with stub.running():
        setup = ["setup", "--bucket", "stalling-bucket", "--endpoint-url", stub.endpoint_url,
                 "--addressing-style", "path"]
        assert runner.invoke(cli, setup).exit_code == 0
        result = runner.invoke(cli, ["pull"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("fusesync pull: cannot reach") and "Read timeout" in last
    assert last.endswith("/stuck\"")
    assert not (home / "stuck").exists()
    assert not [p for p in home.rglob("*") if ".fusesync-tmp-" in p.name]


async def test_a_slow_upload_is_not_taken_for_a_stalled_one(
    tmp_path: Path, monkeypatch
) -> None:
    """The CRT tells nothing of a PUT's body until it has all gone: over a slow link, a
    PUT that moves no byte for longer than the idle timeout is still going, and succeeds
    within the time its size allows."""
    import hashlib

    from fusesync.config import Settings
    from fusesync.remote.crt import CrtClient
    from fusesync.remote.s3 import S3Remote

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "slow-link")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "slow-link-secret")
    monkeypatch.setattr(CrtClient, "idle_timeout", 0.5)
    monkeypatch.setattr(CrtClient, "slowest_upload", 1 << 20)  # 1 MiB/s allowed
    data = os.urandom(3 << 20)  # taken at 2 MiB/s: 1.5 s of no word from the CRT
    (tmp_path / "big").write_bytes(data)
    stub = HostileS3("slow-bucket", {}, upload_rate=2 << 20)
    with stub.running():
        remote = S3Remote(Settings(bucket="slow-bucket", endpoint_url=stub.endpoint_url,
                                   region="us-east-1", addressing_style="path"))
        assert remote._crt is not None
        md5 = hashlib.md5(data).hexdigest()
        etag = await remote.upload_file("p/big", tmp_path / "big", size=len(data), md5=md5)
        await remote.aclose()
    assert etag == md5 and stub.objects["p/big"] == data


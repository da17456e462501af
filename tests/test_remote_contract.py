"""One contract for every Remote: S3Remote on a real SeaweedFS, and FaultyRemote around it.

Each contract test runs against both; the error-mapping and fault-injection tests follow.
Nothing here may reach real AWS: every remote is given the local server's endpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from support.seaweed import SeaweedServer

from fusesync.config import Settings
from fusesync.errors import (
    BucketNotFound,
    IntegrityError,
    RemoteChanged,
    RemoteError,
    RemoteNotFound,
    RemoteUnchanged,
    SourceChanged,
)
from fusesync.remote import DIR_CONTENT_TYPE, Attrs, Remote
from fusesync.remote.base import format_mtime
from fusesync.remote.faulty import FaultyRemote
from fusesync.remote.s3 import MiB, S3Remote

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MakeRemote = Callable[..., Remote]
BIG = 12 * MiB + 12345  # three parts of 5 MiB at most, the last one short


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedServer) -> Iterator[None]:
    """The server's credentials in the environment, and no other AWS setting."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    yield


@pytest.fixture(params=["s3", "boto3", "faulty"])
def make_remote(
    request: pytest.FixtureRequest, aws_env: None, s3_server: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakeRemote]:
    """Build a Remote of this run's kind, with small transfer sizes so tests stay quick:
    the light path (the CRT and the signed urllib3 pool), boto3 alone (as behind a proxy
    or with FUSESYNC_FAST_PATH=0), or the light path under FaultyRemote."""
    if request.param == "boto3":
        monkeypatch.setenv("FUSESYNC_FAST_PATH", "0")
    made: list[S3Remote] = []

    def make(bucket: str, endpoint_url: str | None = None) -> Remote:
        s3 = S3Remote(
            Settings(
                bucket=bucket,
                endpoint_url=endpoint_url or s3_server.endpoint_url,
                region=s3_server.region,
                addressing_style="path",
            )
        )
        s3.multipart_threshold = s3.crt_put_limit = 6 * MiB
        s3.part_size = 5 * MiB
        made.append(s3)
        return FaultyRemote(s3) if request.param == "faulty" else s3

    yield make
    for s3 in made:
        s3._client.close()


@pytest.fixture
def remote(make_remote: MakeRemote, bucket: str) -> Remote:
    return make_remote(bucket)


def no_uploads(s3: S3Client, bucket: str) -> bool:
    return not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def write_file(path: Path, data: bytes) -> tuple[Path, str]:
    path.write_bytes(data)
    return path, hashlib.md5(data).hexdigest()


# -- attributes (no server) -------------------------------------------------------------


def test_attrs_metadata_is_s3fs_shaped() -> None:
    attrs = Attrs(mode=stat.S_IFREG | 0o644, uid=1000, gid=100, mtime=1700000000.5)
    assert attrs.to_metadata() == {
        "mode": "33188",
        "uid": "1000",
        "gid": "100",
        "mtime": "1700000000.500000000",  # s3fs reads the fraction as nanoseconds
    }
    assert Attrs.from_metadata(attrs.to_metadata()) == attrs
    assert Attrs().to_metadata() == {}
    assert format_mtime(1700000000.0) == "1700000000"
    assert format_mtime(1.9999999999) == "2"
    assert Attrs.from_metadata({"mtime": format_mtime(-1.25)}).mtime == -1.25


def test_attrs_from_metadata_is_tolerant() -> None:
    garbage = {"mode": "rw-r--r--", "uid": "-1", "gid": "4294967296", "mtime": "yesterday"}
    assert Attrs.from_metadata(garbage) == Attrs()
    assert Attrs.from_metadata({"mtime": "nan", "mode": "\u0661\u0662"}) == Attrs()
    assert Attrs.from_metadata({"Mode": " 16877 ", "MTIME": "1700000000"}) == Attrs(
        mode=stat.S_IFDIR | 0o755, mtime=1700000000.0
    )
    assert Attrs.from_metadata({"mtime": "1700000000.123456789"}).mtime == pytest.approx(
        1700000000.123456789, abs=1e-6
    )


# -- the contract -----------------------------------------------------------------------


async def test_bucket_exists_and_create_is_idempotent(make_remote: MakeRemote) -> None:
    remote = make_remote(f"fresh-{os.urandom(6).hex()}")
    assert not await remote.bucket_exists()
    await remote.create_bucket()
    assert await remote.bucket_exists()
    await remote.create_bucket()


async def test_put_get_head_round_trip(remote: Remote, s3: S3Client, bucket: str) -> None:
    attrs = Attrs(mode=stat.S_IFREG | 0o640, uid=1001, gid=1002, mtime=1700000000.123456789)
    etag = await remote.put_bytes(
        "p/a.txt", b"hello\n", attrs=attrs, metadata={"note": "kept"}, content_type="text/plain"
    )
    assert etag == hashlib.md5(b"hello\n").hexdigest()
    assert await remote.get_bytes("p/a.txt") == (b"hello\n", etag)
    head = await remote.head("p/a.txt")
    assert head is not None
    assert (head.key, head.etag, head.size, head.content_type) == ("p/a.txt", etag, 6, "text/plain")
    assert head.attrs.mode == 0o100640 and (head.attrs.uid, head.attrs.gid) == (1001, 1002)
    assert head.attrs.mtime == pytest.approx(attrs.mtime, abs=1e-6)
    assert head.metadata["note"] == "kept"
    raw = s3.head_object(Bucket=bucket, Key="p/a.txt")["Metadata"]
    assert raw["mode"] == str(0o100640) == "33184"
    assert raw["mtime"].startswith("1700000000.123456")
    assert await remote.head("p/missing") is None
    assert await remote.get_bytes("p/missing") is None


async def test_dir_marker(remote: Remote) -> None:
    attrs = Attrs(mode=stat.S_IFDIR | 0o755)
    await remote.put_bytes("p/dir/", b"", attrs=attrs, content_type=DIR_CONTENT_TYPE)
    head = await remote.head("p/dir/")
    assert head is not None and head.size == 0 and head.content_type == DIR_CONTENT_TYPE
    # Not asserted: head.attrs. SeaweedFS stores `key/` as a filer directory and keeps
    # neither its metadata nor its body (s3fs modes of empty dirs live in the manifest).
    assert [o.key async for o in remote.list("p/")] == ["p/dir/"]


async def test_list_pages_and_delete_many_batches(remote: Remote) -> None:
    keys = sorted(f"t/{i:05d} ü" for i in range(1005))
    async with trio.open_nursery() as nursery:
        for key in [*keys, "t0", "other/x"]:
            nursery.start_soon(remote.put_bytes, key, key.encode())
    listed = [obj async for obj in remote.list("t/")]
    assert [obj.key for obj in listed] == keys
    assert listed[0].etag == hashlib.md5(keys[0].encode()).hexdigest()
    assert listed[0].size == len(keys[0].encode()) and listed[0].last_modified > 1.6e9
    await remote.delete_many([*keys, "t/never-existed"])
    assert [obj.key async for obj in remote.list("")] == ["other/x", "t0"]
    await remote.delete_many([])


async def test_conditional_put_bytes(remote: Remote) -> None:
    first = await remote.put_bytes("k", b"one", if_none_match=True)
    with pytest.raises(RemoteChanged):
        await remote.put_bytes("k", b"two", if_none_match=True)
    with pytest.raises(RemoteChanged):
        await remote.put_bytes("k", b"two", if_match="0123456789abcdef0123456789abcdef")
    second = await remote.put_bytes("k", b"three", if_match=first)
    assert await remote.get_bytes("k") == (b"three", second)


async def test_conditional_get_bytes(remote: Remote) -> None:
    """A read that names the version last seen: 'unchanged' while it still is, the body
    once the object moved on, None once it is gone."""
    first = await remote.put_bytes("k", b"one")
    with pytest.raises(RemoteUnchanged):
        await remote.get_bytes("k", if_none_match=first)
    second = await remote.put_bytes("k", b"two")
    assert await remote.get_bytes("k", if_none_match=first) == (b"two", second)
    with pytest.raises(RemoteChanged):
        await remote.get_bytes("k", if_match=first)
    await remote.delete("k")
    assert await remote.get_bytes("k", if_none_match=second) is None


async def test_a_get_asked_soon_is_taken_once_or_let_go(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`get_bytes_soon` sends the GET the next `get_bytes` of that object would send, and
    that call takes its answer: one request in all (on the light path). Let go instead,
    it leaves nothing behind: a later read asks again and sees the object as it is then,
    not as it was when the request left; and so does a read that names another version."""
    from awscrt import s3 as crt_s3

    sent: list[str] = []
    make_request = crt_s3.S3Client.make_request

    def counted(self: crt_s3.S3Client, **kwargs: Any) -> crt_s3.S3Request:
        sent.append(kwargs["request"].method)
        return make_request(self, **kwargs)

    monkeypatch.setattr(crt_s3.S3Client, "make_request", counted)
    light = s3_remote_of(remote)._crt is not None
    first = await remote.put_bytes("k", b"one")
    sent.clear()
    let_go = remote.get_bytes_soon("k", if_match=first)
    assert await remote.get_bytes("k", if_match=first) == (b"one", first)
    let_go()
    assert sent == (["GET"] if light else [])
    remote.get_bytes_soon("k")()  # asked, then let go
    second = await remote.put_bytes("k", b"two")
    assert await remote.get_bytes("k") == (b"two", second)
    let_go = remote.get_bytes_soon("k", if_match=first)  # a version it no longer is
    assert await remote.get_bytes("k", if_match=second) == (b"two", second)
    with pytest.raises(RemoteChanged):
        await remote.get_bytes("k", if_match=first)
    let_go()


async def test_early_answers_left_untaken_are_dropped_all_at_once(
    aws_env: None, s3_server: SeaweedServer, bucket: str
) -> None:
    """A mount sends its listing's first requests before its imports; what its first
    pull did not take then goes (`CrtClient.drop_all_early`): a later read asks again
    and sees the object as it is then, not as it was when the early request left."""
    remote = S3Remote(
        Settings(bucket=bucket, endpoint_url=s3_server.endpoint_url, addressing_style="path")
    )
    crt = remote._crt
    assert crt is not None, "the light path: the environment holds the keys"
    await remote.put_bytes("k", b"one")
    crt.send_early("GET", bucket, "k", "GetObject")
    early = crt.early_reply("GET", bucket, "k", timeout=10)
    assert early is not None and early.body == b"one"
    second = await remote.put_bytes("k", b"two")
    crt.drop_all_early()
    assert crt.early_reply("GET", bucket, "k", timeout=0) is None
    assert await remote.get_bytes("k") == (b"two", second)
    await remote.aclose()


async def test_upload_file_small(remote: Remote, tmp_path: Path) -> None:
    path, md5 = write_file(tmp_path / "f", b"x" * 1000)
    seen: list[int] = []
    attrs = Attrs(mode=0o100600, mtime=1.5)
    etag = await remote.upload_file(
        "p/f", path, size=1000, md5=md5, attrs=attrs, progress=seen.append
    )
    assert etag == md5 and sum(seen) == 1000
    head = await remote.head("p/f")
    assert head is not None and head.attrs == attrs
    with pytest.raises(RemoteChanged):
        await remote.upload_file("p/f", path, size=1000, md5=md5, attrs=None, if_none_match=True)
    with pytest.raises(RemoteChanged):
        await remote.upload_file("p/f", path, size=1000, md5=md5, attrs=None, if_match="0" * 32)
    assert await remote.upload_file("p/f", path, size=1000, md5=None, if_match=etag) == md5


def s3_remote_of(remote: Remote) -> S3Remote:
    s3_remote = remote.inner if isinstance(remote, FaultyRemote) else remote
    assert isinstance(s3_remote, S3Remote)
    return s3_remote


async def upload_big(
    remote: Remote, tmp_path: Path, s3: S3Client, bucket: str, attrs: Attrs
) -> tuple[Path, str, str]:
    """BIG random bytes in a file, uploaded as the new object p/big with `attrs`: the
    progress adds up, and the object reads back with its size, etag, attributes and bytes.
    Returns (the file, its MD5, the etag)."""
    data = os.urandom(BIG)
    path, md5 = write_file(tmp_path / "big", data)
    seen: list[int] = []
    etag = await remote.upload_file(
        "p/big", path, size=BIG, md5=md5, attrs=attrs, if_none_match=True, progress=seen.append
    )
    assert sum(seen) == BIG
    head = await remote.head("p/big")
    assert head is not None and (head.size, head.etag, head.attrs) == (BIG, etag, attrs)
    assert s3.get_object(Bucket=bucket, Key="p/big")["Body"].read() == data
    return path, md5, etag


async def test_upload_file_multipart(
    remote: Remote, tmp_path: Path, s3: S3Client, bucket: str
) -> None:
    attrs = Attrs(mode=0o100644, uid=5, gid=6, mtime=1700000000.25)
    path, md5, etag = await upload_big(remote, tmp_path, s3, bucket, attrs)
    assert etag.endswith("-3")
    # SeaweedFS enforces both conditions on CompleteMultipartUpload; a refusal aborts.
    with pytest.raises(RemoteChanged):
        await remote.upload_file("p/big", path, size=BIG, md5=md5, attrs=None, if_none_match=True)
    with pytest.raises(RemoteChanged):
        await remote.upload_file("p/big", path, size=BIG, md5=md5, attrs=None, if_match="0" * 32)
    with pytest.raises(RemoteChanged):
        await remote.upload_file("p/new", path, size=BIG, md5=md5, attrs=None, if_match=etag)
    assert no_uploads(s3, bucket)
    again = await remote.upload_file("p/big", path, size=BIG, md5=md5, attrs=None, if_match=etag)
    assert again.endswith("-3")


async def test_hashed_file_up_to_the_crt_limit_goes_in_one_put(
    remote: Remote, tmp_path: Path, s3: S3Client, bucket: str
) -> None:
    """Past the multipart threshold, a file whose MD5 is known goes in one PUT the CRT
    reads from disk (its etag the plain MD5), holding part buffers for its body while it
    goes; a file that no longer has that MD5 is refused by the store and nothing is
    written. boto3 alone sends parts."""
    s3_remote = s3_remote_of(remote)
    light = s3_remote._crt is not None
    s3_remote.crt_put_limit = 64 * MiB
    attrs = Attrs(mode=0o100640, uid=7, gid=8, mtime=1700000002.5)
    path, md5, etag = await upload_big(remote, tmp_path, s3, bucket, attrs)
    assert etag == md5 if light else etag.endswith("-3")
    assert s3_remote._part_buffers.value == s3_remote.part_buffers  # given back
    with pytest.raises(RemoteChanged):
        await remote.upload_file("p/big", path, size=BIG, md5=md5, if_match="0" * 32)
    stale = hashlib.md5(b"what it held when hashed").hexdigest()
    with pytest.raises(SourceChanged):
        await remote.upload_file("p/other", path, size=BIG, md5=stale)
    assert await remote.head("p/other") is None and no_uploads(s3, bucket)


@pytest.mark.parametrize("size", [1000, BIG])
async def test_upload_of_a_changed_file_is_refused(
    remote: Remote, tmp_path: Path, s3: S3Client, bucket: str, size: int
) -> None:
    path, _ = write_file(tmp_path / "f", os.urandom(size))
    stale_md5 = hashlib.md5(b"what it held when hashed").hexdigest()
    with pytest.raises(SourceChanged):
        await remote.upload_file("p/f", path, size=size, md5=stale_md5, attrs=None)
    with pytest.raises(SourceChanged):
        await remote.upload_file("p/f", path, size=size - 1, md5=None, attrs=None)
    assert await remote.head("p/f") is None
    assert no_uploads(s3, bucket)
    with pytest.raises(FileNotFoundError):
        await remote.upload_file("p/f", tmp_path / "gone", size=size, md5=None, attrs=None)


async def test_cancelled_multipart_upload_is_aborted(
    remote: Remote, tmp_path: Path, s3: S3Client, bucket: str
) -> None:
    path, md5 = write_file(tmp_path / "big", os.urandom(BIG))
    with trio.CancelScope() as scope:
        await remote.upload_file(
            "p/big", path, size=BIG, md5=md5, attrs=None, progress=lambda n: scope.cancel()
        )
    assert scope.cancelled_caught
    assert no_uploads(s3, bucket)
    assert await remote.head("p/big") is None
    held = s3_remote_of(remote)
    assert held._part_buffers.value == held.part_buffers  # every part's buffer given back


async def test_cancelled_download_stops(remote: Remote, tmp_path: Path) -> None:
    await remote.put_bytes("p/big", os.urandom(BIG))
    seen: list[int] = []

    def cancel_after_a_chunk(n: int) -> None:
        seen.append(n)
        scope.cancel()

    with open(tmp_path / "out", "w+b") as dest, trio.CancelScope() as scope:
        await remote.download_file("p/big", dest, progress=cancel_after_a_chunk)
    assert scope.cancelled_caught and 0 < sum(seen) < BIG


@pytest.mark.parametrize("listed", [False, True], ids=["size-unknown", "size-listed"])
@pytest.mark.parametrize("size", [0, 1000, BIG])
async def test_download_file(remote: Remote, tmp_path: Path, size: int, listed: bool) -> None:
    data = os.urandom(size)
    attrs = Attrs(mode=0o100755, mtime=1700000001.0)
    etag = await remote.put_bytes("p/obj", data, attrs=attrs)
    seen: list[int] = []
    with open(tmp_path / "out", "w+b") as dest:
        dest.write(b"older and longer contents" * 1000)
        head = await remote.download_file("p/obj", dest, if_match=etag,
                                          size=size if listed else None, progress=seen.append)
        dest.seek(0)
        assert dest.read() == data
    assert (head.etag, head.size, head.attrs) == (etag, size, attrs)
    assert sum(seen) == size
    memory = io.BytesIO()
    await remote.download_file("p/obj", memory)
    assert memory.getvalue() == data


async def test_download_of_changed_or_missing_object(remote: Remote, tmp_path: Path) -> None:
    await remote.put_bytes("p/obj", b"now")
    with open(tmp_path / "out", "w+b") as dest:
        with pytest.raises(RemoteChanged):
            await remote.download_file("p/obj", dest, if_match="0" * 32)
        with pytest.raises(RemoteNotFound):
            await remote.download_file("p/gone", dest)
    etag = await remote.put_bytes("p/big", os.urandom(BIG))  # every part asked at once:
    with open(tmp_path / "out", "w+b") as dest:  # each one pinned to the version listed
        with pytest.raises(RemoteChanged):
            await remote.download_file("p/big", dest, if_match="0" * 32, size=BIG)
        with pytest.raises(IntegrityError, match=r"not the \d+ listed"):
            await remote.download_file("p/big", dest, if_match=etag, size=BIG + MiB)


async def test_a_clock_far_off_is_told_as_such(
    aws_env: None, s3_server: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh cluster whose clock is wrong: the store refuses every signed request (a
    403 like bad credentials), and the user must hear of the clock, not of their keys.
    Signed by boto3 (FUSESYNC_FAST_PATH=0), whose clock the test can move; the light
    path's answers go through the same translation."""
    import datetime

    import botocore.auth
    import botocore.crt.auth

    from fusesync.remote import s3 as s3_module

    def an_hour_on(remove_tzinfo: bool = True) -> datetime.datetime:
        now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return now.replace(tzinfo=None) if remove_tzinfo else now

    monkeypatch.setenv("FUSESYNC_FAST_PATH", "0")
    for signer in (botocore.auth, botocore.crt.auth):  # (botocore signs with the CRT if
        monkeypatch.setattr(signer, "get_current_datetime", an_hour_on)  # it is there)
    monkeypatch.setattr(s3_module, "_now", lambda: an_hour_on(False).timestamp())
    remote = S3Remote(Settings(bucket=bucket, endpoint_url=s3_server.endpoint_url,
                               region=s3_server.region, addressing_style="path"))
    with pytest.raises(RemoteError, match=r"clock is \+60 minutes off") as caught:
        async for _ in remote.list("p/"):
            pass
    assert "RequestTimeTooSkewed" in str(caught.value)
    assert "credentials" not in str(caught.value)
    with pytest.raises(RemoteError, match=r"clock is \+60 minutes off"):
        await remote.head("p/any")  # a 403 with no body to name the cause: the Date header


async def test_delete(remote: Remote) -> None:
    etag = await remote.put_bytes("p/d", b"one")
    with pytest.raises(RemoteChanged):
        await remote.delete("p/d", if_match="0" * 32)
    assert await remote.head("p/d") is not None
    await remote.delete("p/d", if_match=etag)
    assert await remote.head("p/d") is None
    await remote.delete("p/d")
    await remote.delete("p/d", if_match=etag)  # gone is gone, whichever version it was


async def test_copy_keeps_content_and_metadata(remote: Remote) -> None:
    attrs = Attrs(mode=stat.S_IFREG | 0o640, uid=1000, gid=100, mtime=1700000000.5)
    etag = await remote.put_bytes("p/from", b"copied", attrs=attrs)
    with pytest.raises(RemoteChanged):
        await remote.copy("p/from", "p/to", if_match="0" * 32)
    assert await remote.head("p/to") is None
    new = await remote.copy("p/from", "p/to", if_match=etag)
    head = await remote.head("p/to")
    assert head is not None and head.etag == new and Attrs.from_metadata(head.metadata) == attrs
    assert await remote.get_bytes("p/to") == (b"copied", new)
    assert await remote.head("p/from") is not None  # a copy, not a move
    with pytest.raises(RemoteNotFound):
        await remote.copy("p/missing", "p/elsewhere")


async def test_abort_multipart_uploads(remote: Remote, s3: S3Client, bucket: str) -> None:
    for key in ("p/a", "p/b", "p/sub/c", "q/d"):
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    assert await remote.abort_multipart_uploads("p/") == 3
    left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["q/d"]
    assert await remote.abort_multipart_uploads("p/") == 0


# -- errors: one clear line -------------------------------------------------------------


async def test_wrong_secret_mentions_credentials(
    make_remote: MakeRemote, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    remote = make_remote(bucket)
    with pytest.raises(RemoteError, match=r"access denied by .*check your credentials"):
        _ = [obj async for obj in remote.list("")]
    with pytest.raises(RemoteError, match="credentials"):
        await remote.head("k")


async def test_no_credentials(
    make_remote: MakeRemote, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    remote = make_remote(bucket)
    with pytest.raises(RemoteError, match=r"^no S3 credentials found"):
        await remote.get_bytes("k")


async def test_unreachable_endpoint(make_remote: MakeRemote, bucket: str) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = make_remote(bucket, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteError, match="^" + re.escape(f"cannot reach http://127.0.0.1:{port}")):
        await remote.bucket_exists()


async def test_missing_bucket(make_remote: MakeRemote) -> None:
    remote = make_remote("no-such-bucket-here")
    with pytest.raises(BucketNotFound, match="bucket 'no-such-bucket-here' does not exist"):
        _ = [obj async for obj in remote.list("")]
    with pytest.raises(BucketNotFound):
        await remote.get_bytes("k")  # a missing bucket is never a missing key


# -- fault injection ----------------------------------------------------------------------


@pytest.fixture
def faulty(aws_env: None, s3_server: SeaweedServer, bucket: str) -> Iterator[FaultyRemote]:
    inner = S3Remote(
        Settings(bucket=bucket, endpoint_url=s3_server.endpoint_url, addressing_style="path")
    )
    yield FaultyRemote(inner)
    inner._client.close()


async def test_fail_next_and_counts(faulty: FaultyRemote) -> None:
    faulty.fail_next("put_bytes", RemoteError("boom"), count=2)
    for _ in range(2):
        with pytest.raises(RemoteError, match="boom"):
            await faulty.put_bytes("k", b"x")
    assert await faulty.head("k") is None  # the failures happened before the request
    await faulty.put_bytes("k", b"x")
    _ = [obj async for obj in faulty.list("")]
    assert faulty.calls == {"put_bytes": 3, "head": 1, "list": 1}
    with pytest.raises(ValueError, match="no operation"):
        faulty.fail_next("put", RemoteError("typo"))


async def test_fail_after_the_request_took_effect(faulty: FaultyRemote) -> None:
    faulty.fail_next("put_bytes", RemoteError("response lost"), after=True)
    with pytest.raises(RemoteError, match="response lost"):
        await faulty.put_bytes("k", b"x")
    assert await faulty.get_bytes("k") is not None


async def test_fail_keys(faulty: FaultyRemote, tmp_path: Path) -> None:
    faulty.fail_keys(
        lambda key: key.endswith(".bad"), RemoteChanged("stale"), ops={"download_file"}
    )
    await faulty.put_bytes("a.bad", b"x")
    await faulty.put_bytes("a.good", b"x")
    with open(tmp_path / "out", "w+b") as dest:
        with pytest.raises(RemoteChanged):
            await faulty.download_file("a.bad", dest)
        await faulty.download_file("a.good", dest)
    faulty.fail_keys(lambda key: key == "b", RemoteError("no"))
    with pytest.raises(RemoteError):
        await faulty.delete_many(["a.good", "b"])
    faulty.reset()
    await faulty.delete_many(["a.good", "b"])
    assert faulty.calls == {"delete_many": 1}


async def test_delay(faulty: FaultyRemote) -> None:
    faulty.delay("head", 10)
    with trio.move_on_after(0.05) as scope:
        await faulty.head("k")
    assert scope.cancelled_caught


async def test_before_holds_a_call_until_released(faulty: FaultyRemote) -> None:
    reached, release = trio.Event(), trio.Event()
    seen: list[str] = []

    async def hold(key: str) -> None:
        seen.append(key)
        reached.set()
        await release.wait()

    faulty.before("put_bytes", hold)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(faulty.put_bytes, "held", b"x")
        await reached.wait()
        assert await faulty.head("held") is None  # not written while held
        release.set()
    assert seen == ["held"] and await faulty.head("held") is not None


async def test_transfers_through_a_single_connection(
    aws_env: None, s3_server: SeaweedServer, bucket: str, tmp_path: Path
) -> None:
    """Parts and ranges wait for the one slot in turn; nothing deadlocks."""
    remote = S3Remote(
        Settings(bucket=bucket, endpoint_url=s3_server.endpoint_url, addressing_style="path"),
        max_concurrency=1,
    )
    remote.multipart_threshold = remote.part_size = 5 * MiB
    data = os.urandom(BIG)
    path, md5 = write_file(tmp_path / "big", data)
    with trio.fail_after(60):
        await remote.upload_file("big", path, size=BIG, md5=md5)
        with open(tmp_path / "out", "w+b") as dest:
            await remote.download_file("big", dest)
    assert (tmp_path / "out").read_bytes() == data
    await remote.aclose()

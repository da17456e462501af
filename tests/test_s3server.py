"""The S3 server the other tests rely on: real signatures, conditional writes, loopback only,
and nothing left running after a stop."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError
from support.seaweed import GRPC_SOCKET_DIR, SeaweedError, SeaweedServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_put_and_get_an_object(s3: S3Client) -> None:
    s3.create_bucket(Bucket="put-get")
    put = s3.put_object(Bucket="put-get", Key="dir/file.txt", Body=b"hello\n")
    got = s3.get_object(Bucket="put-get", Key="dir/file.txt")
    assert got["Body"].read() == b"hello\n"
    assert got["ETag"] == put["ETag"]
    listed = s3.list_objects_v2(Bucket="put-get")["Contents"]
    assert [obj["Key"] for obj in listed] == ["dir/file.txt"]


def test_wrong_secret_is_refused(s3_server: SeaweedServer, bucket: str) -> None:
    wrong = s3_server.client(secret_key=s3_server.secret_key + "x")
    with pytest.raises(ClientError) as exc:
        wrong.list_objects_v2(Bucket=bucket)
    assert error_code(exc) == (403, "SignatureDoesNotMatch")


def test_unknown_access_key_is_refused(s3_server: SeaweedServer, bucket: str) -> None:
    stranger = s3_server.client(access_key="AKIANOTKNOWNHERE0000")
    with pytest.raises(ClientError) as exc:
        stranger.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert error_code(exc) == (403, "InvalidAccessKeyId")


def test_conditional_writes(s3: S3Client, bucket: str) -> None:
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfNoneMatch="*")
    assert error_code(exc) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfMatch='"0123456789abcdef"')
    assert error_code(exc) == (412, "PreconditionFailed")
    s3.put_object(Bucket=bucket, Key="k", Body=b"three", IfMatch=first["ETag"])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"three"


def test_listens_on_loopback_only(s3_server: SeaweedServer) -> None:
    bound = bound_addresses(s3_server.pid)
    assert ("127.0.0.1", s3_server.ports["s3.port"]) in bound
    assert {address for address, _ in bound} == {"127.0.0.1"}
    # No listener we did not ask for (metrics, pprof, Iceberg, WebDAV...).
    assert {port for _, port in bound} <= set(s3_server.ports.values())


def test_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    server = SeaweedServer(tmp_path / "weed")
    with server:
        pid = server.pid
        ports = list(server.ports.values())
        assert os.getpgid(pid) == pid
        assert server.client().list_buckets()["Buckets"] == []
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not [p for port in ports for p in GRPC_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock")]
    server.stop()  # again: nothing to do
    with pytest.raises(SeaweedError):
        server.pid  # noqa: B018


def test_failed_start_reports_the_log(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fake weed: cannot start' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = SeaweedServer(tmp_path / "data", executable=fake)
    with pytest.raises(SeaweedError, match=r"(?s)exited during start.*fake weed: cannot start"):
        server.start()
    assert not server.running


# -- reading the kernel's socket tables ---------------------------------------------------

# /proc/net/{tcp,udp}[6] columns: sl local_address rem_address st ... inode (10th).
TCP_LISTEN = "0A"


def bound_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP and every bound UDP socket of process `pid`."""
    inodes = socket_inodes(pid)
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for fields in (line.split() for line in lines):
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (table.startswith("udp") or state == TCP_LISTEN):
                found.add(decode_address(local))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def decode_address(text: str) -> tuple[str, int]:
    """Decode an address of /proc/net/tcp: "0100007F:1F90" is ("127.0.0.1", 8080).

    IPv4 is one 32-bit word in host order (little-endian here), IPv6 four of them.
    """
    host, port = text.split(":")
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def test_decode_address() -> None:
    assert decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_address("00000000:0050") == ("0.0.0.0", 80)
    assert decode_address("00000000000000000000000001000000:0016") == ("::1", 22)
    assert decode_address("0000000000000000FFFF00000100007F:0016") == ("127.0.0.1", 22)
    assert decode_address("00000000000000000000000000000000:0016") == ("::", 22)

"""fusesync over HTTPS, as it talks to S3 itself: a real S3 server that speaks TLS only,
with a certificate of its own that AWS_CA_BUNDLE names (as boto3 reads it). Every way a
request goes out (the CRT for single objects, urllib3 for ranged downloads, boto3 for
listings and multipart uploads, the mount's fetches) trusts that certificate and no other.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mounting import mounted
from support.seaweed import SeaweedServer
from syncenv import Cluster, tree_of

from fusesync.remote.crt import certificate_refusal

BIG = 20 * 1024 * 1024  # over the multipart threshold (16 MiB): parts up, ranges down


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("weed-tls"), tls=True).start()
    try:
        assert server.endpoint_url.startswith("https://")
        yield server
    finally:
        # Over TLS, weed's S3 gateway at times outlives its filer on SIGTERM, retrying to
        # follow it until killed: its data is thrown away, so it need not wait 15 s.
        server.stop(timeout=2.0)


@pytest.fixture
def tls_bucket(tls_server: SeaweedServer) -> str:
    name = f"tls-{secrets.token_hex(6)}"
    tls_server.client().create_bucket(Bucket=name)
    return name


def test_push_pull_and_mount_over_https(tmp_path: Path, tls_server: SeaweedServer,
                                        tls_bucket: str) -> None:
    a = Cluster(tmp_path / "a", tls_server, tls_bucket)
    (a.home / "jobs").mkdir()
    for i in range(20):
        (a.home / "jobs" / f"job{i}.sh").write_text(f"#!/bin/sh\necho {i}\n")
    (a.home / "jobs" / "job0.sh").chmod(0o755)
    (a.home / "data.bin").write_bytes(os.urandom(BIG))
    (a.home / "latest").symlink_to("jobs/job0.sh")
    a.push()
    b = Cluster(tmp_path / "b", tls_server, tls_bucket)
    b.pull()
    assert tree_of(b.home) == tree_of(a.home)

    (a.home / "jobs" / "job7.sh").write_text("#!/bin/sh\necho changed on a\n")
    a.push()
    c = Cluster(tmp_path / "c", tls_server, tls_bucket)
    with mounted(c.home, c.env):  # pulls as it starts; each file fetched on first open
        assert (c.home / "jobs" / "job7.sh").read_text() == "#!/bin/sh\necho changed on a\n"
        assert (c.home / "data.bin").read_bytes() == (a.home / "data.bin").read_bytes()


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["crt", "boto3"])
def test_a_certificate_nobody_named_is_refused(tmp_path: Path, tls_server: SeaweedServer,
                                               tls_bucket: str, fast_path: str) -> None:
    """Without AWS_CA_BUNDLE the server's certificate is trusted by no one: one clear line
    within seconds (the CRT itself would wait for ever), exit 1, nothing sent; named, the
    next push sends it all. On the CRT and on boto3 alike (FUSESYNC_FAST_PATH=0)."""
    a = Cluster(tmp_path / "a", tls_server, tls_bucket)
    a.env["FUSESYNC_FAST_PATH"] = fast_path
    ca_bundle = a.env.pop("AWS_CA_BUNDLE")
    (a.home / "notes.txt").write_text("sent once trusted")
    started = time.monotonic()
    refused = a.push(status=1)
    assert time.monotonic() - started < 15
    last = refused.output.strip().splitlines()[-1]
    assert last.startswith(f"fusesync push: cannot reach {tls_server.endpoint_url} securely: ")
    assert "certificate" in last and "AWS_CA_BUNDLE" in last, last
    listed = tls_server.client().list_objects_v2(Bucket=tls_bucket)
    assert listed["KeyCount"] == 0

    a.env["AWS_CA_BUNDLE"] = ca_bundle
    assert "1 uploaded" in a.push().output


def test_the_certificate_probe_blames_only_the_certificate(tls_server: SeaweedServer) -> None:
    """What the CRT client asks when its requests go unanswered (`certificate_refusal`):
    a reason only for a certificate nobody trusts, nothing for a trusted one or for an
    endpoint that does not answer at all (the request's own timeout says that)."""
    url = urllib.parse.urlsplit(tls_server.endpoint_url)
    host, port = url.hostname or "", url.port or 443
    assert certificate_refusal(host, port, str(tls_server.ca_file)) is None
    refused = certificate_refusal(host, port, None)
    assert refused is not None and "not trusted" in refused
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    assert certificate_refusal(host, closed, None) is None

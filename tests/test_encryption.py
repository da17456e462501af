"""Encrypted paths through push and pull between two clusters, against the real S3 server:
round trips, what the bucket holds, wrong passphrases, tampered objects, conflicts."""

from __future__ import annotations

import gzip
import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
import tomli_w
from syncenv import Cluster, keys

from fusesync.crypt.stream import CHUNK, FORMAT, HEADER_SIZE, TAG
from fusesync.sync.localfs import TMP_MARK

PREFIX = "sync/tester/default/"
PASSPHRASE = "correct horse battery staple"
KEY_TEXT = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"


def with_passphrase(*clusters: Cluster, passphrase: str = PASSPHRASE) -> None:
    for cluster in clusters:
        cluster.env["FUSESYNC_PASSPHRASE"] = passphrase


def dotfiles(home: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_ed25519").write_bytes(KEY_TEXT)
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "known_hosts").write_bytes(b"")  # empty
    (ssh / "config").write_text("Host *\n  ServerAliveInterval 30\n")
    os.utime(ssh / "config", ns=(1_600_000_000_500_000_000, 1_600_000_000_500_000_000))
    (home / ".bashrc").write_text("alias ll='ls -l'\n")


def body(s3, bucket: str, rel: str) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(s3.get_object(Bucket=bucket, Key=PREFIX + rel)["Body"].read())


def manifest(s3, bucket: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    data = s3.get_object(Bucket=bucket, Key="sync/tester/default.manifest")["Body"].read()
    return json.loads(gzip.decompress(data))["entries"]  # type: ignore[no-any-return]


def no_leftovers(home: Path) -> bool:
    return not [p for p in home.rglob("*") if TMP_MARK in p.name]


def test_small_and_empty_files_round_trip_and_the_bucket_holds_no_plaintext(
    one: Cluster, two: Cluster, s3
) -> None:
    dotfiles(one.home)
    with_passphrase(one, two)
    result = one.push()
    assert result.output.splitlines()[-1].startswith("   4 uploaded")
    two.pull()
    for rel in (".ssh/id_ed25519", ".ssh/known_hosts", ".ssh/config", ".bashrc"):
        assert (two.home / rel).read_bytes() == (one.home / rel).read_bytes(), rel
    assert stat.S_IMODE((two.home / ".ssh/id_ed25519").stat().st_mode) == 0o600
    assert (two.home / ".ssh/config").stat().st_mtime_ns == 1_600_000_000_500_000_000

    # the bucket: ciphertext under visible names, plaintext attribute headers, no MD5
    secret = body(s3, one.bucket, ".ssh/id_ed25519")
    assert secret.startswith(b"FUSESYNC") and b"OPENSSH" not in secret and b"b3Bl" not in secret
    assert len(body(s3, one.bucket, ".ssh/known_hosts")) == HEADER_SIZE + TAG
    assert b"ServerAlive" not in body(s3, one.bucket, ".ssh/config")
    assert body(s3, one.bucket, ".bashrc") == b"alias ll='ls -l'\n"  # not covered: plain
    head = s3.head_object(Bucket=one.bucket, Key=PREFIX + ".ssh/id_ed25519")
    meta = head["Metadata"]
    assert meta["fusesync-enc"] == FORMAT
    assert meta["mode"] == str(stat.S_IFREG | 0o600) and meta["uid"] == str(os.getuid())
    assert "fusesync-md5" not in meta and meta["fusesync-tag"].startswith("k1:")
    entries = manifest(s3, one.bucket)
    assert entries[".ssh/id_ed25519"]["enc"] == FORMAT
    assert entries[".ssh/id_ed25519"]["size"] == len(KEY_TEXT)
    assert entries[".ssh/id_ed25519"]["md5"].startswith("k1:")
    assert "enc" not in entries[".bashrc"]
    ring = s3.get_object(Bucket=one.bucket, Key="sync/tester/default.keys")["Body"].read()
    assert PASSPHRASE.encode() not in ring
    assert not any(k.endswith(".keys") for k in keys(s3, one.bucket, PREFIX))

    # nothing changed: nothing moves, on either side
    assert one.push().output.splitlines()[-1].startswith("   0 uploaded (0 B)")
    assert two.pull().output.splitlines()[-1].startswith("   0 downloaded (0 B)")
    assert one.pull().output.splitlines()[-1].startswith("   0 downloaded (0 B)")
    assert two.push().output.splitlines()[-1].startswith("   0 uploaded (0 B)")
    status = two.status_json()
    assert not status["push"] and not status["pull"], status

    # an edit travels, still encrypted
    (two.home / ".ssh/config").write_text("Host *\n  ServerAliveInterval 60\n")
    assert two.push().output.splitlines()[-1].startswith("   1 uploaded")
    assert one.pull().output.splitlines()[-1].startswith("   1 downloaded")
    assert (one.home / ".ssh/config").read_text().endswith("60\n")
    assert b"ServerAlive" not in body(s3, one.bucket, ".ssh/config")


def test_a_file_of_many_chunks_round_trips(one: Cluster, two: Cluster, s3) -> None:
    data = os.urandom(1 << 20) * 65 + b"tail"  # > 64 MiB: a multipart upload, ranged GETs
    (one.home / ".gnupg").mkdir()
    (one.home / ".gnupg" / "big.kbx").write_bytes(data)
    with_passphrase(one, two)
    one.push()
    sealed = body(s3, one.bucket, ".gnupg/big.kbx")
    chunks = -(-len(data) // CHUNK)
    assert len(sealed) == HEADER_SIZE + len(data) + TAG * chunks
    assert data[:4096] not in sealed and data[-4096:] not in sealed
    two.pull()
    assert (two.home / ".gnupg" / "big.kbx").read_bytes() == data
    assert two.pull().output.splitlines()[-1].startswith("   0 downloaded")


def test_wrong_passphrase_writes_nothing(one: Cluster, two: Cluster) -> None:
    dotfiles(one.home)
    with_passphrase(one)
    one.push()
    with_passphrase(two, passphrase="wrong")
    result = two.cli("pull")
    assert result.exit_code == 1, result.output
    assert "passphrase from FUSESYNC_PASSPHRASE is incorrect" in result.output
    assert not [p for p in (two.home / ".ssh").rglob("*") if p.is_file()]
    with_passphrase(two)
    two.pull()
    assert (two.home / ".ssh" / "id_ed25519").read_bytes() == KEY_TEXT
    # and push refuses to encrypt under another passphrase than the target's
    (two.home / ".ssh" / "config").write_text("changed\n")
    with_passphrase(two, passphrase="another one")
    result = two.cli("push")
    assert result.exit_code == 1 and "incorrect" in result.output, result.output


def test_tampered_objects_fail_their_integrity_check_and_write_nothing(
    one: Cluster, two: Cluster, s3
) -> None:
    ssh = one.home / ".ssh"
    ssh.mkdir()
    for name in ("flipped", "truncated", "swapped", "intact"):
        (ssh / name).write_bytes(os.urandom(3 * CHUNK + 999))
    with_passphrase(one, two)
    one.push()

    def tamper(name: str, change) -> None:  # type: ignore[no-untyped-def]
        key = PREFIX + ".ssh/" + name
        head = s3.head_object(Bucket=one.bucket, Key=key)
        data = change(bytearray(body(s3, one.bucket, ".ssh/" + name)))
        s3.put_object(Bucket=one.bucket, Key=key, Body=bytes(data), Metadata=head["Metadata"])

    def flip(data: bytearray) -> bytearray:
        data[HEADER_SIZE + CHUNK + 40] ^= 0x01
        return data

    def swap(data: bytearray) -> bytearray:
        first = slice(HEADER_SIZE, HEADER_SIZE + CHUNK + TAG)
        second = slice(HEADER_SIZE + CHUNK + TAG, HEADER_SIZE + 2 * (CHUNK + TAG))
        data[first], data[second] = data[second], data[first]
        return data

    tamper("flipped", flip)
    tamper("truncated", lambda data: data[: HEADER_SIZE + 2 * (CHUNK + TAG)])  # whole chunks
    tamper("swapped", swap)
    result = two.pull(status=3)
    for name in ("flipped", "truncated", "swapped"):
        line = next(line for line in result.output.splitlines() if f".ssh/{name}:" in line)
        assert "skipped" in line and "failed its integrity check" in line, line
        assert not (two.home / ".ssh" / name).exists()
    assert (two.home / ".ssh" / "intact").read_bytes() == (ssh / "intact").read_bytes()
    assert no_leftovers(two.home)


def test_same_edit_is_no_conflict_and_a_real_conflict_is_decrypted_beside(
    one: Cluster, two: Cluster
) -> None:
    dotfiles(one.home)
    with_passphrase(one, two)
    one.push()
    two.pull()
    for cluster in (one, two):
        (cluster.home / ".ssh" / "config").write_text("same on both\n")
    one.push()
    result = two.pull()
    assert "conflict:" not in result.output, result.output
    assert not list((two.home / ".ssh").glob("*.conflict-*"))
    assert two.push().output.splitlines()[-1].startswith("   0 uploaded")

    (one.home / ".ssh" / "config").write_text("from one\n")
    (two.home / ".ssh" / "config").write_text("from two\n")
    one.push()
    result = two.push(status=3)
    assert "conflict: .ssh/config: changed on the remote" in result.output
    two.pull(status=3)
    assert (two.home / ".ssh" / "config").read_text() == "from two\n"
    copies = list((two.home / ".ssh").glob("config.conflict-*"))
    assert len(copies) == 1 and copies[0].read_text() == "from one\n"


def test_without_terminal_or_passphrase_encrypted_files_wait(one: Cluster, two: Cluster, s3
                                                             ) -> None:
    dotfiles(one.home)
    result = one.push(status=3)
    assert ("Encryption passphrase: none given and no terminal to ask on; skipping 3 "
            "encrypted file(s)") in result.output
    assert "   skipped: .ssh/id_ed25519: encrypted; skipped: no passphrase given" in result.output
    assert result.output.splitlines()[-1].startswith("   1 uploaded")  # .bashrc, and .ssh/
    assert not [k for k in keys(s3, one.bucket, PREFIX) if k.startswith(PREFIX + ".ssh/") and
                not k.endswith("/")]
    assert "upload: .ssh/id_ed25519" in one.cli("status").output  # still pending
    with_passphrase(one)
    assert one.push().output.splitlines()[-1].startswith("   3 uploaded")

    result = two.pull(status=3)
    assert "Decryption passphrase: none given" in result.output
    assert "skipped: .ssh/config: encrypted" in result.output
    assert (two.home / ".bashrc").exists() and not (two.home / ".ssh" / "config").exists()
    with_passphrase(two)
    two.pull()
    assert (two.home / ".ssh" / "config").read_bytes() == (one.home / ".ssh/config").read_bytes()


def test_passphrase_file_must_be_private(one: Cluster, tmp_path: Path) -> None:
    dotfiles(one.home)
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o640)
    result = one.cli("push", "--passphrase-file", str(secret))
    assert result.exit_code == 2, result.output
    assert "refusing passphrase file" in result.output and "chmod 600" in result.output
    secret.chmod(0o600)
    result = one.cli("push", "--passphrase-file", str(secret))
    assert result.exit_code == 0, result.output
    with_passphrase(one)  # the same passphrase: the file's newline is not part of it
    (one.home / ".ssh" / "config").write_text("again\n")
    one.push()


def test_add_with_encrypt_patterns(one: Cluster, tmp_path: Path, s3) -> None:
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "a.pem").write_text("private")
    (data / "notes.txt").write_text("public")
    result = one.cli("add", "data", str(data), "--encrypt", "*.pem", "--encrypt", "vault/")
    assert result.exit_code == 0, result.output
    with_passphrase(one)
    one.push("data")
    got = s3.get_object(Bucket=one.bucket, Key="sync/tester/data/keys/a.pem")
    assert got["Metadata"]["fusesync-enc"] == FORMAT and b"private" not in got["Body"].read()
    plain = s3.get_object(Bucket=one.bucket, Key="sync/tester/data/notes.txt")["Body"].read()
    assert plain == b"public"


@pytest.fixture(autouse=True)
def _no_passphrase_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSESYNC_PASSPHRASE", raising=False)
    monkeypatch.delenv("FUSESYNC_NEW_PASSPHRASE", raising=False)


def test_files_pushed_before_the_list_covered_them_are_encrypted_next_push(
    one: Cluster, tmp_path: Path, s3
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cred.pem").write_text("was plain")
    (data / "notes.txt").write_text("stays plain")
    assert one.cli("add", "data", str(data)).exit_code == 0
    one.push("data")
    key = "sync/tester/data/cred.pem"
    assert s3.get_object(Bucket=one.bucket, Key=key)["Body"].read() == b"was plain"
    config = one.root / "config" / "fusesync" / "config.toml"
    settings = tomllib.loads(config.read_text())
    settings["targets"]["data"]["encrypt"] = ["*.pem"]
    config.write_text(tomli_w.dumps(settings))
    assert one.push("data", status=3).output.count("skipped: cred.pem: encrypted") == 1
    with_passphrase(one)
    assert one.push("data").output.splitlines()[-1].startswith("   1 uploaded")
    got = s3.get_object(Bucket=one.bucket, Key=key)
    assert got["Metadata"]["fusesync-enc"] == FORMAT and b"was plain" not in got["Body"].read()
    assert one.push("data").output.splitlines()[-1].startswith("   0 uploaded")
    plain = s3.get_object(Bucket=one.bucket, Key="sync/tester/data/notes.txt")
    assert "fusesync-enc" not in plain["Metadata"]


def test_a_cluster_whose_list_misses_a_path_keeps_it_encrypted(
    one: Cluster, two: Cluster, tmp_path: Path, s3
) -> None:
    for cluster, extra in ((one, ("--encrypt", "*.pem")), (two, ())):
        folder = tmp_path / f"data-{cluster.root.name}"
        folder.mkdir()
        assert cluster.cli("add", "data", str(folder), *extra).exit_code == 0
    (tmp_path / "data-one" / "cred.pem").write_text("secret v1")
    with_passphrase(one, two)
    one.push("data")
    two.pull("data")
    assert (tmp_path / "data-two" / "cred.pem").read_text() == "secret v1"
    (tmp_path / "data-two" / "cred.pem").write_text("secret v2")  # two's list has no *.pem
    two.push("data")
    got = s3.get_object(Bucket=one.bucket, Key="sync/tester/data/cred.pem")
    assert got["Metadata"]["fusesync-enc"] == FORMAT and b"secret" not in got["Body"].read()
    one.pull("data")
    assert (tmp_path / "data-one" / "cred.pem").read_text() == "secret v2"

"""Encrypted files in a real mount: decrypted on fetch with the daemon's passphrase,
EACCES without one, and encrypted at push when written through the mount."""

from __future__ import annotations

import errno
import os

import pytest
from support.mounting import (
    assert_clean_log,
    dirty_paths,
    local_kind,
    mounted,
    mounted_run,
    remote_only_state,
)
from syncenv import Cluster

PREFIX = "sync/tester/default/"
PASSPHRASE = "mount passphrase"

pytestmark = pytest.mark.timeout(120)


def encrypted_remote(one: Cluster) -> bytes:
    (one.home / ".ssh").mkdir(mode=0o700)
    (one.home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    big = os.urandom(300_000)  # five chunks
    (one.home / ".ssh" / "blob").write_bytes(big)
    (one.home / "plain.txt").write_text("plain\n")
    one.env["FUSESYNC_PASSPHRASE"] = PASSPHRASE
    one.push()
    return big


def test_mount_decrypts_on_fetch_and_encrypts_at_push(one: Cluster, two: Cluster, s3) -> None:
    big = encrypted_remote(one)
    remote_only_state(two)
    env = {**two.env, "FUSESYNC_PASSPHRASE": PASSPHRASE}
    with mounted(two.home, env):
        assert os.stat(two.home / ".ssh" / "blob").st_size == len(big)  # before any fetch
        assert local_kind(two, ".ssh/blob") is None
        assert (two.home / ".ssh" / "id_ed25519").read_text() == "PRIVATE KEY\n"
        with (two.home / ".ssh" / "blob").open("rb") as f:
            f.seek(200_000)
            assert f.read(10) == big[200_000:200_010]
        assert (two.home / ".ssh" / "blob").read_bytes() == big
        (two.home / ".ssh" / "new_key").write_text("WRITTEN THROUGH THE MOUNT\n")
        output = mounted_run(two, "push")
        assert "1 uploaded" in output and not dirty_paths(two)
    got = s3.get_object(Bucket=two.bucket, Key=PREFIX + ".ssh/new_key")
    assert got["Metadata"]["fusesync-enc"] == "fusesync-aes256gcm-v1"
    assert b"WRITTEN" not in got["Body"].read()
    assert (two.home / ".ssh" / "blob").read_bytes() == big  # a plain file after unmount
    one.pull()
    assert (one.home / ".ssh" / "new_key").read_text() == "WRITTEN THROUGH THE MOUNT\n"
    assert_clean_log(two)


def test_without_a_passphrase_encrypted_files_fail_with_eacces(one: Cluster, two: Cluster
                                                               ) -> None:
    encrypted_remote(one)
    remote_only_state(two)
    with mounted(two.home, two.env):
        assert (two.home / "plain.txt").read_text() == "plain\n"
        assert os.stat(two.home / ".ssh" / "id_ed25519").st_size == len("PRIVATE KEY\n")
        with pytest.raises(PermissionError) as raised:
            (two.home / ".ssh" / "id_ed25519").read_bytes()
        assert raised.value.errno == errno.EACCES
        (two.home / ".ssh" / "mine").write_text("new here")
        output = mounted_run(two, "push", status=3)
        assert "skipped: .ssh/mine: encrypted; skipped: no passphrase given" in output
        assert ".ssh/mine" in dirty_paths(two)  # still to push
    log = (two.state / "default" / "mount.log").read_text()
    assert "cannot open '.ssh/id_ed25519': it is encrypted and the mount has no passphrase" \
        in log
    assert not (two.home / ".ssh" / "id_ed25519").exists()
    assert_clean_log(two, allowed=("is encrypted and the mount has no passphrase",))


def test_a_mount_holding_a_key_a_rekey_replaced_seals_nothing_more(one: Cluster, two: Cluster,
                                                                   s3) -> None:
    encrypted_remote(one)
    remote_only_state(two)
    env = {**two.env, "FUSESYNC_PASSPHRASE": PASSPHRASE}
    with mounted(two.home, env):
        assert (two.home / ".ssh" / "id_ed25519").read_text() == "PRIVATE KEY\n"
        (two.home / ".ssh" / "before").write_text("sealed with the key the mount holds\n")
        assert "1 uploaded" in mounted_run(two, "push")
        one.env["FUSESYNC_NEW_PASSPHRASE"] = "the mount's passphrase, changed"
        result = one.cli("rekey")
        assert result.exit_code == 0 and "3 file(s) re-encrypted" in result.output, \
            result.output
        (two.home / ".ssh" / "after").write_text("not to be sealed with a retired key\n")
        output = mounted_run(two, "push", status=3)
        assert ("skipped: .ssh/after: encrypted; skipped: the passphrase from "
                "FUSESYNC_PASSPHRASE opens only a key a rekey replaced; give the new "
                "passphrase") in output
        assert ".ssh/after" in dirty_paths(two)  # still to push, with the new passphrase
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=two.bucket, Prefix=PREFIX)
            ["Contents"]]
    assert PREFIX + ".ssh/before" in keys and PREFIX + ".ssh/after" not in keys
    assert_clean_log(two)

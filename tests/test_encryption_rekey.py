"""`fusesync rekey`: killed with -9 half-way, every object still opens with one of the two
passphrases; run again, it finishes, and only the new passphrase opens anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from syncenv import Cluster, keys

from fusesync.crypt.keys import Keyring
from fusesync.crypt.stream import decrypt_bytes

PREFIX = "sync/tester/default/"
OLD, NEW = "the passphrase before", "the passphrase after"
FILES = 300


def keyring(s3, bucket: str) -> Keyring:  # type: ignore[no-untyped-def]
    got = s3.get_object(Bucket=bucket, Key="sync/tester/default.keys")
    return Keyring.decode(got["Body"].read())


def key_ids(s3, bucket: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k[len(PREFIX):]: s3.head_object(Bucket=bucket, Key=k)["Metadata"]["fusesync-key"]
            for k in keys(s3, bucket, PREFIX + ".ssh/") if not k.endswith("/")}


def test_rekey_killed_half_way_then_resumed(one: Cluster, two: Cluster, s3) -> None:
    ssh = one.home / ".ssh"
    ssh.mkdir()
    for i in range(FILES):
        (ssh / f"k{i:03d}").write_bytes(os.urandom(1000 + i))
    (ssh / "big").write_bytes(os.urandom(9 << 20))  # one resealed through spool files
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    one.push()
    before = keyring(s3, one.bucket)

    env = {**os.environ, **one.env, "FUSESYNC_NEW_PASSPHRASE": NEW}
    proc = subprocess.Popen([sys.executable, "-m", "fusesync.cli", "rekey"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    first = PREFIX + ".ssh/k000"
    deadline = time.monotonic() + 60
    while s3.head_object(Bucket=one.bucket, Key=first)["Metadata"]["fusesync-key"] == \
            before.current.hex():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        assert time.monotonic() < deadline, "the rekey never started"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # half-way: both keys in the ring, objects under each, every one opens with one of them
    ring = keyring(s3, one.bucket)
    assert ring.retiring == before.current and ring.current != before.current
    old, new = ring.unlock(OLD.encode()), ring.unlock(NEW.encode())
    assert old is not None and new is not None and old.key_id != new.key_id
    ids = key_ids(s3, one.bucket)
    assert {old.key_id.hex(), new.key_id.hex()} == set(ids.values()), "really half-way"
    both = {old.key_id: old, new.key_id: new}
    for rel in ids:
        data = s3.get_object(Bucket=one.bucket, Key=PREFIX + rel)["Body"].read()
        decrypt_bytes(data, both, rel)  # raises if neither key opens it

    # meanwhile a pull with the new passphrase takes what is under the new key
    two.env["FUSESYNC_PASSPHRASE"] = NEW
    result = two.cli("pull")
    assert result.exit_code == 3, result.output
    assert "encrypted under another key" in result.output

    # run again: it finishes what was left
    one.env["FUSESYNC_NEW_PASSPHRASE"] = NEW
    result = one.cli("rekey")
    assert result.exit_code == 0, result.output
    assert "was interrupted: finishing it" in result.output
    ring = keyring(s3, one.bucket)
    # the old key is retired, not dropped: it seals nothing and no object is left under it
    assert ring.retiring is None and ring.current == new.key_id
    assert ring.retired == (old.key_id,) and set(ring.keys) == {old.key_id, new.key_id}
    assert set(key_ids(s3, one.bucket).values()) == {new.key_id.hex()}
    assert ring.unlock(OLD.encode()) is None

    two.pull()
    for path in ssh.iterdir():
        assert (two.home / ".ssh" / path.name).read_bytes() == path.read_bytes(), path.name
    one.env["FUSESYNC_PASSPHRASE"] = NEW
    one.pull()  # the new passphrase opens everything
    (one.home / ".ssh" / "k001").write_bytes(b"after the rekey")
    one.push()
    two.pull()
    assert (two.home / ".ssh" / "k001").read_bytes() == b"after the rekey"
    two.env["FUSESYNC_PASSPHRASE"] = OLD
    (two.home / ".ssh" / "k002").write_bytes(b"old passphrase")
    result = two.cli("push")
    assert result.exit_code == 1 and "incorrect" in result.output, result.output


def test_rekey_needs_the_current_passphrase(one: Cluster, s3) -> None:
    (one.home / ".ssh").mkdir()
    (one.home / ".ssh" / "id").write_text("key")
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    one.push()
    one.env.update(FUSESYNC_PASSPHRASE="not it", FUSESYNC_NEW_PASSPHRASE=NEW)
    result = one.cli("rekey")
    assert result.exit_code == 1 and "incorrect; nothing was changed" in result.output
    assert keyring(s3, one.bucket).retiring is None
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    result = one.cli("rekey")
    assert result.exit_code == 0, result.output
    assert "1 file(s) re-encrypted" in result.output
    assert one.pull().output.splitlines()[-1].startswith("   0 downloaded")  # index kept up


@pytest.fixture(autouse=True)
def _no_passphrase_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSESYNC_PASSPHRASE", raising=False)
    monkeypatch.delenv("FUSESYNC_NEW_PASSPHRASE", raising=False)

"""The passphrase prompts on a real pseudo-terminal (pexpect): CTRL+C skips the encrypted
files and nothing else, a wrong passphrase is asked again, a new key is asked twice."""

from __future__ import annotations

import os
import signal
import sys

import pexpect
import pytest
from syncenv import Cluster, keys

PREFIX = "sync/tester/default/"
PASSPHRASE = "a long passphrase for tests"


def dotfiles(cluster: Cluster) -> None:
    (cluster.home / ".ssh").mkdir(mode=0o700)
    (cluster.home / ".ssh" / "id_rsa").write_text("PRIVATE KEY\n")
    (cluster.home / ".ssh" / "config").write_text("Host *\n")
    (cluster.home / ".bashrc").write_text("export A=1\n")


def spawn(cluster: Cluster, *args: str) -> pexpect.spawn:
    """The CLI on a terminal of its own, as a user's shell starts it: CTRL+C's signal at
    its default, also when the suite runs where it is ignored (a background job started
    without job control, such as `nohup make test &`, ignores SIGINT, and every process
    it starts inherits that)."""
    env = {k: v for k, v in {**os.environ, **cluster.env}.items() if k != "FUSESYNC_PASSPHRASE"}
    return pexpect.spawn(sys.executable, ["-m", "fusesync.cli", *args], env=env,
                         encoding="utf-8", timeout=60, dimensions=(40, 200),
                         preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def remote_files(cluster: Cluster, s3) -> set[str]:  # type: ignore[no-untyped-def]
    return {k[len(PREFIX):] for k in keys(s3, cluster.bucket, PREFIX) if not k.endswith("/")}


def test_push_prompt_ctrl_c_skips_only_the_encrypted_files(one: Cluster, s3) -> None:
    dotfiles(one)
    child = spawn(one, "push")
    child.expect_exact("    Permissions ... OK")  # the original tool's order
    child.expect_exact("    Encryption passphrase (CTRL+C to skip): ")
    child.sendintr()
    child.expect_exact("Skipping.")
    status, rest = finish(child)
    assert status == 3, rest
    assert "skipped: .ssh/id_rsa: encrypted; skipped at the passphrase prompt" in rest
    assert "skipped: .ssh/config" in rest and "1 uploaded" in rest
    assert remote_files(one, s3) == {".bashrc"}

    # the next push asks again; a first key is asked twice
    child = spawn(one, "push")
    child.expect_exact("Encryption passphrase (CTRL+C to skip): ")
    child.sendline(PASSPHRASE)
    child.expect_exact("Repeat passphrase: ")
    child.sendline(PASSPHRASE + " typo")
    child.expect_exact("Passphrases differ.")
    child.expect_exact("Encryption passphrase (CTRL+C to skip): ")
    child.sendline(PASSPHRASE)
    child.expect_exact("Repeat passphrase: ")
    child.sendline(PASSPHRASE)
    status, rest = finish(child)
    assert status == 0, rest
    assert "2 uploaded" in rest and PASSPHRASE not in rest
    assert remote_files(one, s3) == {".bashrc", ".ssh/id_rsa", ".ssh/config"}

    # with the key made, a wrong passphrase is refused and asked again
    (one.home / ".ssh" / "config").write_text("Host *\n  Port 22\n")
    child = spawn(one, "push")
    child.expect_exact("Encryption passphrase (CTRL+C to skip): ")
    child.sendline("not it")
    child.expect_exact("Incorrect passphrase.")
    child.expect_exact("Encryption passphrase (CTRL+C to skip): ")
    child.sendline(PASSPHRASE)
    status, rest = finish(child)
    assert status == 0 and "1 uploaded" in rest, rest


def test_pull_prompt_repeats_and_ctrl_c_skips(one: Cluster, two: Cluster) -> None:
    dotfiles(one)
    one.env["FUSESYNC_PASSPHRASE"] = PASSPHRASE
    one.push()

    child = spawn(two, "pull")
    child.expect_exact("Decryption passphrase (CTRL+C to skip): ")
    child.sendintr()
    child.expect_exact("Skipping.")
    status, rest = finish(child)
    assert status == 3, rest
    assert "skipped: .ssh/id_rsa: encrypted; skipped at the passphrase prompt" in rest
    assert (two.home / ".bashrc").exists() and not (two.home / ".ssh" / "id_rsa").exists()

    child = spawn(two, "pull")
    for wrong in ("one", "two", "three"):
        child.expect_exact("Decryption passphrase (CTRL+C to skip): ")
        child.sendline(wrong)
        child.expect_exact("Incorrect passphrase.")
    status, rest = finish(child)
    assert status == 3 and "skipped after three incorrect passphrases" in rest, rest
    assert not (two.home / ".ssh" / "id_rsa").exists()

    child = spawn(two, "pull")
    child.expect_exact("Decryption passphrase (CTRL+C to skip): ")
    child.sendline("wrong")
    child.expect_exact("Incorrect passphrase.")
    child.expect_exact("Decryption passphrase (CTRL+C to skip): ")
    child.sendline(PASSPHRASE)
    status, rest = finish(child)
    assert status == 0, rest
    assert (two.home / ".ssh" / "id_rsa").read_text() == "PRIVATE KEY\n"

    # nothing encrypted to bring: no question at all
    child = spawn(two, "pull")
    status, rest = finish(child)
    assert status == 0 and "passphrase" not in rest, rest


@pytest.fixture(autouse=True)
def _no_passphrase_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSESYNC_PASSPHRASE", raising=False)

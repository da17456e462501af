"""Keys a rekey replaced stay in the keyring, retired: an object another cluster sealed
with the old key after the rekey's last look still opens with the old passphrase, a pull
with the new one says what it is, and rekey run again moves it. A push that held the old
key lets go of it at its next sealing step; two rekeys at once end with one keyring.
The keyring's own format is tested in test_encryption_format.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from syncenv import Cluster, keys

from fusesync.config import Config, Target
from fusesync.crypt.keys import Keyring, TargetKey
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.crypt.stream import decrypt_bytes
from fusesync.errors import FusesyncError
from fusesync.index import Index
from fusesync.remote.faulty import FaultyRemote
from fusesync.remote.s3 import S3Remote
from fusesync.sync.engine import Engine
from fusesync.sync.rekey import Rekey, RekeyResult

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "sync/tester/default/"
KEYRING = "sync/tester/default.keys"
OLD, NEW, OTHER = "the passphrase before", "the passphrase after", "another new passphrase"


@dataclass
class Side:
    """One cluster's target, index and remote (wrapped to hold calls), opened in-process
    so that several runs can share one event loop."""

    target: Target
    index: Index
    remote: FaultyRemote
    state: Path
    source: PassphraseSource | None = None

    @property
    def engine(self) -> Engine:
        """One engine kept across runs, as a mount daemon keeps its own."""
        if self._engine is None:
            self._engine = Engine(self.target, self.index, self.remote, passphrase=self.source)
        return self._engine

    _engine: Engine | None = None

    def rekey(self, old: str, new: str) -> Rekey:
        return Rekey(self.target, self.index, self.remote, given(old), given(new),
                     self.state, lambda _line: None)


@asynccontextmanager
async def opened(side: Side) -> AsyncIterator[Side]:
    try:
        yield side
    finally:
        side.index.close()
        await side.remote.aclose()


def side_of(cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
            source: PassphraseSource | None = None) -> Side:
    """What `fusesync` would build for `cluster` (its environment is read now)."""
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    config = Config.load()
    target = config.target("default")
    target.state_dir.mkdir(parents=True, exist_ok=True)
    side = Side(target, Index(target.state_dir / "index.db"),
                FaultyRemote(S3Remote(config.settings)), target.state_dir, source)
    _ = side.engine  # built while the cluster's environment is in place
    return side


def given(passphrase: str) -> PassphraseSource:
    return PassphraseSource(passphrase.encode(), "the test")


def keyring(s3: S3Client, bucket: str) -> Keyring:
    return Keyring.decode(s3.get_object(Bucket=bucket, Key=KEYRING)["Body"].read())


def key_of(s3: S3Client, bucket: str, rel: str) -> str:
    return str(s3.head_object(Bucket=bucket, Key=PREFIX + rel)["Metadata"]["fusesync-key"])


def opens(s3: S3Client, bucket: str, rel: str, key: TargetKey) -> bytes:
    body = s3.get_object(Bucket=bucket, Key=PREFIX + rel)["Body"].read()
    return decrypt_bytes(body, {key.key_id: key}, rel)


def hold_once(remote: FaultyRemote, op: str, matches: Callable[[str], bool]
              ) -> tuple[trio.Event, trio.Event]:
    """Hold the first call of `op` on a key `matches` accepts until `release` is set."""
    reached, release = trio.Event(), trio.Event()

    async def hook(key: str) -> None:
        if matches(key) and not reached.is_set():
            reached.set()
            await release.wait()

    remote.before(op, hook)
    return reached, release


def late_object(one: Cluster, two: Cluster, s3: S3Client, monkeypatch: pytest.MonkeyPatch
                ) -> bytes:
    """The race: two's push derives the old key and seals `.ssh/late`, its write is held
    while one's rekey (OLD to NEW) runs from first step to last, then it lands. Returns
    the old key's id."""
    (one.home / ".ssh").mkdir()
    (one.home / ".ssh" / "id").write_bytes(b"the first key")
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    one.push()
    (two.home / ".ssh").mkdir()
    (two.home / ".ssh" / "late").write_bytes(b"written by a push that began before the rekey")
    first = keyring(s3, one.bucket).current
    pusher = side_of(two, monkeypatch, given(OLD))
    rekeyer = side_of(one, monkeypatch)

    async def race() -> tuple[RekeyResult, int]:
        reached, release = hold_once(pusher.remote, "put_bytes",
                                     lambda key: key.endswith("/.ssh/late"))
        pushed: list[int] = []
        async with opened(pusher), opened(rekeyer), trio.open_nursery() as nursery:
            async def push() -> None:
                pushed.append((await pusher.engine.push()).uploaded)

            nursery.start_soon(push)
            await reached.wait()
            result = await rekeyer.rekey(OLD, NEW).run()  # begins, reseals, checks, ends
            assert keyring(s3, one.bucket).retiring is None  # the rekey is over
            release.set()
        return result, pushed[0]

    result, uploaded = trio.run(race)
    assert result.resealed == 1 and uploaded == 1
    return first


def test_an_object_sealed_with_the_old_key_after_the_rekey_ended_is_never_lost(
    one: Cluster, two: Cluster, tmp_path: Path, fusesync_env: Any, s3: S3Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = late_object(one, two, s3, monkeypatch)

    # the late object is under the old key, which the ring keeps, retired
    ring = keyring(s3, one.bucket)
    assert ring.retiring is None and ring.current != first and ring.retired == (first,)
    assert set(ring.keys) == {first, ring.current}
    assert key_of(s3, one.bucket, ".ssh/late") == first.hex()
    assert key_of(s3, one.bucket, ".ssh/id") == ring.current.hex()
    old = ring.unlock(OLD.encode(), retired=True)
    assert old is not None and old.key_id == first
    assert opens(s3, one.bucket, ".ssh/late", old) == (two.home / ".ssh/late").read_bytes()
    assert ring.unlock(OLD.encode()) is None  # opens no live key: push refuses it

    # a pull with the new passphrase says what the object is and what to do
    one.env["FUSESYNC_PASSPHRASE"] = NEW
    result_pull = one.pull(status=3)
    assert (f"skipped: .ssh/late: '.ssh/late' is sealed under a retired key (id {first.hex()})"
            ": run 'fusesync rekey default' again, or pull with the old passphrase"
            ) in result_pull.output
    assert not (one.home / ".ssh/late").exists()

    # a pull with the old passphrase opens it (and says the rest needs the new one)
    three = Cluster(tmp_path / "three", fusesync_env.server, fusesync_env.bucket)
    three.env["FUSESYNC_PASSPHRASE"] = OLD
    result_pull = three.pull(status=3)
    assert "This passphrase opens only a retired key" in result_pull.output
    assert (three.home / ".ssh/late").read_bytes() == (two.home / ".ssh/late").read_bytes()
    assert (f"'.ssh/id' is encrypted under the target's current key (id {ring.current.hex()})"
            in result_pull.output)
    assert not (three.home / ".ssh/id").exists()

    # rekey again with the same two: the late object moves under the new key, no key is made
    one.env.update(FUSESYNC_PASSPHRASE=OLD, FUSESYNC_NEW_PASSPHRASE=NEW)
    result_rekey = one.cli("rekey")
    assert result_rekey.exit_code == 0, result_rekey.output
    assert "opens a retired key" in result_rekey.output
    assert "1 file(s) re-encrypted" in result_rekey.output
    assert keyring(s3, one.bucket) == ring
    assert key_of(s3, one.bucket, ".ssh/late") == ring.current.hex()
    one.env["FUSESYNC_PASSPHRASE"] = NEW
    one.pull()
    assert (one.home / ".ssh/late").read_bytes() == (two.home / ".ssh/late").read_bytes()
    result_rekey = one.cli("rekey")  # the new passphrase as the current one: a new rekey
    assert result_rekey.exit_code == 0, result_rekey.output
    assert keyring(s3, one.bucket).retired == (first, ring.current)


def test_a_push_holding_a_key_a_rekey_replaced_seals_nothing_more_with_it(
    one: Cluster, two: Cluster, tmp_path: Path, fusesync_env: Any, s3: S3Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (one.home / ".ssh").mkdir()
    (one.home / ".ssh" / "id").write_bytes(b"first")
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    one.push()
    first = keyring(s3, one.bucket).current
    (two.home / ".ssh").mkdir()
    asked: list[str] = []
    said: list[str] = []
    answers = iter([OLD.encode(), NEW.encode()])

    def ask(question: str) -> bytes | None:
        asked.append(question)
        return next(answers)

    # two engines kept across pushes, as a mount daemon keeps its own: one that may ask
    # (a terminal), one given the old passphrase by a file or the environment
    asking_side = side_of(one, monkeypatch, PassphraseSource(None, "", ask, said.append))
    given_side = side_of(two, monkeypatch, given(OLD))
    asking, holding = asking_side.engine, given_side.engine

    async def before() -> None:
        (one.home / ".ssh" / "a").write_bytes(b"a")
        (two.home / ".ssh" / "b").write_bytes(b"b")
        assert (await asking.push()).uploaded == 1
        assert (await holding.push()).uploaded == 1

    trio.run(before)
    assert key_of(s3, one.bucket, ".ssh/a") == key_of(s3, one.bucket, ".ssh/b") == first.hex()
    three = Cluster(tmp_path / "three", fusesync_env.server, fusesync_env.bucket)
    three.env.update(FUSESYNC_PASSPHRASE=OLD, FUSESYNC_NEW_PASSPHRASE=NEW)
    result = three.cli("rekey")
    assert result.exit_code == 0, result.output
    current = keyring(s3, one.bucket).current

    async def after() -> None:
        async with opened(asking_side), opened(given_side):
            (one.home / ".ssh" / "a2").write_bytes(b"a2")
            (two.home / ".ssh" / "b2").write_bytes(b"b2")
            report = await asking.push()
            assert report.uploaded == 1 and not report.skipped
            report = await holding.push()
            assert report.uploaded == 0
            assert report.skipped == [(".ssh/b2", "encrypted; skipped: the passphrase from the "
                                       "test opens only a key a rekey replaced; give the new "
                                       "passphrase")]

    trio.run(after)
    assert asked == ["Encryption passphrase (CTRL+C to skip)"] * 2
    assert any(line.startswith(f"The target's passphrase was changed by a rekey (key "
                               f"{first.hex()} is retired)") for line in said), said
    assert key_of(s3, one.bucket, ".ssh/a2") == current.hex()
    assert PREFIX + ".ssh/b2" not in keys(s3, one.bucket, PREFIX)


def test_two_rekeys_at_once_leave_one_keyring(
    one: Cluster, two: Cluster, s3: S3Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    (one.home / ".ssh").mkdir()
    for i in range(5):
        (one.home / ".ssh" / f"k{i}").write_bytes(b"key %d" % i)
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    one.push()
    first = keyring(s3, one.bucket).current
    winner, loser = side_of(one, monkeypatch), side_of(two, monkeypatch)

    async def race() -> RekeyResult:
        # the loser has checked the old passphrase and made its new key; its first write
        # of the keyring waits while the winner's whole rekey runs
        reached, release = hold_once(loser.remote, "put_bytes", lambda key: key == KEYRING)
        async with opened(winner), opened(loser), trio.open_nursery() as nursery:
            async def lose() -> None:
                with pytest.raises(FusesyncError, match=r"keys changed under this rekey.*"
                                   r"nothing was changed"):
                    await loser.rekey(OLD, OTHER).run()

            nursery.start_soon(lose)
            await reached.wait()
            result = await winner.rekey(OLD, NEW).run()
            release.set()
        return result

    result = trio.run(race)
    assert result.resealed == 5
    ring = keyring(s3, one.bucket)
    assert ring.retiring is None and ring.retired == (first,) and len(ring.keys) == 2
    new = ring.unlock(NEW.encode())
    assert new is not None and new.key_id == ring.current
    assert ring.unlock(OTHER.encode(), retired=True) is None  # the loser's key never landed
    for i in range(5):
        assert opens(s3, one.bucket, f".ssh/k{i}", new) == b"key %d" % i


def test_a_rekey_finished_meanwhile_by_another_run_is_finished_once(
    one: Cluster, two: Cluster, s3: S3Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    (one.home / ".ssh").mkdir()
    for i in range(3):
        (one.home / ".ssh" / f"k{i}").write_bytes(b"key %d" % i)
    one.env["FUSESYNC_PASSPHRASE"] = OLD
    one.push()
    first = keyring(s3, one.bucket).current
    slow, fast = side_of(one, monkeypatch), side_of(two, monkeypatch)
    writes: list[str] = []

    async def race() -> tuple[RekeyResult, RekeyResult]:
        # the slow run has resealed everything; its last write of the keyring waits while
        # a second run (same two passphrases) resumes the rekey and finishes it
        reached, release = trio.Event(), trio.Event()

        async def hook(key: str) -> None:
            if key == KEYRING:
                writes.append(key)
                if len(writes) == 2:
                    reached.set()
                    await release.wait()

        slow.remote.before("put_bytes", hook)
        results: list[RekeyResult] = []
        async with opened(slow), opened(fast), trio.open_nursery() as nursery:
            async def run_slow() -> None:
                results.append(await slow.rekey(OLD, NEW).run())

            nursery.start_soon(run_slow)
            await reached.wait()
            finished = await fast.rekey(OLD, NEW).run()
            assert finished.resumed and finished.resealed == 0
            release.set()
        return results[0], finished

    slow_result, _fast_result = trio.run(race)
    assert slow_result.resealed == 3
    ring = keyring(s3, one.bucket)
    assert ring.retiring is None and ring.retired == (first,)  # retired once, not twice


def test_a_rekey_lists_what_it_cannot_open_under_a_retired_key(
    one: Cluster, two: Cluster, s3: S3Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = late_object(one, two, s3, monkeypatch)
    second = keyring(s3, one.bucket).current

    # a new rekey, from the current passphrase: the late object is listed, never touched
    one.env.update(FUSESYNC_PASSPHRASE=NEW, FUSESYNC_NEW_PASSPHRASE=OTHER)
    result = one.cli("rekey")
    assert result.exit_code == 3, result.output
    assert (f"skipped: .ssh/late: sealed under an older key (id {first.hex()}) this "
            "passphrase does not open") in result.output
    assert "with that key's passphrase as the current one" in result.output
    ring = keyring(s3, one.bucket)
    assert ring.retired == (first, second) and ring.retiring is None
    assert key_of(s3, one.bucket, ".ssh/late") == first.hex()

    # the oldest passphrase as the current one moves it under the newest key
    one.env.update(FUSESYNC_PASSPHRASE=OLD, FUSESYNC_NEW_PASSPHRASE=OTHER)
    result = one.cli("rekey")
    assert result.exit_code == 0 and "1 file(s) re-encrypted" in result.output, result.output
    assert keyring(s3, one.bucket) == ring
    one.env["FUSESYNC_PASSPHRASE"] = OTHER
    one.pull()
    assert (one.home / ".ssh/late").read_bytes() == (two.home / ".ssh/late").read_bytes()


@pytest.fixture(autouse=True)
def _no_passphrase_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSESYNC_PASSPHRASE", raising=False)
    monkeypatch.delenv("FUSESYNC_NEW_PASSPHRASE", raising=False)

"""A run's keys for one target: asked for (or read from a file or the environment),
checked against the target's keyring, or made with the keyring when there is none yet.

A passphrase is asked for at most once per run (three tries), and only when the caller
has something to seal or open; a wrong one from a file or the environment is an error,
never a question. Nothing here keeps a passphrase beyond the derivation. Every push reads
the keyring again before it seals, so a key a rekey replaced meanwhile (this run's, or a
mount's held for days) seals nothing more.
"""

from __future__ import annotations

import errno
import functools

import trio

from fusesync.config import Target
from fusesync.crypt import keys as keyring
from fusesync.crypt.keys import Keyring, TargetKey
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.crypt.stream import WrongKey
from fusesync.errors import FusesyncError, RemoteChanged
from fusesync.remote.base import Remote

TRIES = 3
PUSH_QUESTION = "Encryption passphrase (CTRL+C to skip)"
PULL_QUESTION = "Decryption passphrase (CTRL+C to skip)"


class IncorrectPassphrase(FusesyncError):
    """A passphrase given by file or environment does not open the target's key."""

    errno = errno.EACCES


class NoKey(FusesyncError):
    """An encrypted file cannot be opened: no passphrase, or none that opens its key."""

    errno = errno.EACCES


class Unlocker:
    """The keys of one run: `current` seals, `opening` (by key id) opens. The `for_*`
    methods return None once they are had, else why the files needing them are skipped."""

    def __init__(self, target: Target, remote: Remote, source: PassphraseSource | None
                 ) -> None:
        self.target = target
        self.remote = remote
        self.source = source
        self.current: TargetKey | None = None  # the key new objects are sealed with
        self.opening: dict[bytes, TargetKey] = {}  # the keys objects are opened with
        self.refused: str | None = None  # why no key can be had (said once)
        self.ring: Keyring | None = None  # the keyring as last read
        self._lock = trio.Lock()

    @property
    def can_try(self) -> bool:
        """Whether a key may yet be had without asking anyone (the mount's question)."""
        return bool(self.opening) or (self.refused is None and self.source is not None
                                      and self.source.given is not None)

    @property
    def deferred(self) -> bool:
        """Whether the key may be left to the first transfer that needs it: with a
        passphrase given (nobody to ask), scrypt's ~0.3 s then runs while files move."""
        return not self.opening and self.source is not None and self.source.given is not None

    async def for_push(self, count: int, recheck: bool = False) -> str | None:
        """`recheck`: read the keyring again first (a push's sealing step begins), and
        let go of the key held if it is no longer the current one."""
        async with self._lock:
            if not recheck or self.current is None:
                return await self._unlock_for_push(count)
            held = self.current
            ring = await self.load_keyring()
            if ring is not None and ring.current == held.key_id:
                return None
            self.current = None  # retired, retiring, or purged with its keyring
            source = self.source
            if ring is not None and source is not None:
                source.say(f"The target's passphrase was changed by a rekey (key "
                           f"{held.key_id.hex()} is {ring.state(held.key_id) or 'gone'}): "
                           "files are sealed only under the new one.")
            try:
                return await self._unlock_for_push(count)
            except IncorrectPassphrase:
                assert source is not None
                return (f"encrypted; skipped: the passphrase from {source.origin} opens only "
                        "a key a rekey replaced; give the new passphrase")

    async def for_pull(self, count: int) -> str | None:
        async with self._lock:
            return await self._unlock_for_pull(count)

    async def need(self, push: bool) -> None:
        """Unlock now, if it was deferred; raise NoKey when the key cannot be had."""
        reason = await (self.for_push(1) if push else self.for_pull(1))
        if reason is not None:
            raise NoKey(reason)

    async def load_keyring(self) -> Keyring | None:
        got = await self.remote.get_bytes(self.target.keyring_key)
        self.ring = Keyring.decode(*got) if got is not None else None
        return self.ring

    async def wrong_key(self, key_id: bytes, path: str) -> WrongKey:
        """The error for an object sealed under `key_id`, which this run does not hold:
        what that key is to the target, and what to do about it."""
        ring = self.ring
        if ring is None or ring.state(key_id) is None:
            ring = await self.load_keyring()  # a key made since this run (or mount) read it
        state = ring.state(key_id) if ring is not None else None
        kid, name = key_id.hex(), self.target.name
        if state == "retired":
            return WrongKey(f"'{path}' is sealed under a retired key (id {kid}): run "
                            f"'fusesync rekey {name}' again, or pull with the old passphrase")
        if state == "retiring":
            return WrongKey(f"'{path}' is encrypted under another key (id {kid}), the one an "
                            f"unfinished rekey is replacing: run 'fusesync rekey {name}' to "
                            "finish it, or pull with the old passphrase")
        if state == "current":
            return WrongKey(f"'{path}' is encrypted under the target's current key (id {kid}),"
                            " which this run's passphrase does not open (it opens a key a "
                            "rekey replaced): give the current passphrase")
        return WrongKey(f"'{path}' is encrypted under another key (id {kid}) than this "
                        "passphrase's; a rekey may be unfinished, or the header is damaged")

    async def unlock(self) -> bool:
        """For the mount: open the target's keys with the given passphrase, once; on
        failure `refused` says why."""
        async with self._lock:
            if not self.opening and self.refused is None:
                try:
                    self.refused = await self._unlock_for_pull(0)
                except FusesyncError as exc:  # a wrong passphrase, an unreadable keyring
                    self.refused = str(exc)
        return bool(self.opening)

    async def _unlock_for_push(self, count: int) -> str | None:
        if self.current is not None:
            return None
        source = self._source(count, PUSH_QUESTION)
        if isinstance(source, str):
            return source
        ring = await self.load_keyring()
        if ring is None:
            return await self._create(source)
        key = await self._verify(source, ring, PUSH_QUESTION, current_only=True)
        if isinstance(key, str):
            return key
        self.current = key
        self.opening[key.key_id] = key
        return None

    async def _unlock_for_pull(self, count: int) -> str | None:
        if self.opening:
            return None
        source = self._source(count, PULL_QUESTION)
        if isinstance(source, str):
            return source
        ring = await self.load_keyring()
        if ring is None:
            return (f"encrypted, but {self.target.url}.keys holds no key to open it with "
                    "(purged or never pushed by fusesync?)")
        key = await self._verify(source, ring, PULL_QUESTION, current_only=False)
        if isinstance(key, str):
            return key
        self.opening[key.key_id] = key
        if key.key_id == ring.current:
            self.current = key
        elif ring.state(key.key_id) == "retired":
            source.say(f"This passphrase opens only a retired key (id {key.key_id.hex()}): "
                       "files sealed since a rekey replaced it need the new passphrase.")
        return None

    def _source(self, count: int, question: str) -> PassphraseSource | str:
        source = self.source
        if source is None or (source.given is None and source.ask is None):
            if count and source is not None:
                label = question.partition(" (")[0]
                source.say(f"{label}: none given and no terminal to ask on; skipping {count} "
                           "encrypted file(s) (set FUSESYNC_PASSPHRASE or use "
                           "--passphrase-file)")
            return "encrypted; skipped: no passphrase given"
        return source

    async def _verify(self, source: PassphraseSource, ring: Keyring, question: str,
                      current_only: bool) -> TargetKey | str:
        """The key `source`'s passphrase opens (any the ring holds, unless `current_only`);
        an error for a wrong given one; a reason to skip when the user skipped or missed
        three times."""
        unlock = functools.partial(ring.unlock, current_only=current_only,
                                   retired=not current_only)
        if source.given is not None:
            key = await trio.to_thread.run_sync(unlock, source.given)
            if key is None:
                raise IncorrectPassphrase(f"the passphrase from {source.origin} is incorrect "
                                          "(no encrypted file was touched)")
            return key
        assert source.ask is not None
        for _ in range(TRIES):
            # Blocks the event loop while the user types: nothing else is in flight now.
            answer = source.ask(question)
            if answer is None:
                return "encrypted; skipped at the passphrase prompt"
            key = await trio.to_thread.run_sync(unlock, answer)
            if key is not None:
                return key
            source.say("Incorrect passphrase.")
        return "encrypted; skipped after three incorrect passphrases"

    async def _create(self, source: PassphraseSource) -> str | None:
        """The target's first key: from the passphrase (asked twice on a terminal), its
        keyring written only if no other cluster wrote one meanwhile."""
        passphrase = source.given
        for _ in range(TRIES if passphrase is None else 0):
            assert source.ask is not None
            first = source.ask(PUSH_QUESTION)
            if first is None:
                return "encrypted; skipped at the passphrase prompt"
            if not first:
                source.say("The passphrase cannot be empty.")
                continue
            again = source.ask("Repeat passphrase")
            if again is None:
                return "encrypted; skipped at the passphrase prompt"
            if first == again:
                passphrase = first
                break
            source.say("Passphrases differ.")
        if passphrase is None:
            return "encrypted; skipped: the passphrases given differed"
        params, key = await trio.to_thread.run_sync(keyring.create, passphrase)
        ring = Keyring({params.key_id: params}, params.key_id)
        try:
            await self.remote.put_bytes(self.target.keyring_key, ring.encode(),
                                        content_type="application/json", if_none_match=True)
        except RemoteChanged:  # another cluster made the first key meanwhile: use theirs
            theirs = await self.load_keyring()
            if theirs is None:
                raise
            found = await trio.to_thread.run_sync(theirs.unlock, passphrase, True)
            if found is None:
                if source.given is not None:
                    raise IncorrectPassphrase(
                        f"the passphrase from {source.origin} is incorrect") from None
                source.say("Incorrect passphrase.")
                return "encrypted; another cluster set a different passphrase meanwhile"
            key = found
        self.current = key
        self.opening[key.key_id] = key
        return None

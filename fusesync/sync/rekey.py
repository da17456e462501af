"""`fusesync rekey`: every encrypted object of a target sealed anew under a new passphrase.

The steps are ordered so that a kill -9 anywhere leaves each object readable by one of the
two passphrases, and running rekey again finishes the job:

1. the new key joins the keyring as `current` and the old one stays as `retiring`, in one
   conditional write: from then on push seals with the new key, pull opens either (two
   rekeys at once: one write wins, the other changes nothing and says so);
2. each object still under the old key is read, opened and sealed anew chunk by chunk
   (no plaintext lands anywhere), and written back with If-Match on the version it was
   read at: a replace is atomic, so an object is under the old key or the new, never
   neither, and a file pushed meanwhile is never overwritten;
3. the manifest learns the new etags; a last listing checks that nothing is left under
   the old key;
4. the old key is marked retired (conditional write). Its entry stays: a push that read
   the keyring before step 1 may still write an object under it after step 3, and that
   object must stay readable by the old passphrase.

A second run finds `retiring` set and resumes at step 2, asking for both passphrases. A
run whose current passphrase opens a retired key instead of the current one (given with
the current passphrase as the new one) moves what is left under that key to the current
key: it is how such a late object is brought in. Objects under a retired key this run
cannot open are listed, never touched.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from fusesync.config import Target
from fusesync.crypt import keys as keyring
from fusesync.crypt.keys import Keyring, TargetKey
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.crypt.stream import (
    ENC_META,
    FORMAT,
    KEY_META,
    TAG_META,
    plain_size,
    reseal_stream,
)
from fusesync.errors import Declined, FusesyncError, RemoteChanged, one_error
from fusesync.index import Index
from fusesync.remote.base import Head, Listed, Remote
from fusesync.sync.manifest import ManifestEntry
from fusesync.sync.model import remote_sig
from fusesync.sync.push import merge_manifest
from fusesync.sync.remote_scan import load_manifest
from fusesync.sync.sealed import SMALL
from fusesync.sync.unlock import TRIES, IncorrectPassphrase

CONCURRENCY = 4
ROUNDS = 3

OLD_QUESTION = "Current passphrase (CTRL+C to stop)"
NEW_QUESTION = "New passphrase"
REPEAT_QUESTION = "Repeat new passphrase"


@dataclass
class RekeyResult:
    resealed: int = 0
    resumed: bool = False
    swept: bool = False  # moved what was left under retired keys; made no new key
    stranded: dict[str, str] = field(default_factory=dict)
    """Objects left under a retired key this run could not open: path -> key id (hex)."""


@dataclass(frozen=True)
class Resealed:
    path: str
    old_etag: str
    etag: str
    tag: str


class Rekey:
    """One rekey of one target. The caller holds the target's lock."""

    def __init__(self, target: Target, index: Index, remote: Remote, old: PassphraseSource,
                 new: PassphraseSource, spool: Path | None, say: Callable[[str], None]) -> None:
        self.target = target
        self.index = index
        self.remote = remote
        self.old_source = old
        self.new_source = new
        self.spool = spool
        self.say = say
        self.result = RekeyResult()

    async def run(self) -> RekeyResult:
        ring = await self._load()
        if ring is None:
            raise FusesyncError(f"{self.target.url} has no encryption key yet: nothing to rekey")
        retiring = ring.retiring
        if retiring is not None:
            self.result.resumed = True
            self.say("A rekey of this target was interrupted: finishing it.")
            olds = {retiring: await self._open(self.old_source, ring, retiring, OLD_QUESTION)}
            new = await self._open(self.new_source, ring, ring.current, NEW_QUESTION)
        else:
            olds = await self._open_old(ring)
            if ring.current in olds:
                new, params = await self._new_key()
                retiring = ring.current
                ring = ring.rekeyed(params)
                await self._write(ring)  # step 1: both keys valid, new objects sealed with `new`
            else:
                self.result.swept = True
                self.say("The current passphrase given opens a retired key (id "
                         f"{', '.join(k.hex() for k in olds)}): moving what is left under it "
                         "to the current key.")
                new = await self._open(self.new_source, ring, ring.current, NEW_QUESTION)
        for _ in range(ROUNDS):
            if not await self._reseal_round(olds, new):  # steps 2 and 3
                break
        else:
            raise FusesyncError("objects kept arriving under the old key (another cluster is "
                                "pushing with it?); run rekey again")
        if retiring is not None:
            await self._retire(retiring, new)  # step 4
        return self.result

    async def _retire(self, retiring: bytes, new: TargetKey) -> None:
        """Step 4, unless a rekey run alongside this one did it already."""
        for _ in range(2):
            latest = await self._load()
            if latest is not None and latest.current == new.key_id:
                if latest.retiring is None and retiring in latest.retired:
                    return  # finished by the other run
                if latest.retiring == retiring:
                    try:
                        await self._write(latest.rekey_done(), quiet=True)
                        return
                    except RemoteChanged:
                        continue  # look again: the other run may have finished it
            break
        raise FusesyncError("the target's keys changed under this rekey (another rekey?); "
                            "run rekey again")

    # -- the keyring -----------------------------------------------------------------

    async def _load(self) -> Keyring | None:
        got = await self.remote.get_bytes(self.target.keyring_key)
        return Keyring.decode(*got) if got is not None else None

    async def _write(self, ring: Keyring, quiet: bool = False) -> None:
        """Write `ring` if the keyring is still the version it was read at. `quiet`: let
        RemoteChanged through, for the caller to look again."""
        try:
            await self.remote.put_bytes(
                self.target.keyring_key, ring.encode(), content_type="application/json",
                **({"if_match": ring.etag} if ring.etag else {"if_none_match": True}),
            )
        except RemoteChanged:
            if quiet:
                raise
            raise FusesyncError("the target's keys changed under this rekey (another rekey "
                                "or a first push elsewhere?); nothing was changed: run rekey "
                                "again") from None

    async def _open_old(self, ring: Keyring) -> dict[bytes, TargetKey]:
        """The keys the current passphrase opens: the current key, or else every retired
        key it opens (a run that is to move what is left under them)."""
        source = self.old_source

        def derive_all(passphrase: bytes) -> dict[bytes, TargetKey]:
            current = keyring.derive(passphrase, ring.keys[ring.current])
            if current is not None:
                return {current.key_id: current}
            found = (keyring.derive(passphrase, ring.keys[kid]) for kid in ring.retired)
            return {key.key_id: key for key in found if key is not None}

        if source.given is not None:
            keys = await trio.to_thread.run_sync(derive_all, source.given)
            if not keys:
                raise IncorrectPassphrase(f"the passphrase from {source.origin} is incorrect; "
                                          "nothing was changed")
            return keys
        for _ in range(TRIES):
            keys = await trio.to_thread.run_sync(derive_all, self._ask(source, OLD_QUESTION))
            if keys:
                return keys
            source.say("Incorrect passphrase.")
        raise IncorrectPassphrase("three incorrect passphrases; nothing was changed")

    async def _open(self, source: PassphraseSource, ring: Keyring, key_id: bytes,
                    question: str) -> TargetKey:
        """The key `key_id` of `ring`, opened by `source`'s passphrase."""
        derive = functools.partial(keyring.derive, params=ring.keys[key_id])
        if source.given is not None:
            key = await trio.to_thread.run_sync(derive, source.given)
            if key is None:
                raise IncorrectPassphrase(f"the passphrase from {source.origin} is incorrect; "
                                          "nothing was changed")
            return key
        for _ in range(TRIES):
            answer = self._ask(source, question)
            key = await trio.to_thread.run_sync(derive, answer)
            if key is not None:
                return key
            source.say("Incorrect passphrase.")
        raise IncorrectPassphrase("three incorrect passphrases; nothing was changed")

    async def _new_key(self) -> tuple[TargetKey, keyring.KeyParams]:
        source = self.new_source
        passphrase = source.given
        for _ in range(TRIES if passphrase is None else 0):
            first = self._ask(source, NEW_QUESTION)
            if not first:
                source.say("The passphrase cannot be empty.")
                continue
            if first == self._ask(source, REPEAT_QUESTION):
                passphrase = first
                break
            source.say("Passphrases differ.")
        if passphrase is None:
            raise Declined("the new passphrases given differed; nothing was changed")
        params, key = await trio.to_thread.run_sync(keyring.create, passphrase)
        return key, params

    @staticmethod
    def _ask(source: PassphraseSource, question: str) -> bytes:
        if source.ask is None:
            raise Declined("no terminal to ask for passphrases on: give them with "
                           "FUSESYNC_PASSPHRASE and FUSESYNC_NEW_PASSPHRASE or --passphrase-file "
                           "and --new-passphrase-file")
        answer = source.ask(question)  # blocks the loop while the user types
        if answer is None:
            raise Declined("stopped at the passphrase prompt")
        return answer

    # -- the objects -----------------------------------------------------------------

    async def _reseal_round(self, olds: dict[bytes, TargetKey], new: TargetKey) -> int:
        """Reseal every object still under a key of `olds`; fix the manifest for every
        object under `new` it does not know yet; note those under any other key. Returns
        how many were under `olds`."""
        wanted = {key_id.hex(): key for key_id, key in olds.items()}
        self.result.stranded = {}
        entries, _etag = await load_manifest(self.remote, self.target)
        listing = [obj async for obj in self.remote.list(self.target.prefix)
                   if not obj.key.endswith("/")]
        done: list[Resealed] = []
        fixed: dict[str, ManifestEntry | None] = {}
        found = 0
        limiter = trio.CapacityLimiter(CONCURRENCY)

        async def one(obj: Listed) -> None:
            nonlocal found
            rel = obj.key[len(self.target.prefix):]
            entry = entries.get(rel)
            async with limiter:
                if entry is not None and entry.etag == obj.etag and entry.key:
                    key_id, head = entry.key, None
                else:  # written by a run that never updated the manifest: ask the object
                    head = await self.remote.head(obj.key)
                    if head is None or head.metadata.get(ENC_META) != FORMAT:
                        return
                    key_id = head.metadata.get(KEY_META, "")
                if key_id in wanted:
                    found += 1
                    resealed = await self._reseal(rel, head, wanted[key_id], new)
                    if resealed is not None:
                        done.append(resealed)
                        self.result.resealed += 1
                elif key_id == new.key_id.hex():
                    if head is not None and entry is not None:
                        fixed[rel] = replace(entry, etag=head.etag,
                                             md5=head.metadata.get(TAG_META), enc=FORMAT,
                                             key=key_id, size=plain_size(head.size) or entry.size)
                else:
                    self.result.stranded[rel] = key_id

        with one_error():
            async with trio.open_nursery() as nursery:
                for obj in listing:
                    nursery.start_soon(one, obj)
        for item in done:
            entry = entries.get(item.path)
            if entry is not None:
                fixed[item.path] = replace(entry, etag=item.etag, md5=item.tag, enc=FORMAT,
                                           key=new.key_id.hex())
        if fixed:
            await merge_manifest(self.remote, self.target, fixed)
        self._record(done)
        return found

    async def _reseal(self, rel: str, head: Head | None, old: TargetKey, new: TargetKey
                      ) -> Resealed | None:
        """Seal one object anew; None when it changed meanwhile to something not under
        `old` (pushed elsewhere: nothing left to do for it)."""
        key = self.target.prefix + rel
        keys = {old.key_id: old}
        for _ in range(TRIES):
            head = head or await self.remote.head(key)
            if head is None or head.metadata.get(KEY_META) != old.key_id.hex():
                return None
            metadata = {k: v for k, v in head.metadata.items() if k != TAG_META}
            metadata[KEY_META] = new.key_id.hex()
            try:
                etag, md5 = await self._rewrite(key, rel, head, keys, new, metadata)
                return Resealed(rel, head.etag, etag, new.content_tag(md5))
            except RemoteChanged:
                head = None  # pushed meanwhile: look again
        raise FusesyncError(f"'{rel}' kept changing during the rekey; run rekey again")

    async def _rewrite(self, key: str, rel: str, head: Head, keys: dict[bytes, TargetKey],
                       new: TargetKey, metadata: dict[str, str]) -> tuple[str, str]:
        """Read the object at `head`'s version, reseal it, write it back If-Match it."""
        if head.size <= SMALL:
            got = await self.remote.get_bytes(key, if_match=head.etag)
            if got is None:
                raise RemoteChanged(key)
            out = io.BytesIO()
            _size, md5 = await trio.to_thread.run_sync(
                reseal_stream, io.BytesIO(got[0]), len(got[0]), out.write, keys, new, rel)
            metadata[TAG_META] = new.content_tag(md5)
            etag = await self.remote.put_bytes(key, out.getvalue(), metadata=metadata,
                                               if_match=head.etag)
            return etag, md5
        with tempfile.TemporaryFile(dir=self.spool) as src, \
                tempfile.TemporaryFile(dir=self.spool) as dst:
            await self.remote.download_file(key, src, if_match=head.etag, size=head.size)
            size = src.seek(0, os.SEEK_END)
            src.seek(0)
            _size, md5 = await trio.to_thread.run_sync(
                reseal_stream, src, size, dst.write, keys, new, rel)
            dst.flush()
            metadata[TAG_META] = new.content_tag(md5)
            etag = await self.remote.upload_file(
                key, f"/proc/self/fd/{dst.fileno()}", size=dst.tell(), md5=None, attrs=None,
                metadata=metadata, if_match=head.etag,
            )
            return etag, md5

    def _record(self, done: list[Resealed]) -> None:
        """This cluster's index: the resealed objects are the base wherever the old ones
        were, so the next pull does not fetch them again."""
        with self.index.transaction():
            for item in done:
                row = self.index.get(item.path)
                if row is None or row["remote_etag"] != item.old_etag:
                    continue
                updates: dict[str, str | None] = {"remote_etag": item.etag,
                                                  "remote_md5": item.tag}
                if row["base_etag"] == item.old_etag:
                    updates["base_etag"] = item.etag
                    updates["base_rsig"] = remote_sig(
                        row["remote_kind"], item.etag, row["remote_mode"], row["remote_uid"],
                        row["remote_gid"], row["remote_mtime"], row["remote_target"])
                self.index.upsert(item.path, **updates)

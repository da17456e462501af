"""Encrypted files: which paths, when to unlock (unlock.py), and their own transfers.

Paths matching a target's `encrypt` list go up sealed (crypt/stream.py) and come down
opened, on a path of their own beside the fast one: they are few (dotfile folders). Upload
seals into memory or, for a large file, into a spool file (ciphertext only, unlinked at
once), then sends that; download fetches the object, then opens it into the temporary file
pull renames into place only once every chunk has verified. This module never sends the
plaintext of a covered path, never hands ciphertext over as a file's content, and never
asks for a passphrase unless the run has something to seal or open.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import trio

from fusesync.config import Target
from fusesync.crypt import keys as keyring
from fusesync.crypt.keys import TargetKey
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.crypt.stream import (
    ENC_META,
    FORMAT,
    HEADER_SIZE,
    KEY_META,
    TAG_META,
    decrypt_stream,
    encrypt_stream,
    header_key_id,
    sealed_size,
)
from fusesync.errors import FusesyncError, IntegrityError, RemoteChanged, SourceChanged
from fusesync.index import Index, Row
from fusesync.remote.base import Attrs, Head, Remote
from fusesync.sync.manifest import ManifestEntry
from fusesync.sync.matcher import ENCRYPT_CHECKED, PathMatcher, encrypt_mark
from fusesync.sync.model import Kind
from fusesync.sync.plan import Action, Op
from fusesync.sync.report import Report
from fusesync.sync.unlock import NoKey, Unlocker

SMALL = 8 << 20
"""Objects up to this size are sealed or opened in memory, in one request."""



class Sealing:
    """One run's encrypted files. The engine admits actions through it (asking for the
    passphrase once, when there is something to seal or open); push and pull hand it the
    transfers of those files."""

    def __init__(self, target: Target, remote: Remote, source: PassphraseSource | None,
                 spool: Path | None = None) -> None:
        """`spool`: where large files' ciphertext waits (None: the system's temp dir)."""
        self.target = target
        self.remote = remote
        self.source = source
        self.spool = spool
        self.matcher = PathMatcher(target.encrypt)
        self.unlocker = Unlocker(target, remote, source)
        self._patterns = encrypt_mark(target.encrypt)
        self._unsealed: list[Action] = []

    # -- which rows ------------------------------------------------------------------

    def covers(self, row: Row) -> bool:
        """Whether push seals this row's local file: the encrypt list covers it, or its
        remote object is sealed already (another cluster's list covers it: never undone
        by a push from here)."""
        return row["local_kind"] == Kind.FILE and (
            bool(row["remote_enc"]) or self.matcher.matches(row["path"]))

    @property
    def can_try(self) -> bool:
        """Whether a key may yet be had without asking anyone (the mount's question)."""
        return self.unlocker.can_try

    @property
    def refused(self) -> str | None:
        """Why no key can be had, once that is known (the mount's log line)."""
        return self.unlocker.refused

    # -- files pushed in plaintext before the encrypt list covered them --------------

    def unsealed(self, index: Index, planned: list[Action]) -> list[Action]:
        """Uploads of covered files whose remote object is still plaintext (pushed before
        the encrypt list covered them, or by a fusesync without encryption), so that push
        replaces it sealed. Every row is read, so this looks only when the list changed
        since the last look that left nothing behind (see `checked`)."""
        if index.meta(ENCRYPT_CHECKED) == self._patterns or not self.matcher:
            return []
        planned_paths = {a.path for a in planned}
        rows = index.rows("local_kind = 'file' AND base_kind = 'file' AND remote_kind = 'file'"
                          " AND remote_enc IS NULL AND base_etag IS NOT NULL")
        self._unsealed = [
            Action(Op.UPLOAD, row["path"], Kind.FILE, row["local_size"] or 0,
                   reason="encrypted now", row=row)
            for row in rows if row["path"] not in planned_paths and self.covers(row)
        ]
        return self._unsealed

    def checked(self, index: Index, report: Report) -> None:
        """After a push: remember the list was looked at, unless some of what the look
        found was left behind (skipped or in conflict), so the next push looks again."""
        if index.meta(ENCRYPT_CHECKED) == self._patterns:
            return
        left = {path for path, _ in (*report.skipped, *report.conflicts)}
        if not any(a.path in left for a in self._unsealed) and not report.dry_run:
            index.set_meta(ENCRYPT_CHECKED, self._patterns)

    # -- admitting a run's actions -------------------------------------------------------

    async def admit_push(self, actions: list[Action], report: Report) -> list[Action]:
        """The actions push may carry out: those sealing a file only if a key was had.
        A key held from an earlier run (a mount's) is checked against the keyring first:
        one a rekey has replaced since seals nothing more."""
        sealed = [a for a in actions
                  if a.op == Op.UPLOAD and a.row is not None and self.covers(a.row)]
        if not sealed or self.unlocker.deferred:
            return actions
        reason = await self.unlocker.for_push(len(sealed), recheck=True)
        return _without(actions, sealed, reason, report)

    async def admit_pull(self, actions: list[Action], report: Report) -> list[Action]:
        """The actions pull may carry out: opening an object only with a key; a conflict
        whose two sides hold the same content (told by the keyed tag) is no conflict."""
        sealed = [a for a in actions if a.op in (Op.FETCH, Op.CONFLICT) and a.row is not None
                  and a.row["remote_enc"] and a.row["remote_kind"] == Kind.FILE
                  and a.row["local_kind"] != Kind.DIR]
        if not sealed or (self.unlocker.deferred and all(a.op == Op.FETCH for a in sealed)):
            return actions
        reason = await self.unlocker.for_pull(len(sealed))
        actions = _without(actions, sealed, reason, report)
        return [self._same_content(a) if a.op == Op.CONFLICT else a for a in actions]

    def _same_content(self, action: Action) -> Action:
        row = action.row
        assert row is not None
        same = (row["remote_enc"] and row["local_kind"] == Kind.FILE and row["local_md5"]
                and any(k.content_tag(row["local_md5"]) == row["remote_md5"]
                        for k in self.unlocker.opening.values()))
        return dataclasses.replace(action, op=Op.RECORD, reason="") if same else action

    # -- push ------------------------------------------------------------------------

    def _sealing_key(self) -> TargetKey:
        if self.unlocker.current is None:
            raise FusesyncError("internal: an encrypted file reached push without a key")
        return self.unlocker.current

    async def upload(self, object_key: str, source: Path, row: Row, attrs: Attrs,
                     conditions: Mapping[str, Any], progress: Callable[[int], None]) -> str:
        """Seal the local file `source` (as the scan saw it: size and MD5 are checked) and
        write it to `object_key`; returns the new etag. The s3fs attribute headers stay
        in plaintext."""
        await self.unlocker.need(push=True)
        key = self._sealing_key()
        size, md5 = row["local_size"] or 0, row["local_md5"]
        metadata = {ENC_META: FORMAT, KEY_META: key.key_id.hex(), TAG_META: key.content_tag(md5)}
        if sealed_size(size) <= SMALL:
            data, seen = await trio.to_thread.run_sync(_seal_small, source, key)
            _same_source(source, (size, md5), seen)
            etag = await self.remote.put_bytes(object_key, data, attrs=attrs, metadata=metadata,
                                               **conditions)
            progress(size)
            return etag
        with tempfile.TemporaryFile(dir=self.spool) as spool:
            seen = await trio.to_thread.run_sync(_seal_file, source, spool, key)
            _same_source(source, (size, md5), seen)
            return await self.remote.upload_file(
                object_key, f"/proc/self/fd/{spool.fileno()}", size=sealed_size(size), md5=None,
                attrs=attrs, metadata=metadata, progress=progress, **conditions,
            )

    def holds(self, head: Head, row: Row) -> bool:
        """Whether the object behind a refused write is this very content, sealed."""
        tag = head.metadata.get(TAG_META)
        return (head.metadata.get(ENC_META) == FORMAT and tag is not None
                and tag == self._sealing_key().content_tag(row["local_md5"]))

    def row_fields(self, row: Row) -> dict[str, Any]:
        """The remote columns that differ from a plain upload's."""
        return {"remote_md5": self._sealing_key().content_tag(row["local_md5"]),
                "remote_enc": FORMAT}

    def manifest_entry(self, entry: ManifestEntry, row: Row) -> ManifestEntry:
        key = self._sealing_key()
        return dataclasses.replace(entry, md5=key.content_tag(row["local_md5"]), enc=FORMAT,
                                   key=key.key_id.hex())

    # -- pull ------------------------------------------------------------------------

    @asynccontextmanager
    async def opened(self, row: Row, progress: Callable[[int], None], source: str | None = None
                     ) -> AsyncIterator[Opened]:
        """The object of `row` (or at relative path `source`, where a move left it),
        fetched and ready to be opened into a file by `Opened.fill` (from a worker
        thread). Raises RemoteChanged when it is no longer the listed version. The key is
        waited for only once the object is here, so a deferred scrypt runs meanwhile."""
        object_key = self.target.prefix + (source or row["path"])
        if sealed_size(row["remote_size"] or 0) <= SMALL:
            got = await self.remote.get_bytes(object_key, if_match=row["remote_etag"])
            if got is None:
                raise RemoteChanged(f"'{row['path']}' is no longer on the remote")
            progress(len(got[0]))
            await self._need_key_of(got[0][:HEADER_SIZE], row["path"])
            yield Opened(io.BytesIO(got[0]), len(got[0]), row, self.unlocker.opening)
            return
        with tempfile.TemporaryFile(dir=self.spool) as spool:
            await self.remote.download_file(object_key, spool, if_match=row["remote_etag"],
                                            progress=progress)
            size = spool.seek(0, os.SEEK_END)
            spool.seek(0)
            header = spool.read(HEADER_SIZE)
            spool.seek(0)
            await self._need_key_of(header, row["path"])
            yield Opened(spool, size, row, self.unlocker.opening)

    async def _need_key_of(self, header: bytes, path: str) -> None:
        """Unlock, if it was deferred; then raise, saying why and what to do, when the
        object's key (named in its header) is none this run holds."""
        await self.unlocker.need(push=False)
        key_id = header_key_id(header, path)
        if key_id not in self.unlocker.opening:
            raise await self.unlocker.wrong_key(key_id, path)


    async def open_into(self, row: Row, write_at: Callable[[int, bytes], None],
                        source: str | None = None) -> str:
        """For the mount's fetch: the object's verified plaintext, chunk by chunk, to
        `write_at(offset, data)` (called from a worker thread); returns its MD5. `source`:
        as for `opened`. Raises an EACCES error when the mount has no passphrase that
        opens the target's key."""
        if not await self.unlocker.unlock():
            raise NoKey(f"'{row['path']}' is encrypted and the mount cannot decrypt it: "
                        f"{self.refused}")
        offset = 0

        def write(data: bytes) -> None:
            nonlocal offset
            write_at(offset, data)
            offset += len(data)

        async with self.opened(row, lambda _n: None, source) as body:
            await trio.to_thread.run_sync(body.pour, write)
        return body.md5


class Opened:
    """A fetched encrypted object, to be opened into a file by `fill`."""

    def __init__(self, body: BinaryIO, size: int, row: Row,
                 keys: Mapping[bytes, TargetKey]) -> None:
        self.body = body
        self.size = size
        self.row = row
        self.keys = keys
        self.md5 = ""

    def fill(self, out: BinaryIO) -> None:
        """Write the verified plaintext into `out`; raise IntegrityError (having written
        part of it, so `out` must be a temporary file) when any of it fails. Blocks."""
        self.pour(out.write)

    def pour(self, write: Callable[[bytes], object]) -> None:
        """`fill`, one verified chunk at a time to `write`. Blocks."""
        path = self.row["path"]
        key = self.keys.get(header_key_id(self.body.read(HEADER_SIZE), path))
        self.body.seek(0)
        _size, md5 = decrypt_stream(self.body, self.size, write, self.keys, path)
        expected = self.row["remote_md5"]
        if key is not None and expected and expected.startswith(keyring.TAG_PREFIX) \
                and key.content_tag(md5) != expected:
            raise IntegrityError(f"'{path}' decrypted, but not to the content its tag names "
                                 "(an older object put back?)")
        self.md5 = md5


def _without(actions: list[Action], sealed: Sequence[Action], reason: str | None,
             report: Report) -> list[Action]:
    if reason is None:
        return actions
    skip = {id(a) for a in sealed}
    report.skipped.extend((a.path, reason) for a in sealed)
    return [a for a in actions if id(a) not in skip]


def _seal_small(source: Path, key: TargetKey) -> tuple[bytes, tuple[int, str]]:
    with open(source, "rb") as f:
        out = io.BytesIO()
        seen = encrypt_stream(f, out.write, key)
    return out.getvalue(), seen


def _seal_file(source: Path, spool: BinaryIO, key: TargetKey) -> tuple[int, str]:
    with open(source, "rb") as f:
        seen = encrypt_stream(f, spool.write, key)
    spool.flush()
    return seen


def _same_source(source: Path, expected: tuple[int, str | None], seen: tuple[int, str]) -> None:
    if expected != seen:
        raise SourceChanged(f"'{source}' changed since it was hashed")


"""FaultyRemote: a Remote that delegates to another and fails, or stalls, when told to.

For tests of what the engine does when the store refuses or breaks mid-run. It never
changes what the inner remote returns; it only raises, waits and counts calls.
"""

from __future__ import annotations

import builtins
import os
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
)
from dataclasses import dataclass

import trio

from fusesync.remote.base import Attrs, Head, Listed, Progress, Remote, WritableFile

OPS = frozenset(
    {
        "bucket_exists",
        "create_bucket",
        "list",
        "head",
        "get_bytes",
        "put_bytes",
        "upload_file",
        "download_file",
        "delete",
        "delete_many",
        "abort_multipart_uploads",
    }
)


@dataclass
class _Fault:
    exc: Exception
    remaining: int
    after: bool  # raise once the inner call has succeeded: "the response was lost"


@dataclass
class _KeyFault:
    matches: Callable[[str], bool]
    exc: Exception
    ops: frozenset[str] | None


def _check(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"no operation named {op!r}: one of {', '.join(sorted(OPS))}")
    return op


class FaultyRemote:
    """Wraps `inner`; `calls` counts every call per operation name (method names)."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._next: dict[str, builtins.list[_Fault]] = {}
        self._keys: builtins.list[_KeyFault] = []
        self._delays: dict[str, float] = {}
        self._hooks: dict[str, Callable[[str], Awaitable[None]]] = {}

    # -- what tests call -------------------------------------------------------------------

    def fail_next(self, op: str, exc: Exception, count: int = 1, *, after: bool = False) -> None:
        """The next `count` calls of `op` raise `exc`: before reaching the inner remote,
        or, with `after`, once it has done the work (a lost response)."""
        self._next.setdefault(_check(op), []).append(_Fault(exc, count, after))

    def fail_keys(
        self, matches: Callable[[str], bool], exc: Exception, *, ops: Collection[str] | None = None
    ) -> None:
        """Every call (of `ops`, default all) naming a key `matches` accepts raises `exc`,
        before reaching the inner remote. For `list` the key is the prefix."""
        chosen = frozenset(_check(op) for op in ops) if ops is not None else None
        self._keys.append(_KeyFault(matches, exc, chosen))

    def delay(self, op: str, seconds: float) -> None:
        """Every call of `op` first sleeps `seconds` (cancellable), as a slow store would."""
        self._delays[_check(op)] = seconds

    def before(self, op: str, hook: Callable[[str], Awaitable[None]]) -> None:
        """Every call of `op` first awaits `hook(key)` (for `list` the prefix, for
        `delete_many` the first key): a test holds a call there until something else has
        happened, at a moment it chose."""
        self._hooks[_check(op)] = hook

    def reset(self) -> None:
        """Forget every fault, delay, hook and count."""
        self.calls.clear()
        self._next.clear()
        self._keys.clear()
        self._delays.clear()
        self._hooks.clear()

    # -- plumbing --------------------------------------------------------------------------

    async def _enter(self, op: str, *keys: str) -> None:
        self.calls[op] += 1
        if op in self._delays:
            await trio.sleep(self._delays[op])
        if op in self._hooks:
            await self._hooks[op](keys[0] if keys else "")
        for fault in self._keys:
            if (fault.ops is None or op in fault.ops) and any(map(fault.matches, keys)):
                raise fault.exc
        self._raise_next(op, after=False)

    def _raise_next(self, op: str, *, after: bool) -> None:
        queue = self._next.get(op, [])
        for fault in queue:
            if fault.after == after:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.remove(fault)
                raise fault.exc

    def _exit(self, op: str) -> None:
        self._raise_next(op, after=True)

    # -- the Remote protocol ---------------------------------------------------------------

    @property
    def bucket(self) -> str:
        return self.inner.bucket

    async def bucket_exists(self) -> bool:
        await self._enter("bucket_exists")
        result = await self.inner.bucket_exists()
        self._exit("bucket_exists")
        return result

    async def create_bucket(self) -> None:
        await self._enter("create_bucket")
        await self.inner.create_bucket()
        self._exit("create_bucket")

    async def list(self, prefix: str, start_after: str | None = None) -> AsyncIterator[Listed]:
        await self._enter("list", prefix)
        listing = self.inner.list(prefix, start_after)
        try:
            async for item in listing:
                yield item
        finally:
            if isinstance(listing, AsyncGenerator):  # a consumer that stopped early
                await listing.aclose()
        self._exit("list")

    async def head(self, key: str) -> Head | None:
        await self._enter("head", key)
        result = await self.inner.head(key)
        self._exit("head")
        return result

    async def get_bytes(
        self, key: str, *, if_match: str | None = None, if_none_match: str | None = None
    ) -> tuple[bytes, str] | None:
        await self._enter("get_bytes", key)
        result = await self.inner.get_bytes(key, if_match=if_match, if_none_match=if_none_match)
        self._exit("get_bytes")
        return result

    def get_bytes_soon(self, key: str, *, if_match: str | None = None) -> Callable[[], None]:
        return self.inner.get_bytes_soon(key, if_match=if_match)

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        attrs: Attrs | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        await self._enter("put_bytes", key)
        result = await self.inner.put_bytes(
            key,
            data,
            attrs=attrs,
            content_type=content_type,
            metadata=metadata,
            if_match=if_match,
            if_none_match=if_none_match,
        )
        self._exit("put_bytes")
        return result

    async def upload_file(
        self,
        key: str,
        path: os.PathLike[str] | str,
        *,
        size: int,
        md5: str | None,
        attrs: Attrs | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        progress: Progress | None = None,
    ) -> str:
        await self._enter("upload_file", key)
        result = await self.inner.upload_file(
            key,
            path,
            size=size,
            md5=md5,
            attrs=attrs,
            content_type=content_type,
            metadata=metadata,
            if_match=if_match,
            if_none_match=if_none_match,
            progress=progress,
        )
        self._exit("upload_file")
        return result

    async def download_file(
        self,
        key: str,
        dest: WritableFile,
        *,
        if_match: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Head:
        await self._enter("download_file", key)
        result = await self.inner.download_file(key, dest, if_match=if_match, size=size,
                                                progress=progress)
        self._exit("download_file")
        return result

    async def copy(self, source: str, key: str, *, if_match: str | None = None) -> str:
        await self._enter("copy", key)
        etag = await self.inner.copy(source, key, if_match=if_match)
        self._exit("copy")
        return etag

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await self._enter("delete", key)
        await self.inner.delete(key, if_match=if_match)
        self._exit("delete")

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._enter("delete_many", *keys)
        await self.inner.delete_many(keys)
        self._exit("delete_many")

    async def abort_multipart_uploads(self, prefix: str, *, older_than: float = 0.0) -> int:
        await self._enter("abort_multipart_uploads", prefix)
        result = await self.inner.abort_multipart_uploads(prefix, older_than=older_than)
        self._exit("abort_multipart_uploads")
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()

"""Streaming transfers of one object: a multipart upload whose parts are read, hashed and sent in
parallel, and a download in parallel ranged GETs written at their offsets. Never read a large
file whole into memory, never import boto3 here, never reach back into S3Remote.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import dataclasses
import functools
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import trio
from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError

from fusesync.errors import FusesyncError, IntegrityError, RemoteNotFound, SourceChanged
from fusesync.remote.base import Head, Progress, WritableFile
from fusesync.remote.shapes import quote_etag

MAX_PARTS = 10_000  # S3's limit per multipart upload
CHUNK = 1 << 20  # bytes per read of a streamed body

_T = TypeVar("_T")
Spawn = Callable[[Callable[[], Awaitable[object]]], None]
# (exc, op, key, digest_sent) -> the error to raise; key None means a bucket-level request
Translate = Callable[[Exception, str, str | None, bool], FusesyncError]
HeadOf = Callable[[str, Mapping[str, Any]], Head]


@dataclass(frozen=True, slots=True)
class Link:
    """What a transfer needs of its remote: a blocking boto3-shaped client, the bucket, the
    limiter its worker threads run under and the translator of the client's errors."""

    client: Any
    bucket: str
    endpoint: str
    limiter: trio.CapacityLimiter
    translate: Translate

    async def call(
        self,
        op: str,
        key: str | None,
        fn: Callable[..., _T],
        /,
        digest_sent: bool = False,
        **kwargs: Any,
    ) -> _T:
        """Run `fn(**kwargs)` (blocking: boto3) in a worker thread under the limiter."""
        try:
            return await trio.to_thread.run_sync(
                functools.partial(fn, **kwargs), limiter=self.limiter
            )
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc, op, key, digest_sent) from exc

    async def request(self, method: str, key: str | None = None, **kwargs: Any) -> Any:
        """One client request (blocking, in a worker thread): Bucket, and Key unless None."""
        if key is not None:
            kwargs["Key"] = key

        def send() -> Any:
            # Looked up in the worker thread as well: the lookup may build boto3's client,
            # which reads files (perhaps through the mount), and trio's thread never waits.
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)

        return await self.call(method, key, send)


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[Spawn]:
    """A nursery whose first failing task cancels the others and is raised alone (callers
    want RemoteChanged, not an ExceptionGroup of it). Cancellation passes untouched."""
    failures: builtins.list[Exception] = []
    async with trio.open_nursery() as nursery:

        def spawn(job: Callable[[], Awaitable[object]]) -> None:
            async def run() -> None:
                try:
                    await job()
                except Exception as exc:
                    failures.append(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(run)

        yield spawn
    if failures:
        raise failures[0]


# -- upload --------------------------------------------------------------------------------


async def multipart_upload(
    link: Link,
    key: str,
    path: os.PathLike[str] | str,
    *,
    size: int,
    md5: str | None,
    args: Mapping[str, Any],
    conditions: Mapping[str, Any],
    part_size: int,
    concurrency: int,
    buffers: trio.Semaphore,
    progress: Progress | None,
) -> str:
    """Parts read in order (hashing as they go, so a file that changed is caught before
    completion) and sent `concurrency` at a time, each holding one of `buffers` while in
    memory; the upload is aborted unless it completes. Returns the etag."""
    step = max(part_size, -(-size // MAX_PARTS))
    upload_id = (await link.request("create_multipart_upload", key, **args))["UploadId"]
    etags: dict[int, str] = {}
    completed = False
    try:
        send, receive = trio.open_memory_channel[tuple[int, bytes, str]](0)

        async def produce() -> None:
            async with send:
                await _read_parts(path, size, md5, step, send, buffers)

        async def consume(parts: trio.MemoryReceiveChannel[tuple[int, bytes, str]]) -> None:
            async with parts:
                async for number, data, digest in parts:
                    try:
                        resp = await link.request(
                            "upload_part",
                            key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=data,
                            ContentMD5=digest,
                        )
                    finally:
                        buffers.release()
                    etags[number] = str(resp["ETag"])
                    if progress:
                        progress(len(data))

        async with task_group() as spawn:
            spawn(produce)
            async with receive:
                for _ in range(concurrency):
                    spawn(functools.partial(consume, receive.clone()))
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        resp = await link.request(
            "complete_multipart_upload",
            key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **conditions,
        )
        completed = True
        return unquote_etag(resp.get("ETag"))
    finally:
        if not completed:
            await abort_upload(link, key, upload_id)


async def abort_upload(link: Link, key: str, upload_id: str) -> bool:
    """Abort one multipart upload, even while being cancelled; False if it was gone."""
    with trio.CancelScope(shield=True), trio.move_on_after(60):
        try:
            await link.request("abort_multipart_upload", key, UploadId=upload_id)
            return True
        except RemoteNotFound:
            return False
        except FusesyncError:
            return False  # the next run's abort_multipart_uploads tries again
    return False


async def _read_parts(
    path: os.PathLike[str] | str,
    size: int,
    md5: str | None,
    step: int,
    send: trio.MemorySendChannel[tuple[int, bytes, str]],
    buffers: trio.Semaphore,
) -> None:
    """Read `path` in order, `step` bytes a part, in worker threads, each part taking one of
    `buffers` (its receiver gives it back); raise SourceChanged when the file is no longer
    `size` bytes with hex digest `md5`."""
    whole = hashlib.md5()

    def read(f: BinaryIO) -> tuple[bytes, str]:
        data = f.read(step)
        whole.update(data)
        return data, b64(hashlib.md5(data).digest())

    f = await trio.to_thread.run_sync(open, path, "rb")
    try:
        number = total = 0
        sent = True
        while sent:
            await buffers.acquire()
            sent = False
            try:
                data, digest = await trio.to_thread.run_sync(read, f)
                total += len(data)
                if data and total <= size:
                    number += 1
                    await send.send((number, data, digest))
                    sent = True
            finally:
                if not sent:
                    buffers.release()
    finally:
        f.close()
    if total != size or (md5 and whole.hexdigest() != md5.lower()):
        raise SourceChanged(f"'{os.fspath(path)}' changed since it was hashed")


# -- download ------------------------------------------------------------------------------


async def download(
    link: Link,
    key: str,
    dest: WritableFile,
    *,
    if_match: str | None,
    size: int | None = None,
    part_size: int,
    concurrency: int,
    progress: Progress | None,
    head_of: HeadOf,
) -> Head:
    """Stream the object into `dest` from worker threads: one GET, then, for an object over
    `part_size`, ranged GETs (`concurrency` at a time) pinned to the first GET's etag.
    With `if_match` and the object's `size` known (listed), every range is asked at once
    instead: the first answer's headers are not waited for. `head_of(key, response)`
    reads a GET's headers."""
    sink = _Sink(dest)
    report = _reporter(progress)
    heads: builtins.list[Head] = []
    ranges = trio.CapacityLimiter(concurrency)
    step = part_size

    async def get_range(start: int, end: int, etag: str) -> None:
        def fetch() -> None:
            resp = link.client.get_object(
                Bucket=link.bucket, Key=key, IfMatch=quote_etag(etag), Range=f"bytes={start}-{end}"
            )
            got = str(resp.get("ContentRange", ""))
            whole = got.rpartition("/")[2]
            if size is not None and got and whole != str(size):
                resp["Body"].close()
                raise IntegrityError(f"'{key}' is {whole} bytes on {link.endpoint}, "
                                     f"not the {size} listed")
            if not got.startswith(f"bytes {start}-{end}/"):
                resp["Body"].close()
                raise IntegrityError(f"{link.endpoint} ignored the range asked of '{key}'")
            if start == 0:
                heads.append(dataclasses.replace(head_of(key, resp), size=size or 0))
            _copy(resp["Body"], sink, start, end + 1 - start, report)

        async with ranges:
            await link.call("get_object", key, fetch)

    def got_head(spawn: Spawn, head: Head) -> None:
        heads.append(head)
        for start in range(step, head.size, step):
            end = min(start + step, head.size) - 1
            spawn(functools.partial(get_range, start, end, head.etag))

    async with task_group() as spawn:
        if if_match and size is not None and size > step:
            for start in range(0, size, step):
                spawn(functools.partial(get_range, start, min(start + step, size) - 1, if_match))
        else:

            def first() -> None:
                args = {"IfMatch": quote_etag(if_match)} if if_match else {}
                resp = link.client.get_object(Bucket=link.bucket, Key=key, **args)
                head = head_of(key, resp)
                trio.from_thread.run_sync(got_head, spawn, head)
                # Only the first range comes from this stream; closing it early drops one
                # connection, which is cheaper than a HEAD for every small file.
                _copy(resp["Body"], sink, 0, min(head.size, step), report)

            spawn(functools.partial(link.call, "get_object", key, first))
    await trio.to_thread.run_sync(sink.finish, heads[0].size)
    return heads[0]


class _Sink:
    """Positional writes into the caller's file object, from several threads."""

    def __init__(self, dest: WritableFile) -> None:
        self._dest = dest
        self._lock = threading.Lock()

    def write_at(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._dest.seek(offset)
            while data:  # a raw file may take less than it was given
                written = self._dest.write(data)
                data = data[len(data) if written is None else written :]

    def finish(self, size: int) -> None:
        with self._lock:
            self._dest.truncate(size)
            self._dest.seek(size)
            self._dest.flush()


def _reporter(progress: Progress | None) -> Progress | None:
    """`progress` for worker threads: run in the trio thread, as it expects, but without the
    worker waiting for it (a wait per chunk held a big file's ranges back while the trio
    thread was busy with small files). Call from the trio thread."""
    if progress is None:
        return None
    token = trio.lowlevel.current_trio_token()

    def report(size: int) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(progress, size)

    return report


def _copy(body: Any, sink: _Sink, offset: int, length: int, report: Progress | None) -> None:
    """Copy `length` bytes of a streamed body to `sink` at `offset`; runs in a worker thread
    started by trio, and stops there when its task is cancelled. `report`: see _reporter."""
    with contextlib.closing(body):
        while length > 0:
            trio.from_thread.check_cancelled()
            chunk = body.read(min(CHUNK, length))
            if not chunk:
                raise IncompleteReadError(actual_bytes=offset, expected_bytes=offset + length)
            sink.write_at(offset, chunk)
            offset += len(chunk)
            length -= len(chunk)
            if report:
                report(len(chunk))


# -- the wire's small encodings ------------------------------------------------------------


def unquote_etag(etag: object) -> str:
    return str(etag or "").strip('"')


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")

"""S3Remote: the Remote protocol over boto3, each request in a worker thread.

`translate` is the one place where botocore's errors become fusesync errors. This module
never stores credentials (boto3's chain finds them) and never reads a large file whole.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

import boto3
import trio
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as TransportError

from fusesync.config import Settings
from fusesync.errors import (
    BucketNotFound,
    ConfigError,
    FusesyncError,
    IntegrityError,
    RemoteChanged,
    RemoteError,
    RemoteNotFound,
    SourceChanged,
)
from fusesync.remote.base import Attrs, Head, Listed, Progress, WritableFile
from fusesync.remote.signed import FastClient, fast_path_allowed, uses_path_style

MiB = 1 << 20
DEFAULT_REGION = "us-east-1"
MAX_PARTS = 10_000  # S3's limit per multipart upload
DELETE_BATCH = 1000  # S3's limit per DeleteObjects request
CHUNK = 1 * MiB  # bytes per read of a streamed body

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
}
_MISSING = {"NoSuchKey", "NoSuchUpload", "NotFound", "404"}
_ELSEWHERE = {"PermanentRedirect", "AuthorizationHeaderMalformed", "301"}
_T = TypeVar("_T")
Spawn = Callable[[Callable[[], Awaitable[object]]], None]


def translate(
    exc: Exception,
    *,
    op: str,
    bucket: str,
    endpoint: str,
    key: str | None,
    digest_sent: bool = False,
) -> FusesyncError:
    """One clear line for the user. `key` None means a bucket-level request, where 404 can
    only mean the bucket; `digest_sent` means a bad digest is the source file's doing."""
    what = f"'{key}'" if key is not None else f"bucket '{bucket}'"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "").rstrip(".")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        shown = f"HTTP {status}" if not code or code.isdigit() else code
        if code in ("PreconditionFailed", "412") or status == 412:
            return RemoteChanged(f"{what} changed on the remote since it was last seen")
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return BucketNotFound(f"bucket '{bucket}' does not exist at {endpoint}")
        if code in _MISSING or status == 404:
            return RemoteNotFound(f"{what} is not on the remote")
        if code in _DENIED or status == 403:
            return RemoteError(f"access denied by {endpoint}: check your credentials ({shown})")
        if code in _ELSEWHERE or status == 301:
            return RemoteError(
                f"bucket '{bucket}' is in another region: give 'fusesync setup' --region"
            )
        if code == "BucketAlreadyExists":
            return RemoteError(f"bucket '{bucket}' belongs to another account: choose another")
        if digest_sent and code in ("BadDigest", "InvalidDigest"):
            return SourceChanged(f"the file for {what} changed since it was hashed")
        return RemoteError(_one_line(f"{endpoint} refused {op} of {what}: {shown} {message}"))
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return RemoteError(
            "no S3 credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "a profile, or an instance role"
        )
    if isinstance(exc, ProfileNotFound):
        return ConfigError(f"no AWS profile named '{exc.kwargs.get('profile')}'")
    if isinstance(exc, TransportError | HTTPClientError | IncompleteReadError):
        return RemoteError(_one_line(f"cannot reach {endpoint}: {exc}"))
    return RemoteError(_one_line(f"{op} of {what} at {endpoint} failed: {exc}"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


class S3Remote:
    """A bucket on AWS S3 or any S3-compatible store (SeaweedFS, MinIO, Ceph RGW).

    Each request blocks a worker thread; at most `max_concurrency` run at once, and a
    thread holds at most one pooled connection, so the pool never runs dry.
    """

    multipart_threshold = 16 * MiB  # larger files go up in parts
    part_size = 8 * MiB  # per uploaded part and per ranged GET (S3: at least 5 MiB)
    transfer_concurrency = 4  # parts or ranges of one file in flight at once
    list_page_size = 1000

    def __init__(self, settings: Settings, *, max_concurrency: int = 16) -> None:
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint_url or "S3"
        try:
            session = boto3.session.Session(profile_name=settings.profile)
            self.region: str = settings.region or session.region_name or DEFAULT_REGION
            style = {"addressing_style": settings.addressing_style}
            config = Config(
                region_name=self.region,
                s3=style if settings.addressing_style else None,
                max_pool_connections=max_concurrency,
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=5,
                read_timeout=60,
                # Content-MD5 guards our bodies; the newer default CRC trailers are refused
                # by several S3-compatible stores.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            self._client: Any = session.client(
                "s3", endpoint_url=settings.endpoint_url, config=config
            )
        except BotoCoreError as exc:
            raise self._translate(exc, "open", None) from exc
        self.endpoint = settings.endpoint_url or str(self._client.meta.endpoint_url)
        credentials = session.get_credentials()
        if credentials is not None and fast_path_allowed(str(self._client.meta.endpoint_url)):
            path_style = uses_path_style(
                str(self._client.meta.endpoint_url), settings.addressing_style, self.bucket
            )
            self._client = FastClient(
                self._client, credentials, self.region, path_style, max_concurrency
            )
        self._limiter = trio.CapacityLimiter(max_concurrency)
        # Parts of multipart uploads held in memory, across all uploads at once.
        self._part_buffers = trio.Semaphore(max_concurrency)

    # -- plumbing ------------------------------------------------------------------------

    def _translate(
        self, exc: Exception, op: str, key: str | None, digest_sent: bool = False
    ) -> FusesyncError:
        return translate(
            exc, op=op, bucket=self.bucket, endpoint=self.endpoint, key=key, digest_sent=digest_sent
        )

    async def _call(
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
                functools.partial(fn, **kwargs), limiter=self._limiter
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, op, key, digest_sent) from exc

    async def _s3(self, method: str, key: str | None = None, **kwargs: Any) -> Any:
        """One boto3 request (blocking, in a worker thread): Bucket, and Key unless None."""
        if key is not None:
            kwargs["Key"] = key
        fn = getattr(self._client, method)
        return await self._call(method, key, functools.partial(fn, Bucket=self.bucket, **kwargs))

    def _object_args(
        self,
        attrs: Attrs | None,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {}
        md = {**(metadata or {}), **(attrs.to_metadata() if attrs else {})}
        if md:
            args["Metadata"] = md
        if content_type:
            args["ContentType"] = content_type
        return args

    # -- the bucket ----------------------------------------------------------------------

    async def bucket_exists(self) -> bool:
        try:
            await self._s3("head_bucket")
        except BucketNotFound:
            return False
        return True

    async def create_bucket(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != DEFAULT_REGION:
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}

        def create() -> None:
            try:
                self._client.create_bucket(**args)
            except ClientError as exc:  # already ours is what we wanted, not an error
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

        await self._call("create_bucket", None, create)

    # -- reading -------------------------------------------------------------------------

    async def list(self, prefix: str) -> AsyncIterator[Listed]:
        """ListObjectsV2, one blocking request per page of `list_page_size` keys."""
        args: dict[str, Any] = {"Prefix": prefix, "MaxKeys": self.list_page_size}
        while True:
            page = await self._s3("list_objects_v2", **args)
            for obj in page.get("Contents", ()):
                yield Listed(
                    str(obj["Key"]),
                    _unquote(obj.get("ETag")),
                    int(obj["Size"]),
                    _epoch(obj.get("LastModified")),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return
            if not token:
                raise RemoteError(f"{self.endpoint} cut the listing of '{prefix}' short")
            args["ContinuationToken"] = token

    async def head(self, key: str) -> Head | None:
        """HEAD (blocking, in a worker thread); None when the object does not exist."""
        try:
            resp = await self._s3("head_object", key)
        except RemoteNotFound:
            return None
        return _head(key, resp)

    async def get_bytes(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[bytes, str] | None:
        """GET a small object whole, in one worker thread; None when it does not exist."""
        args = {"IfMatch": _quote(if_match)} if if_match else {}

        def fetch() -> tuple[bytes, str]:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, **args)
            with contextlib.closing(resp["Body"]) as body:
                return bytes(body.read()), _unquote(resp.get("ETag"))

        try:
            return await self._call("get_object", key, fetch)
        except RemoteNotFound:
            return None

    async def download_file(
        self,
        key: str,
        dest: WritableFile,
        *,
        if_match: str | None = None,
        progress: Progress | None = None,
    ) -> Head:
        """Stream the object into `dest` from worker threads (one GET, then, for a large
        object, ranged GETs in parallel pinned to the first GET's etag)."""
        sink = _Sink(dest)
        heads: builtins.list[Head] = []
        ranges = trio.CapacityLimiter(self.transfer_concurrency)
        step = self.part_size

        async def get_range(start: int, end: int, etag: str) -> None:
            def fetch() -> None:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=key, IfMatch=_quote(etag), Range=f"bytes={start}-{end}"
                )
                if not str(resp.get("ContentRange", "")).startswith(f"bytes {start}-{end}/"):
                    resp["Body"].close()
                    raise IntegrityError(f"{self.endpoint} ignored the range asked of '{key}'")
                _copy(resp["Body"], sink, start, end + 1 - start, progress)

            async with ranges:
                await self._call("get_object", key, fetch)

        def got_head(spawn: Spawn, head: Head) -> None:
            heads.append(head)
            for start in range(step, head.size, step):
                end = min(start + step, head.size) - 1
                spawn(functools.partial(get_range, start, end, head.etag))

        async with _task_group() as spawn:

            def first() -> None:
                args = {"IfMatch": _quote(if_match)} if if_match else {}
                resp = self._client.get_object(Bucket=self.bucket, Key=key, **args)
                head = _head(key, resp)
                trio.from_thread.run_sync(got_head, spawn, head)
                # Only the first range comes from this stream; closing it early drops one
                # connection, which is cheaper than a HEAD for every small file.
                _copy(resp["Body"], sink, 0, min(head.size, step), progress)

            spawn(functools.partial(self._call, "get_object", key, first))
        await trio.to_thread.run_sync(sink.finish, heads[0].size)
        return heads[0]

    # -- writing -------------------------------------------------------------------------

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
        """One PUT with Content-MD5, blocking a worker thread; returns the etag."""
        args = self._object_args(attrs, content_type, metadata)
        args.update(_conditions(if_match, if_none_match))
        resp = await self._s3(
            "put_object", key, Body=data, ContentMD5=_b64(hashlib.md5(data).digest()), **args
        )
        return _unquote(resp.get("ETag"))

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
        """One PUT up to `multipart_threshold`, else a multipart upload whose completion
        carries the conditions. Blocking reads and requests run in worker threads."""
        args = self._object_args(attrs, content_type, metadata)
        conditions = _conditions(if_match, if_none_match)
        if size > self.multipart_threshold:
            return await self._multipart(key, path, size, md5, args, conditions, progress)

        def put() -> Any:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != size:
                    raise SourceChanged(f"'{os.fspath(path)}' changed since it was hashed")
                digest = {"ContentMD5": _b64(bytes.fromhex(md5))} if md5 else {}
                return self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=f, **args, **conditions, **digest
                )

        resp = await self._call("put_object", key, put, digest_sent=md5 is not None)
        if progress:
            progress(size)
        return _unquote(resp.get("ETag"))

    async def _multipart(
        self,
        key: str,
        path: os.PathLike[str] | str,
        size: int,
        md5: str | None,
        args: dict[str, Any],
        conditions: dict[str, Any],
        progress: Progress | None,
    ) -> str:
        """Parts read in order (hashing as they go, so a file that changed is caught before
        completion) and sent in parallel; the upload is aborted unless it completes."""
        step = max(self.part_size, -(-size // MAX_PARTS))
        upload_id = (await self._s3("create_multipart_upload", key, **args))["UploadId"]
        etags: dict[int, str] = {}
        completed = False
        try:
            send, receive = trio.open_memory_channel[tuple[int, bytes, str]](0)

            async def produce() -> None:
                async with send:
                    await _read_parts(path, size, md5, step, send, self._part_buffers)

            async def consume(parts: trio.MemoryReceiveChannel[tuple[int, bytes, str]]) -> None:
                async with parts:
                    async for number, data, digest in parts:
                        try:
                            resp = await self._s3(
                                "upload_part",
                                key,
                                UploadId=upload_id,
                                PartNumber=number,
                                Body=data,
                                ContentMD5=digest,
                            )
                        finally:
                            self._part_buffers.release()
                        etags[number] = str(resp["ETag"])
                        if progress:
                            progress(len(data))

            async with _task_group() as spawn:
                spawn(produce)
                async with receive:
                    for _ in range(self.transfer_concurrency):
                        spawn(functools.partial(consume, receive.clone()))
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            resp = await self._s3(
                "complete_multipart_upload",
                key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **conditions,
            )
            completed = True
            return _unquote(resp.get("ETag"))
        finally:
            if not completed:
                await self._abort(key, upload_id)

    async def _abort(self, key: str, upload_id: str) -> bool:
        """Abort one multipart upload, even while being cancelled; False if it was gone."""
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            try:
                await self._s3("abort_multipart_upload", key, UploadId=upload_id)
                return True
            except RemoteNotFound:
                return False
            except FusesyncError:
                return False  # the next run's abort_multipart_uploads tries again
        return False

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """DELETE (blocking, in a worker thread). Gone already is fine, whatever `if_match`
        says; another version still there is RemoteChanged."""
        try:
            await self._s3("delete_object", key, **_conditions(if_match, False))
        except RemoteNotFound:
            return
        except RemoteChanged:
            # Some stores answer 412 for a conditional delete of a missing key.
            if await self.head(key) is not None:
                raise

    async def delete_many(self, keys: Sequence[str]) -> None:
        """DeleteObjects, 1000 keys per blocking request; a missing key is fine."""
        failed: builtins.list[str] = []

        async def batch(chunk: Sequence[str]) -> None:
            objects = [{"Key": k} for k in chunk]
            resp = await self._s3("delete_objects", Delete={"Objects": objects, "Quiet": True})
            for error in resp.get("Errors", ()):
                if error.get("Code") != "NoSuchKey":
                    failed.append(f"'{error.get('Key')}' ({error.get('Code')})")

        async with _task_group() as spawn:
            for start in range(0, len(keys), DELETE_BATCH):
                spawn(functools.partial(batch, keys[start : start + DELETE_BATCH]))
        if failed:
            more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
            raise RemoteError(f"{self.endpoint} did not delete {failed[0]}{more}")

    async def abort_multipart_uploads(self, prefix: str, *, older_than: float = 0.0) -> int:
        """Abort unfinished multipart uploads under `prefix` started over `older_than`
        seconds ago (another cluster may be uploading right now); returns how many."""
        args: dict[str, Any] = {"Prefix": prefix}
        cutoff = time.time() - older_than
        aborted = 0
        while True:
            page = await self._s3("list_multipart_uploads", **args)
            for upload in page.get("Uploads", ()):
                if older_than and _epoch(upload.get("Initiated")) > cutoff:
                    continue
                aborted += await self._abort(upload["Key"], upload["UploadId"])
            if not page.get("IsTruncated"):
                return aborted
            args["KeyMarker"] = page.get("NextKeyMarker")
            args["UploadIdMarker"] = page.get("NextUploadIdMarker")

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close)


# -- helpers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _task_group() -> AsyncIterator[Spawn]:
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
        return data, _b64(hashlib.md5(data).digest())

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


def _copy(body: Any, sink: _Sink, offset: int, length: int, progress: Progress | None) -> None:
    """Copy `length` bytes of a streamed body to `sink` at `offset`; runs in a worker thread
    started by trio, and stops there when its task is cancelled."""
    with contextlib.closing(body):
        while length > 0:
            trio.from_thread.check_cancelled()
            chunk = body.read(min(CHUNK, length))
            if not chunk:
                raise IncompleteReadError(actual_bytes=offset, expected_bytes=offset + length)
            sink.write_at(offset, chunk)
            offset += len(chunk)
            length -= len(chunk)
            if progress:
                trio.from_thread.run_sync(progress, len(chunk))


def _head(key: str, resp: Mapping[str, Any]) -> Head:
    metadata = {str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()}
    content_type = resp.get("ContentType")
    return Head(
        key=key,
        etag=_unquote(resp.get("ETag")),
        size=int(resp.get("ContentLength", 0)),
        last_modified=_epoch(resp.get("LastModified")),
        attrs=Attrs.from_metadata(metadata),
        content_type=str(content_type) if content_type else None,
        metadata=metadata,
    )


def _conditions(if_match: str | None, if_none_match: bool) -> dict[str, Any]:
    if if_match is not None and if_none_match:
        raise ValueError("if_match and if_none_match exclude each other")
    if if_match is not None:
        return {"IfMatch": _quote(if_match)}
    return {"IfNoneMatch": "*"} if if_none_match else {}


def _quote(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _unquote(etag: object) -> str:
    return str(etag or "").strip('"')


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _epoch(value: object) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0

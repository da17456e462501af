"""S3Remote: the Remote protocol over boto3, each request in a worker thread.

`translate` is the one place where botocore's errors become fusesync errors. This module
never stores credentials (boto3's chain finds them, or the environment gives them) and
never reads a large file whole. boto3 (~0.25 s to import and build) is loaded only when a
call needs more than the light path of `signed.py`.
"""

from __future__ import annotations

import builtins
import contextlib
import email.utils
import functools
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import trio
from awscrt import auth as crt_auth
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)
from botocore.exceptions import ConnectionError as TransportError

from fusesync.config import Settings
from fusesync.errors import (
    BucketNotFound,
    ConfigError,
    FusesyncError,
    RemoteChanged,
    RemoteError,
    RemoteNotFound,
    RemoteUnchanged,
    SourceChanged,
)
from fusesync.remote.base import Attrs, Head, Listed, Progress, WritableFile, asked_nothing
from fusesync.remote.crt import CrtClient, Reply
from fusesync.remote.shapes import (
    LIST_PAGE,
    ListPage,
    conditions,
    headers_of,
    list_page,
    list_query,
    object_shape,
    quote_etag,
)
from fusesync.remote.signed import (
    FastClient,
    endpoint_of,
    env_credentials,
    fast_path_allowed,
    uses_path_style,
)
from fusesync.remote.transfer import (
    Link,
    abort_upload,
    b64,
    download,
    multipart_upload,
    task_group,
    unquote_etag,
)

MiB = 1 << 20
DEFAULT_REGION = "us-east-1"
DELETE_BATCH = 1000  # S3's limit per DeleteObjects request

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
        if code in ("NotModified", "304") or status == 304:
            return RemoteUnchanged(f"{what} is still the version last seen")
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return BucketNotFound(f"bucket '{bucket}' does not exist at {endpoint}")
        if code in _MISSING or status == 404:
            return RemoteNotFound(f"{what} is not on the remote")
        off = _clock_off(exc.response) if status == 403 else None
        if code == "RequestTimeTooSkewed" or off is not None:  # (no credentials to check)
            by = f"{off:+.0f} minutes" if off is not None else "more than 15 minutes"
            return RemoteError(
                f"{endpoint} refused the request: this machine's clock is {by} off the "
                f"server's ({shown}): set the clock (chrony, ntpd) and try again"
            )
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
    if isinstance(exc, SSLError):  # (a TransportError too)
        why = str(exc.kwargs.get("error") or exc)
        hint = ("; if it is a server of your own, name the authority that signed its "
                "certificate in AWS_CA_BUNDLE") if "certificate" in why else ""
        return RemoteError(_one_line(f"cannot reach {endpoint} securely: {why}{hint}"))
    if isinstance(exc, TransportError | HTTPClientError | IncompleteReadError):
        return RemoteError(_one_line(f"cannot reach {endpoint}: {exc}"))
    return RemoteError(_one_line(f"{op} of {what} at {endpoint} failed: {exc}"))


SKEW_ALLOWED = 15 * 60
"""Seconds S3 lets a request's signing time differ from its own clock."""


def _clock_off(response: Mapping[str, Any]) -> float | None:
    """Minutes this machine's clock is ahead of the server's (behind: negative) when more
    than S3 allows, from the answer's Date header; None otherwise or without one. A
    refused HEAD has no body to name RequestTimeTooSkewed: this tells it from bad keys."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    date = headers.get("date") or headers.get("Date")
    if not date:
        return None
    try:
        server = email.utils.parsedate_to_datetime(str(date)).timestamp()
    except (TypeError, ValueError):
        return None
    off = _now() - server
    return off / 60 if abs(off) > SKEW_ALLOWED else None


def _now() -> float:
    return time.time()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class S3Remote:
    """A bucket on AWS S3 or any S3-compatible store (SeaweedFS, MinIO, Ceph RGW).

    Each request blocks a worker thread; at most `max_concurrency` run at once, and a
    thread holds at most one pooled connection, so the pool never runs dry.
    """

    multipart_threshold = 16 * MiB  # larger files go up in parts
    crt_put_limit = 64 * MiB
    """Up to this size, a file whose MD5 is known goes in one PUT the CRT reads from disk:
    no byte passes through Python, and the store checks the body against the scan's MD5.
    A multipart upload hashes every part, and the whole file again to catch a change: the
    bench's push of everything (three files of 64 MiB among 5,000 small) took 2.3 s of
    CPU in parts, 1.55 s so. The CRT holds such a body in memory whole, so it takes its
    size in part buffers (a 64 MiB body: 8 of the 32)."""
    part_size = 8 * MiB  # per uploaded part and per ranged GET (S3: at least 5 MiB)
    part_buffers = 32
    """Parts of multipart uploads held in memory across all uploads at once, with the
    bodies of larger single PUTs counted in parts: 256 MiB at most, however many requests
    are in flight."""
    transfer_concurrency = 4  # parts or ranges of one file in flight at once
    list_page_size = LIST_PAGE

    def __init__(self, settings: Settings, *, max_concurrency: int = 16,
                 crt: CrtClient | None = None) -> None:
        """`crt`: the light path's client, built already (sync/head_start.py), taken if
        it serves the endpoint, region and addressing resolved here; else one is built
        when the path is open."""
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint_url or "S3"
        self._settings = settings
        self._max_concurrency = max_concurrency
        self._session: Any = None
        # As boto3 resolves it, without loading boto3 when the settings or environment say.
        self.region: str = (
            settings.region
            or os.environ.get("AWS_DEFAULT_REGION")
            or self._boto3_session().region_name
            or DEFAULT_REGION
        )
        url = endpoint_of(settings.endpoint_url, self.region)
        self.endpoint = url
        self._client: Any
        # Single-object requests go through the CRT, awaited without a worker thread;
        # listings and multipart transfers through `FastClient` or boto3 in threads.
        self._crt: CrtClient | None = None
        credentials = self._light_credentials()
        if credentials is not None and fast_path_allowed(url):
            path_style = uses_path_style(url, settings.addressing_style, self.bucket)
            self._client = FastClient(
                self._boto3_client, url, credentials, self.region, path_style, max_concurrency
            )
            if crt is None or crt.serves != (url, self.region, path_style):
                crt = CrtClient(url, credentials, self.region, path_style, max_concurrency)
            self._crt = crt
        else:
            self._client = self._boto3_client()
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._part_buffers = trio.Semaphore(self.part_buffers)
        self._buffers_gathered = trio.Lock()

    def _boto3_session(self) -> Any:
        if self._session is None:
            import boto3

            try:
                self._session = boto3.session.Session(profile_name=self._settings.profile)
            except BotoCoreError as exc:
                raise self._translate(exc, "open", None) from exc
        return self._session

    def _boto3_client(self) -> Any:
        """boto3's client for every call the light path does not answer (blocks)."""
        from botocore.config import Config

        settings = self._settings
        style = {"addressing_style": settings.addressing_style}
        config = Config(
            region_name=self.region,
            s3=style if settings.addressing_style else None,
            max_pool_connections=self._max_concurrency,
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=60,
            # Content-MD5 guards our bodies; the newer default CRC trailers are refused
            # by several S3-compatible stores.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            return self._boto3_session().client(
                "s3", endpoint_url=settings.endpoint_url, config=config
            )
        except BotoCoreError as exc:
            raise self._translate(exc, "open", None) from exc

    def _light_credentials(self) -> crt_auth.AwsCredentialsProvider | None:
        """The light path's credentials: the environment's keys when no profile is named
        (boto3 would take them first too), else whatever boto3's chain finds, refreshed as
        boto3 refreshes them. None when there are none (boto3's client will say so)."""
        from_env = env_credentials(self._settings.profile)
        if from_env is not None:
            return from_env
        try:
            found = self._boto3_session().get_credentials()
        except BotoCoreError as exc:
            raise self._translate(exc, "open", None) from exc
        if found is None:
            return None

        def current() -> crt_auth.AwsCredentials:
            frozen = found.get_frozen_credentials()
            return crt_auth.AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)

        return crt_auth.AwsCredentialsProvider.new_delegate(current)

    def prepare(self) -> None:
        """Load and build now whatever a request could load later: boto3's client and the
        light path's HTTP pool (blocks; reads files). The mount daemon calls this before
        it mounts, since its own mount may cover where Python finds those files."""
        if isinstance(self._client, FastClient):
            self._client.prepare()
            self._client.pool()

    # -- plumbing ------------------------------------------------------------------------

    @property
    def _link(self) -> Link:
        """What the transfer module needs of this remote, read afresh at each request."""
        return Link(self._client, self.bucket, self.endpoint, self._limiter, self._translate)

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
        return await self._link.call(op, key, fn, digest_sent=digest_sent, **kwargs)

    async def _send(
        self,
        crt: CrtClient,
        method: str,
        key: str | None,
        operation: str,
        *,
        digest_sent: bool = False,
        **kwargs: Any,
    ) -> Reply:
        """One request through the CRT under the limiter, its errors translated; `key`
        None for a request on the bucket itself."""
        limiter = self._limiter
        try:  # a free slot is taken without a trip through the scheduler: `send` waits
            limiter.acquire_nowait()  # for its answer, which is this call's checkpoint
        except trio.WouldBlock:
            await limiter.acquire()
        try:
            return await crt.send(method, self.bucket, key or "", operation, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, operation, key, digest_sent) from exc
        finally:
            limiter.release()

    async def _s3(self, method: str, key: str | None = None, **kwargs: Any) -> Any:
        """One boto3 request (blocking, in a worker thread): Bucket, and Key unless None."""
        return await self._link.request(method, key, **kwargs)

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
            if self._crt is not None:
                await self._send(self._crt, "HEAD", None, "HeadBucket")
            else:
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

    async def list(self, prefix: str, start_after: str | None = None) -> AsyncIterator[Listed]:
        """ListObjectsV2, one blocking request per page of `list_page_size` keys."""
        args: dict[str, Any] = {"Prefix": prefix, "MaxKeys": self.list_page_size}
        if start_after is not None:
            args["StartAfter"] = start_after
        while True:
            if self._crt is not None:
                query = list_query(prefix, self.list_page_size, args.get("ContinuationToken"),
                                   start_after)
                reply = await self._send(self._crt, "GET", None, "ListObjectsV2", query=query)
                page = list_page(reply.body)
            else:
                shape = await self._s3("list_objects_v2", **args)
                page = ListPage(
                    [Listed(str(obj["Key"]), unquote_etag(obj.get("ETag")), int(obj["Size"]),
                            _epoch(obj.get("LastModified"))) for obj in shape.get("Contents", ())],
                    bool(shape.get("IsTruncated")), shape.get("NextContinuationToken"),
                )
            for listed in page.objects:
                yield listed
            token = page.token
            if not page.truncated:
                return
            if not token:
                raise RemoteError(f"{self.endpoint} cut the listing of '{prefix}' short")
            args["ContinuationToken"] = token

    async def head(self, key: str) -> Head | None:
        """HEAD; None when the object does not exist."""
        try:
            if self._crt is not None:
                reply = await self._send(self._crt, "HEAD", key, "HeadObject")
                return _head(key, object_shape(reply.headers))
            resp = await self._s3("head_object", key)
        except RemoteNotFound:
            return None
        return _head(key, resp)

    async def get_bytes(
        self, key: str, *, if_match: str | None = None, if_none_match: str | None = None
    ) -> tuple[bytes, str] | None:
        """GET a small object whole; None when it does not exist."""
        if self._crt is not None:
            try:
                reply = await self._send(self._crt, "GET", key, "GetObject",
                                         headers=conditions(if_match, if_none_match))
            except RemoteNotFound:
                return None
            return reply.body, unquote_etag(reply.headers.get("etag"))
        args = {"IfMatch": quote_etag(if_match)} if if_match else {}
        if if_none_match:
            args["IfNoneMatch"] = quote_etag(if_none_match)

        def fetch() -> tuple[bytes, str]:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, **args)
            with contextlib.closing(resp["Body"]) as body:
                return bytes(body.read()), unquote_etag(resp.get("ETag"))

        try:
            return await self._call("get_object", key, fetch)
        except RemoteNotFound:
            return None

    def get_bytes_soon(self, key: str, *, if_match: str | None = None) -> Callable[[], None]:
        """On the light path, the request leaves now on the CRT's threads (`send_early`)."""
        crt = self._crt
        if crt is None:
            return asked_nothing
        headers = conditions(if_match, None)
        crt.send_early("GET", self.bucket, key, "GetObject", headers=headers)
        return functools.partial(crt.drop_early, "GET", self.bucket, key, headers=headers)

    async def download_file(
        self,
        key: str,
        dest: WritableFile,
        *,
        if_match: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Head:
        """Stream the object into `dest` from worker threads: ranged GETs in parallel,
        pinned to `if_match` (all at once when `size` is known) or else to the etag of a
        first GET."""
        return await download(
            self._link,
            key,
            dest,
            if_match=if_match,
            size=size,
            part_size=self.part_size,
            concurrency=self.transfer_concurrency,
            progress=progress,
            head_of=_head,
        )

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
        """One PUT with Content-MD5; returns the etag."""
        args = self._object_args(attrs, content_type, metadata)
        args.update(_conditions(if_match, if_none_match))
        if self._crt is not None:
            args["ContentMD5"] = b64(hashlib.md5(data).digest())
            reply = await self._send(
                self._crt, "PUT", key, "PutObject", headers=headers_of(args), body=data
            )
            return unquote_etag(reply.headers.get("etag"))
        resp = await self._s3(
            "put_object", key, Body=data, ContentMD5=b64(hashlib.md5(data).digest()), **args
        )
        return unquote_etag(resp.get("ETag"))

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
        if self._crt is not None and md5 is not None and size <= self.crt_put_limit:
            return await self._put_file(self._crt, key, path, size, md5, {**args, **conditions},
                                        progress)
        if size > self.multipart_threshold:
            return await multipart_upload(
                self._link,
                key,
                path,
                size=size,
                md5=md5,
                args=args,
                conditions=conditions,
                part_size=self.part_size,
                concurrency=self.transfer_concurrency,
                buffers=self._part_buffers,
                progress=progress,
            )

        def put() -> Any:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != size:
                    raise SourceChanged(f"'{os.fspath(path)}' changed since it was hashed")
                digest = {"ContentMD5": b64(bytes.fromhex(md5))} if md5 else {}
                return self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=f, **args, **conditions, **digest
                )

        resp = await self._call("put_object", key, put, digest_sent=md5 is not None)
        if progress:
            progress(size)
        return unquote_etag(resp.get("ETag"))

    async def _put_file(self, crt: CrtClient, key: str, path: os.PathLike[str] | str,
                        size: int, md5: str, args: dict[str, Any],
                        progress: Progress | None) -> str:
        """One PUT whose body the CRT reads from the file. The MD5 the file was hashed to
        goes with it, so a file changed since then is refused by the store, not stored."""
        headers = headers_of({**args, "ContentMD5": b64(bytes.fromhex(md5))})
        headers["Content-Length"] = str(size)
        told = 0

        def sent(n: int) -> None:  # a body sent again after a failure is not counted twice
            nonlocal told
            n = min(n, size - told)
            if n > 0 and progress:
                told += n
                progress(n)

        async with self._buffers_for(size):
            reply = await self._send(crt, "PUT", key, "PutObject", digest_sent=True,
                                     headers=headers, send_path=os.fspath(path), sent=sent)
        sent(size)
        return unquote_etag(reply.headers.get("etag"))

    @contextlib.asynccontextmanager
    async def _buffers_for(self, size: int) -> AsyncIterator[None]:
        """Hold the part buffers a body of `size` bytes fills (all of them at most). One
        task gathers at a time: two half-way never wait on each other."""
        wanted = min(size // self.part_size, self.part_buffers)
        held = 0
        try:
            if wanted:
                async with self._buffers_gathered:
                    while held < wanted:
                        await self._part_buffers.acquire()
                        held += 1
            yield
        finally:
            for _ in range(held):
                self._part_buffers.release()

    async def _abort(self, key: str, upload_id: str) -> bool:
        """Abort one multipart upload, even while being cancelled; False if it was gone."""
        return await abort_upload(self._link, key, upload_id)

    async def copy(self, source: str, key: str, *, if_match: str | None = None) -> str:
        """CopyObject, metadata and content type kept."""
        args: dict[str, Any] = {"CopySource": {"Bucket": self.bucket, "Key": source},
                                "MetadataDirective": "COPY"}
        if if_match is not None:
            args["CopySourceIfMatch"] = quote_etag(if_match)
        resp = await self._s3("copy_object", key, **args)
        return unquote_etag(resp.get("CopyObjectResult", {}).get("ETag"))

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """DELETE. Gone already is fine, whatever `if_match` says; another version still
        there is RemoteChanged."""
        conditions = _conditions(if_match, False)
        try:
            if self._crt is not None:
                await self._send(self._crt, "DELETE", key, "DeleteObject",
                                 headers=headers_of(conditions))
            else:
                await self._s3("delete_object", key, **conditions)
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

        async with task_group() as spawn:
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


def _head(key: str, resp: Mapping[str, Any]) -> Head:
    metadata = {str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()}
    content_type = resp.get("ContentType")
    return Head(
        key=key,
        etag=unquote_etag(resp.get("ETag")),
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
        return {"IfMatch": quote_etag(if_match)}
    return {"IfNoneMatch": "*"} if if_none_match else {}


def _epoch(value: object) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0

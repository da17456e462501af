"""A light path for single-object requests: the AWS CRT's SigV4 signer over one urllib3 pool.

boto3 spends about 1.3 ms of CPU per request on this machine building and parsing it;
signing the same request with the CRT's signer (C) and sending it through a pooled
connection costs about a third of that, and a sync moves thousands of small objects. A
body that carries its Content-MD5 (or travels over TLS) is signed as UNSIGNED-PAYLOAD, as
boto3 does over TLS: the store then checks the MD5 and skips a SHA-256 of its own, which
cost SeaweedFS a quarter of its CPU on a push of small files.
`FastClient` answers put/head/get/delete of one object and listings in boto3's own shapes
(`shapes.py`) and raises boto3's own exceptions, so callers and the one error translator
see no difference; any other call goes to boto3. urllib3 is loaded with the first request
that comes here: most runs send everything through the CRT. Blocking: call from worker
threads.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from awscrt import auth as crt_auth
from awscrt import http as crt_http
from awscrt.exceptions import AwsCrtError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from fusesync.remote.shapes import (
    error_response,
    headers_of,
    object_shape,
)

if TYPE_CHECKING:
    import urllib3

_RETRY_STATUS = {500, 502, 503, 504}
_ATTEMPTS = 4  # as boto3 is configured (standard mode, 4 attempts)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def fast_path_allowed(endpoint_url: str) -> bool:
    """Setups without a proxy (which boto3 would honour and this path not), unless
    FUSESYNC_FAST_PATH=0 turns it off."""
    if os.environ.get("FUSESYNC_FAST_PATH", "1") == "0":
        return False
    proxies = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    return not any(os.environ.get(name) for name in proxies) and endpoint_url.startswith(
        ("http://", "https://")
    )


def endpoint_of(endpoint_url: str | None, region: str) -> str:
    """The endpoint a bucket is reached at: the one configured, else AWS's for `region`."""
    return endpoint_url or f"https://s3.{region}.amazonaws.com"


def env_credentials(profile: str | None) -> crt_auth.AwsCredentialsProvider | None:
    """The environment's keys, when no profile is named (boto3 would take them first
    too); None otherwise, for boto3's chain to find."""
    env = os.environ
    if profile or not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        return None
    return crt_auth.AwsCredentialsProvider.new_static(
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None,
    )


def uses_path_style(endpoint_url: str, addressing_style: str | None, bucket: str) -> bool:
    """As botocore decides: asked for, or forced by an IP address, localhost or a bucket
    name that cannot be a host name."""
    if addressing_style:
        return addressing_style == "path"
    host = urllib.parse.urlsplit(endpoint_url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host == "localhost" or "." in bucket or bucket.lower() != bucket


class _Body:
    """A response body with the read/close that boto3's StreamingBody offers."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def read(self, amount: int | None = None) -> bytes:
        return self._response.read(amount)

    def close(self) -> None:
        self._response.release_conn()


class FastClient:
    """boto3's S3 client, with single-object calls sent the light way."""

    def __init__(self, make_client: Callable[[], Any], endpoint_url: str,
                 credentials: crt_auth.AwsCredentialsProvider, region: str, path_style: bool,
                 pool_size: int) -> None:
        self._make_client = make_client
        self._client: Any = None
        self._making = threading.Lock()
        self._signing = crt_auth.AwsSigningConfig(
            credentials_provider=credentials,
            region=region,
            service="s3",
            use_double_uri_encode=False,  # S3 signs the path as sent, encoded once
            should_normalize_uri_path=False,
            signed_body_header_type=crt_auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
        )
        endpoint = urllib.parse.urlsplit(endpoint_url)
        self._scheme_host = f"{endpoint.scheme}://{endpoint.netloc}"
        self._tls = endpoint.scheme == "https"
        self._path_style = path_style
        self._pool_size = pool_size
        self._pool: urllib3.PoolManager | None = None

    def __getattr__(self, name: str) -> Any:
        """Every other call goes to boto3's client, built the first time one is made."""
        return getattr(self.prepare(), name)

    def prepare(self) -> Any:
        """boto3's client, built now if it was not yet."""
        with self._making:  # worker threads may ask at once: build one client
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def pool(self) -> urllib3.PoolManager:
        """The HTTP pool, made (and urllib3 loaded) with the first request that needs it."""
        with self._making:
            if self._pool is None:
                import urllib3

                self._pool = urllib3.PoolManager(
                    maxsize=self._pool_size, block=True, retries=False,
                    timeout=urllib3.Timeout(connect=5, read=60),
                    ca_certs=os.environ.get("AWS_CA_BUNDLE") or None,  # as boto3 would
                )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
        if self._client is not None:
            self._client.close()

    # -- the calls answered here ---------------------------------------------------------

    def put_object(self, *, Bucket: str, Key: str, Body: Any, **kw: Any) -> dict[str, Any]:
        body = Body if isinstance(Body, bytes) else Body.read()
        headers = headers_of(kw)
        reply = self._send("PUT", Bucket, Key, "PutObject", body, headers)
        return {"ETag": reply.headers.get("ETag", "")}

    def head_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        reply = self._send("HEAD", Bucket, Key, "HeadObject", b"", headers_of(kw))
        return object_shape(reply.headers)

    def get_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        headers = headers_of(kw)
        reply = self._send("GET", Bucket, Key, "GetObject", b"", headers, stream=True)
        shape = object_shape(reply.headers)
        shape["Body"] = _Body(reply)
        if "Content-Range" in reply.headers:
            shape["ContentRange"] = reply.headers["Content-Range"]
        return shape

    def delete_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        self._send("DELETE", Bucket, Key, "DeleteObject", b"", headers_of(kw))
        return {}

    # -- plumbing ------------------------------------------------------------------------

    def _url(self, bucket: str, key: str, query: str) -> str:
        quoted = urllib.parse.quote(key, safe="/~")
        if self._path_style:
            url = f"{self._scheme_host}/{bucket}/{quoted}"
        else:
            scheme, host = self._scheme_host.split("://", 1)
            url = f"{scheme}://{bucket}.{host}/{quoted}"
        return f"{url}?{query}" if query else url

    def _send(self, method: str, bucket: str, key: str, operation: str, body: bytes,
              headers: dict[str, str], stream: bool = False, query: str = ""
              ) -> urllib3.BaseHTTPResponse:
        import urllib3

        url = self._url(bucket, key, query)
        pool = self.pool()
        for attempt in range(_ATTEMPTS):
            signed = self._sign(method, url, body, headers)
            try:
                reply = pool.request(
                    method, url, body=body or None, headers=signed,
                    preload_content=not stream, redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                if attempt + 1 < _ATTEMPTS:
                    _backoff(attempt)
                    continue
                raise EndpointConnectionError(endpoint_url=url, error=exc) from exc
            if reply.status < 300 or reply.status == 304:
                return reply
            data = reply.data  # an error body is small, streamed or not
            reply.release_conn()
            if reply.status in _RETRY_STATUS and attempt + 1 < _ATTEMPTS:
                _backoff(attempt)
                continue
            raise ClientError(error_response(reply.status, reply.headers, data, reply.reason),
                              operation)
        raise AssertionError("unreachable")

    def _sign(self, method: str, url: str, body: bytes, headers: dict[str, str]
              ) -> dict[str, str]:
        """`headers` plus Host, X-Amz-Date, X-Amz-Content-SHA256 and Authorization."""
        if not body:
            payload = _EMPTY_SHA256
        elif self._tls or "Content-MD5" in headers:
            payload = crt_auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD
        else:
            payload = hashlib.sha256(body).hexdigest()
        parts = urllib.parse.urlsplit(url)
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        request = crt_http.HttpRequest(
            method, target, crt_http.HttpHeaders([("Host", parts.netloc), *headers.items()])
        )
        try:
            crt_auth.aws_sign_request(
                request, self._signing.replace(signed_body_value=payload)
            ).result()
        except AwsCrtError as exc:
            if exc.name.startswith("AWS_AUTH_CREDENTIALS_PROVIDER"):
                raise NoCredentialsError() from exc
            raise
        return dict(request.headers)


def _backoff(attempt: int) -> None:
    """Full jitter, as boto3's standard retry mode: a store busy growing a volume (SeaweedFS
    answers InternalError then) needs seconds, not milliseconds."""
    time.sleep(random.uniform(0, min(20.0, 0.5 * 2**attempt)))



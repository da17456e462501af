"""A light path for single-object requests: the AWS CRT's SigV4 signer over one urllib3 pool.

boto3 spends about 1.3 ms of CPU per request on this machine building and parsing it;
signing the same request with the CRT's signer (C) and sending it through a pooled
connection costs about a third of that, and a sync moves thousands of small objects. A
body that carries its Content-MD5 (or travels over TLS) is signed as UNSIGNED-PAYLOAD, as
boto3 does over TLS: the store then checks the MD5 and skips a SHA-256 of its own, which
cost SeaweedFS a quarter of its CPU on a push of small files.
`FastClient` answers put/head/get/delete of one object in boto3's own shapes and raises
boto3's own exceptions, so callers and the one error translator see no difference; any
other call goes to boto3. Blocking: call from worker threads.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import os
import random
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import urllib3
from awscrt import auth as crt_auth
from awscrt import http as crt_http
from awscrt.exceptions import AwsCrtError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

_RETRY_STATUS = {500, 502, 503, 504}
_ATTEMPTS = 4  # as boto3 is configured (standard mode, 4 attempts)
_META = "x-amz-meta-"
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
        self._pool = urllib3.PoolManager(
            maxsize=pool_size, block=True, retries=False,
            timeout=urllib3.Timeout(connect=5, read=60),
            ca_certs=os.environ.get("AWS_CA_BUNDLE") or None,  # as boto3 would
        )

    def __getattr__(self, name: str) -> Any:
        """Every other call goes to boto3's client, built the first time one is made."""
        return getattr(self.prepare(), name)

    def prepare(self) -> Any:
        """boto3's client, built now if it was not yet."""
        with self._making:  # worker threads may ask at once: build one client
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def close(self) -> None:
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

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "", MaxKeys: int = 1000,
                        ContinuationToken: str | None = None) -> dict[str, Any]:
        """One page of ListObjectsV2; keys come url-encoded, so any byte survives XML."""
        query = {"list-type": "2", "encoding-type": "url", "prefix": Prefix,
                 "max-keys": str(MaxKeys)}
        if ContinuationToken:
            query["continuation-token"] = ContinuationToken
        encoded = urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)
        reply = self._send("GET", Bucket, "", "ListObjectsV2", b"", {}, query=encoded)
        return _list_shape(reply.data)

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
        url = self._url(bucket, key, query)
        for attempt in range(_ATTEMPTS):
            signed = self._sign(method, url, body, headers)
            try:
                reply = self._pool.request(
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


def headers_of(kw: Mapping[str, Any]) -> dict[str, str]:
    """boto3 keyword arguments of the calls answered here, as HTTP headers."""
    headers: dict[str, str] = {}
    for name, value in kw.items():
        if name == "Metadata":
            headers.update({_META + k: str(v) for k, v in value.items()})
        elif name == "ContentMD5":
            headers["Content-MD5"] = value
        elif name == "ContentType":
            headers["Content-Type"] = value
        elif name == "IfMatch":
            headers["If-Match"] = value
        elif name == "IfNoneMatch":
            headers["If-None-Match"] = value
        elif name == "Range":
            headers["Range"] = value
        else:
            raise TypeError(f"the light path does not send {name}")
    return headers


def object_shape(h: Mapping[str, str]) -> dict[str, Any]:
    """HEAD or GET answer headers in boto3's shape; `h` answers lower-case names (a
    case-insensitive mapping, or one whose names are lower case)."""
    modified = h.get("last-modified")
    return {
        "ETag": h.get("etag", ""),
        "ContentLength": int(h.get("content-length", 0)),
        "LastModified": email.utils.parsedate_to_datetime(modified) if modified
        else datetime.now(UTC),
        "ContentType": h.get("content-type"),
        "Metadata": {k[len(_META):].lower(): v for k, v in h.items()
                     if k.lower().startswith(_META)},
    }


_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _list_shape(data: bytes) -> dict[str, Any]:
    """A ListObjectsV2 answer in boto3's shape, keys decoded from their url encoding."""
    root = ET.fromstring(data)
    ns = _NS if root.tag.startswith(_NS) else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "") == "url"

    def key(text: str) -> str:
        return urllib.parse.unquote_plus(text) if encoded else text  # as botocore decodes

    contents = [
        {
            "Key": key(item.findtext(f"{ns}Key") or ""),
            "ETag": item.findtext(f"{ns}ETag") or "",
            "Size": int(item.findtext(f"{ns}Size") or 0),
            "LastModified": _iso(item.findtext(f"{ns}LastModified")),
        }
        for item in root.iter(f"{ns}Contents")
    ]
    shape: dict[str, Any] = {
        "Contents": contents,
        "IsTruncated": (root.findtext(f"{ns}IsTruncated") or "false") == "true",
    }
    token = root.findtext(f"{ns}NextContinuationToken")
    if token:
        shape["NextContinuationToken"] = token
    return shape


def _iso(text: str | None) -> datetime:
    return datetime.fromisoformat((text or "1970-01-01T00:00:00Z").replace("Z", "+00:00"))


def error_response(status: int, headers: Mapping[str, str], data: bytes, reason: str | None = None
                   ) -> dict[str, Any]:
    """An error answer in the shape botocore's ClientError carries."""
    code, message = str(status), reason or ""
    if data:
        try:
            root = ET.fromstring(data)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
        except ET.ParseError:
            pass
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)},
    }

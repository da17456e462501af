"""A light path for small-object requests: botocore's SigV4 signer over one urllib3 pool.

boto3 spends about 1.3 ms of CPU per request on this machine; signing the same request
with botocore's own signer and sending it through a pooled connection costs about a
third of that. Only plain single requests go this way; the rest stays with boto3.
Blocking: call from worker threads. It never retries a write by itself.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class SignedHTTP:
    def __init__(
        self,
        credentials: Callable[[], ReadOnlyCredentials],
        endpoint_url: str,
        region: str,
        bucket: str,
        path_style: bool,
        pool_size: int,
        timeout: urllib3.Timeout,
    ) -> None:
        self._credentials = credentials
        self._region = region
        url = urllib.parse.urlsplit(endpoint_url)
        if path_style:
            self._base = f"{url.scheme}://{url.netloc}/{bucket}/"
        else:
            self._base = f"{url.scheme}://{bucket}.{url.netloc}/"
        self._pool = urllib3.PoolManager(
            maxsize=pool_size,
            block=True,
            timeout=timeout,
            retries=urllib3.Retry(
                total=3,
                connect=3,
                read=0,
                status=0,
                redirect=0,
                backoff_factor=0.2,
                allowed_methods=None,
            ),
        )

    def url(self, key: str) -> str:
        return self._base + urllib.parse.quote(key, safe="/~")

    def request(
        self,
        method: str,
        key: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        preload: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """Send one signed request; the caller interprets the status."""
        url = self.url(key)
        request = AWSRequest(method, url, data=body, headers=dict(headers or {}))
        creds = self._credentials()
        S3SigV4Auth(creds, "s3", self._region).add_auth(request)
        return self._pool.request(
            method,
            url,
            body=body or None,
            headers=dict(request.headers.items()),
            preload_content=preload,
            redirect=False,
        )

    def close(self) -> None:
        self._pool.clear()

"""S3's answers and boto3's keyword arguments, translated both ways for the light path.

The light path (`signed.py` over urllib3, `crt.py` over the AWS CRT) answers in boto3's own
shapes and raises botocore's own `ClientError`, so the rest of the remote package, and the
one error translator, cannot tell which path carried a request.
"""

from __future__ import annotations

import email.utils
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

META = "x-amz-meta-"


def list_query(prefix: str, max_keys: int, token: str | None = None,
               start_after: str | None = None) -> str:
    """The query of one ListObjectsV2 page; keys come url-encoded, so any byte survives
    the XML."""
    query = {"list-type": "2", "encoding-type": "url", "prefix": prefix,
             "max-keys": str(max_keys)}
    if token:
        query["continuation-token"] = token
    if start_after is not None:
        query["start-after"] = start_after
    return urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)


def headers_of(kw: Mapping[str, Any]) -> dict[str, str]:
    """boto3 keyword arguments of the calls answered here, as HTTP headers."""
    headers: dict[str, str] = {}
    for name, value in kw.items():
        if name == "Metadata":
            headers.update({META + k: str(v) for k, v in value.items()})
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
        "Metadata": {k[len(META):].lower(): v for k, v in h.items()
                     if k.lower().startswith(META)},
    }


_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def list_shape(data: bytes) -> dict[str, Any]:
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

"""S3's answers and boto3's keyword arguments, translated both ways for the light path.

The light path (`signed.py` over urllib3, `crt.py` over the AWS CRT) answers in boto3's own
shapes and raises botocore's own `ClientError`, so the rest of the remote package, and the
one error translator, cannot tell which path carried a request.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fusesync.remote.base import Listed

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

META = "x-amz-meta-"


LIST_PAGE = 1000  # keys per page of a listing: S3's most


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


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def conditions(if_match: str | None = None, if_none_match: str | None = None
               ) -> dict[str, str]:
    """The headers of a GET (or HEAD) asked only if the object is, or is no longer, the
    version with this etag."""
    headers = {"If-Match": quote_etag(if_match)} if if_match else {}
    if if_none_match:
        headers["If-None-Match"] = quote_etag(if_none_match)
    return headers


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
        "LastModified": _http_date(modified) if modified else datetime.now(UTC),
        "ContentType": h.get("content-type"),
        "Metadata": {k[len(META):].lower(): v for k, v in h.items()
                     if k.lower().startswith(META)},
    }


def _http_date(text: str) -> datetime:
    import email.utils  # here, like xml.etree below: a push of one file parses neither

    return email.utils.parsedate_to_datetime(text)


def _xml(data: bytes) -> Element:
    from xml.etree.ElementTree import fromstring

    return fromstring(data)


_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of ListObjectsV2: its objects, and where the next page starts."""

    objects: list[Listed]
    truncated: bool
    token: str | None


def list_page(data: bytes) -> ListPage:
    """A ListObjectsV2 answer, keys decoded from their url encoding (as botocore does).
    One pass over each entry's fields: a pull reads thousands of them on every run."""
    root = _xml(data)
    ns = _NS if root.tag.startswith(_NS) else ""
    unquote = urllib.parse.unquote_plus if root.findtext(f"{ns}EncodingType") == "url" \
        else str
    slots = {f"{ns}Key": 0, f"{ns}ETag": 1, f"{ns}Size": 2, f"{ns}LastModified": 3}
    times: dict[str, float] = {}  # objects written together share their LastModified
    objects = []
    for item in root.iter(f"{ns}Contents"):
        fields: list[str | None] = [None, None, None, None]
        for child in item:
            slot = slots.get(child.tag)
            if slot is not None:
                fields[slot] = child.text
        key, etag, size, modified = fields
        modified = modified or _EPOCH
        when = times.get(modified)
        if when is None:
            when = times[modified] = datetime.fromisoformat(modified).timestamp()
        objects.append(Listed(unquote(key or ""), (etag or "").strip('"'), int(size or 0), when))
    token = root.findtext(f"{ns}NextContinuationToken") or None
    return ListPage(objects, root.findtext(f"{ns}IsTruncated") == "true", token)


_EPOCH = "1970-01-01T00:00:00Z"


def error_response(status: int, headers: Mapping[str, str], data: bytes, reason: str | None = None
                   ) -> dict[str, Any]:
    """An error answer in the shape botocore's ClientError carries."""
    code, message = str(status), reason or ""
    if data:
        from xml.etree.ElementTree import ParseError

        try:
            root = _xml(data)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
        except ParseError:
            pass
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)},
    }

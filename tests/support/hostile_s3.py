"""A deliberately hostile S3 stub: it lists keys no real server would store.

Only for what SeaweedFS cannot be made to do (keys with '..', NUL, empty components; an
object whose GET never answers; a PUT over a slow link). It speaks just enough S3 for a
pull: ListObjectsV2 (url-encoded keys), HEAD and GET of objects, HEAD of the bucket, and
PUT of an object. It listens on 127.0.0.1 only and checks no signature.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape


class HostileS3:
    def __init__(self, bucket: str, objects: dict[str, bytes],
                 stalled: frozenset[str] = frozenset(), descending: bool = False,
                 upload_rate: float | None = None) -> None:
        """`stalled`: keys whose GET sends headers, then nothing, until the stub stops.
        `descending`: list keys in reverse order (start-after meaning "after" in that
        order), as no S3 store should. `upload_rate`: bytes per second a PUT's body is
        taken at, as over a slow link (None: at once)."""
        self.bucket = bucket
        self.objects = objects
        self.stalled = stalled
        self.descending = descending
        self.upload_rate = upload_rate
        self._stopping = threading.Event()
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                stub.requests.append(f"HEAD {self.path}")
                self._object(send_body=False)

            def do_GET(self) -> None:
                stub.requests.append(f"GET {self.path}")
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path.rstrip("/") == f"/{stub.bucket}" and "list-type" in query:
                    self._list(query)
                else:
                    self._object(send_body=True)

            def do_PUT(self) -> None:
                stub.requests.append(f"PUT {self.path}")
                path = urllib.parse.urlsplit(self.path).path
                key = urllib.parse.unquote(path[len(stub.bucket) + 2:])
                left = int(self.headers.get("Content-Length", "0"))
                chunks = []
                while left > 0:
                    chunks.append(self.rfile.read(min(left, 64 << 10)))
                    left -= len(chunks[-1])
                    if stub.upload_rate:
                        time.sleep(len(chunks[-1]) / stub.upload_rate)
                stub.objects[key] = data = b"".join(chunks)
                self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

            def _list(self, query: dict[str, list[str]]) -> None:
                prefix = query.get("prefix", [""])[0]
                encode = query.get("encoding-type", [""])[0] == "url"
                after = query.get("start-after", [None])[0]
                keys = sorted((k for k in stub.objects if k.startswith(prefix)),
                              reverse=stub.descending)
                if after is not None:
                    keys = [k for k in keys if (k < after if stub.descending else k > after)]
                items = []
                for key in keys:
                    shown = urllib.parse.quote(key, safe="/") if encode else escape(key)
                    etag = hashlib.md5(stub.objects[key]).hexdigest()
                    items.append(
                        f"<Contents><Key>{shown}</Key><ETag>&quot;{etag}&quot;</ETag>"
                        f"<Size>{len(stub.objects[key])}</Size>"
                        "<LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                        "<StorageClass>STANDARD</StorageClass></Contents>"
                    )
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>'
                    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    f"<Name>{stub.bucket}</Name><Prefix>{escape(prefix)}</Prefix>"
                    f"<KeyCount>{len(items)}</KeyCount><MaxKeys>1000</MaxKeys>"
                    + ("<EncodingType>url</EncodingType>" if encode else "")
                    + "<IsTruncated>false</IsTruncated>"
                    + "".join(items)
                    + "</ListBucketResult>"
                ).encode()
                self._send(200, body, {"Content-Type": "application/xml"})

            def _object(self, send_body: bool) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path.rstrip("/") == f"/{stub.bucket}":
                    self._send(200, b"", {}, send_body)
                    return
                key = urllib.parse.unquote(path[len(stub.bucket) + 2:])
                data = stub.objects.get(key)
                if data is None:
                    body = (b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code>'
                            b"<Message>no such key</Message></Error>")
                    self._send(404, body, {"Content-Type": "application/xml"}, send_body)
                    return
                headers = {
                    "ETag": f'"{hashlib.md5(data).hexdigest()}"',
                    "Last-Modified": formatdate(1767225600, usegmt=True),
                    "Content-Type": "application/octet-stream",
                }
                if send_body and key in stub.stalled:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.flush()
                    stub._stopping.wait()
                    return
                self._send(200, data, headers, send_body)

            def _send(self, code: int, body: bytes, headers: dict[str, str],
                      send_body: bool = True) -> None:
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[HostileS3]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            self.server.shutdown()
            self.server.server_close()
            thread.join()

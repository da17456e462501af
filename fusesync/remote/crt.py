"""Single-object requests awaited from trio, carried by the AWS CRT's S3 client.

A sync moves thousands of small objects. Sent from worker threads, each one cost a thread
hop and a fight for the GIL among dozens of threads (a pull of 5,000 small files made 1.4
million futex calls); the CRT signs, sends, pools connections and retries in C on a couple
of event-loop threads, and the trio task only waits for its answer. Answers come back in
the shapes the rest of the remote package knows: an HTTP status, headers and body, and
botocore's own `ClientError` / `EndpointConnectionError` for failures, so the one error
translator in `s3.py` stays the only place where errors are read.

Request bodies either come from memory or, for files, are read by the CRT from the path;
the caller sends the file's Content-MD5 with it, so a file that changes while it is read
is refused by the store rather than stored torn.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import io
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awscrt import auth as crt_auth
from awscrt import http as crt_http
from awscrt import io as crt_io
from awscrt import s3 as crt_s3
from awscrt.exceptions import AwsCrtError
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from fusesync.errors import SourceChanged
from fusesync.remote.shapes import error_response

_KEPT: set[int] = set()

UNANSWERED = 1.0
"""Seconds a request over TLS may go without any answer before the endpoint's certificate
is checked (`certificate_refusal`); a request's own timeout is `CrtClient.idle_timeout`."""


def _keep_thread_state() -> None:
    """Give the calling CRT thread a Python thread state for good.

    The CRT's event-loop threads are not Python's: each callback into Python made CPython
    create a thread state and, when it returned, destroy it again, with a 16 KiB frame
    stack mapped and unmapped each time (a pull of 5,000 small files: 10,000 mmap/munmap
    pairs, each unmap a TLB shootdown across the cores, ~5% of the pull's CPU). One extra
    PyGILState_Ensure that is never released keeps the state alive for the thread's life
    (the CRT keeps a couple of threads per client); the callbacks then only take the GIL.
    """
    ident = threading.get_ident()
    if ident not in _KEPT and sys.implementation.name == "cpython":
        _KEPT.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case: stores differ in "ETag" / "Etag"
    body: bytes


class CrtClient:
    """The CRT's S3 client for one endpoint; `send` is safe from any trio task."""

    idle_timeout = 60.0
    """Seconds a request may go without a byte either way before it is given up (as
    boto3's read timeout); the CRT retries failed requests, but a stalled one waits."""
    slowest_upload = 256 * 1024
    """Bytes per second an upload is allowed on top of `idle_timeout`: the CRT tells of a
    body's progress only once it has all gone, so a 64 MiB PUT over a slow link shows no
    movement for minutes without being stalled."""

    def __init__(
        self,
        endpoint_url: str,
        credentials: crt_auth.AwsCredentialsProvider,
        region: str,
        path_style: bool,
        max_connections: int,
    ) -> None:
        endpoint = urllib.parse.urlsplit(endpoint_url)
        self._host = endpoint.netloc
        self.serves = (endpoint_url, region, path_style)  # what it was built for
        # sent by send_early, not yet taken: each one's answer and the CRT's request (which
        # holds the answer's callbacks: the answer must not hold it, or neither is freed)
        self._early: dict[tuple[Any, ...], tuple[_Answer, Any]] = {}
        self._notices: _Notices | None = None
        self._path_style = path_style
        tls = endpoint.scheme == "https"
        tls_options = None
        self._refused: str | None = None  # why the endpoint's certificate is not trusted
        self._answered = False  # a request got an answer: a handshake went through
        self._diagnose: Callable[[], str | None] | None = None
        if tls:
            options = crt_io.TlsContextOptions()
            ca_bundle = os.environ.get("AWS_CA_BUNDLE")  # as boto3 would
            if ca_bundle:
                options.override_default_trust_store_from_path(ca_filepath=ca_bundle)
            tls_options = crt_io.ClientTlsContext(options).new_connection_options()
            self._diagnose = functools.partial(
                certificate_refusal, endpoint.hostname or "", endpoint.port or 443, ca_bundle
            )
        self._client = crt_s3.S3Client(
            region=region,
            signing_config=crt_s3.create_default_s3_signing_config(
                region=region, credential_provider=credentials
            ),
            tls_mode=crt_s3.S3RequestTlsMode.ENABLED if tls else crt_s3.S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            connect_timeout_ms=5000,  # as boto3 is configured
            # Connections are the CRT's to pool; it opens about this many for small requests.
            throughput_target_gbps=max(1.0, max_connections / 4),
        )

    def _target(self, bucket: str, key: str, query: str) -> tuple[str, str]:
        """(Host header, request target) for path-style or virtual-host addressing."""
        quoted = urllib.parse.quote(key, safe="/~")
        if self._path_style:
            host, path = self._host, f"/{bucket}/{quoted}"
        else:
            host, path = f"{bucket}.{self._host}", f"/{quoted}"
        return host, f"{path}?{query}" if query else path

    async def send(
        self,
        method: str,
        bucket: str,
        key: str,
        operation: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        send_path: str | None = None,
        query: str = "",
        sent: Callable[[int], None] | None = None,
    ) -> Reply:
        """One request; raises ClientError for an error answer, EndpointConnectionError when
        the endpoint cannot be reached (after the CRT's own retries), FileNotFoundError or
        SourceChanged when `send_path` is missing or not `Content-Length` bytes long.
        `sent(n)` hears, in the trio thread, of each `n` bytes of the body that went out
        (counted again if the CRT sends the body again after a failure). A request sent
        early (`send_early`) with the same arguments is not sent again: its answer is
        taken."""
        import trio  # here: `send_early` runs before trio is imported

        host, target = self._target(bucket, key, query)
        if self._refused is not None:
            raise SSLError(endpoint_url=f"{host}{target}", error=self._refused)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        notices = self._notices
        if notices is None or notices.token is not token:  # a new run
            notices = self._notices = _Notices(
                token, self.idle_timeout, self._diagnosed if self._diagnose else None)
        notify = functools.partial(notices.tell, done.set)

        early = None
        if body is None and send_path is None:
            early = self._early.pop(_signature(method, bucket, key, query, headers), None)
        length = 0
        if early is not None:
            answer, pending = early
            answer.notify = notify
            if answer.over:  # (else its on_done calls notify)
                done.set()
        else:
            answer = _Answer(notify)
            request, length = _request(method, host, target, headers, body)
            on_progress = None  # bytes sent: only an upload needs telling (a download
            if body is not None or send_path is not None:  # moves with each on_body)

                def on_progress(progress: int) -> None:
                    answer.moved = time.monotonic()
                    if sent is not None:
                        _keep_thread_state()
                        with contextlib.suppress(trio.RunFinishedError):
                            token.run_sync_soon(sent, progress)

            try:
                pending = self._start(operation, request, answer, send_path, on_progress)
            except RuntimeError as exc:  # the CRT opens `send_path` before anything is sent
                if send_path is not None and "AWS_ERROR_FILE_INVALID_PATH" in str(exc):
                    raise FileNotFoundError(errno.ENOENT, "No such file", send_path) from None
                raise
        allowed = self.idle_timeout + length / self.slowest_upload
        notices.watch(answer, done, allowed)
        try:
            await done.wait()
            if answer.stalled and self._refused is not None:
                raise SSLError(endpoint_url=f"{host}{target}", error=self._refused)
            if answer.status:
                self._answered = True
            if answer.stalled:
                raise ReadTimeoutError(
                    endpoint_url=f"{host}{target}",
                    error=f"nothing moved for {allowed:.0f} s",
                )
        except BaseException:
            pending.cancel()
            raise
        finally:
            notices.unwatch(answer)
        try:
            pending.finished_future.result()
        except crt_s3.S3ResponseError as exc:
            raise ClientError(
                error_response(exc.status_code, _lower(exc.headers), exc.body or b""),
                operation,
            ) from None
        except AwsCrtError as exc:
            if exc.name.startswith("AWS_AUTH_CREDENTIALS_PROVIDER"):
                raise NoCredentialsError() from exc
            if send_path is not None and exc.name == "AWS_ERROR_S3_INCORRECT_CONTENT_LENGTH":
                raise SourceChanged(f"'{send_path}' changed size since it was hashed") from None
            raise EndpointConnectionError(
                endpoint_url=f"{host}{target}", error=f"{exc.name}: {exc.message}"
            ) from exc
        return answer.reply()

    def _diagnosed(self) -> str | None:
        """Why requests stall, when it is the endpoint's certificate (blocks: a worker
        thread's). The CRT gives a request whose TLS handshake failed on an untrusted
        certificate no answer at all (it neither retries it nor fails it), so when no
        request of this client was ever answered and one waits for a while, the handshake
        is tried again here, once."""
        if self._answered:  # the handshake goes through: requests stall for another reason
            return None
        if self._refused is None and self._diagnose is not None:
            self._refused = self._diagnose()
            self._diagnose = None  # once: the answer holds for the client's life
        return self._refused

    def send_early(
        self,
        method: str,
        bucket: str,
        key: str,
        operation: str,
        *,
        headers: Mapping[str, str] | None = None,
        query: str = "",
    ) -> None:
        """Send a request with no body now, from outside any trio run: a pull sends the
        first pages of its listing so while Python imports the rest of the run. `send`
        with the same arguments takes its answer later; one never asked for is dropped
        with the client."""
        host, target = self._target(bucket, key, query)
        request, _ = _request(method, host, target, headers, None)
        answer = _Answer(None, early=True)
        pending = self._start(operation, request, answer)
        self._early[_signature(method, bucket, key, query, headers)] = answer, pending

    def drop_early(self, method: str, bucket: str, key: str, *,
                   headers: Mapping[str, str] | None = None, query: str = "") -> None:
        """Let a request `send_early` sent go, unless `send` took it already."""
        early = self._early.pop(_signature(method, bucket, key, query, headers), None)
        if early is not None:
            early[1].cancel()

    def drop_all_early(self) -> None:
        """Let every request `send_early` sent and `send` never took go: a later run
        must ask anew, not take an answer from long before it began."""
        early, self._early = self._early, {}
        for _, pending in early.values():
            pending.cancel()

    def early_reply(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        headers: Mapping[str, str] | None = None,
        query: str = "",
        timeout: float,
    ) -> Reply | None:
        """The answer to a request `send_early` sent, once it has come (waiting up to
        `timeout` seconds), an error answer's status, headers and body too; left for `send`
        to take. None: no such request left early, it is still going, or it failed with no
        answer (the endpoint unreachable: `send` will say so)."""
        early = self._early.get(_signature(method, bucket, key, query, headers))
        if early is None:
            return None
        answer, pending = early
        assert answer.finished is not None, "an early answer can be waited for"
        if not answer.finished.wait(timeout):
            return None
        error = pending.finished_future.exception()
        if error is None:
            return answer.reply()
        if isinstance(error, crt_s3.S3ResponseError):
            return Reply(error.status_code, _lower(error.headers), error.body or b"")
        return None

    def _start(self, operation: str, request: crt_http.HttpRequest, answer: _Answer,
               send_path: str | None = None,
               on_progress: Callable[[int], None] | None = None) -> Any:
        """Hand the request to the CRT, `answer` hearing of it; the CRT's S3Request."""
        return self._client.make_request(
            type=crt_s3.S3RequestType.DEFAULT,
            operation_name=operation,
            request=request,
            send_filepath=send_path,
            on_headers=answer.on_headers,
            on_body=answer.on_body,
            on_done=answer.on_done,
            on_progress=on_progress,
        )


class _Notices:
    """Requests the CRT finished, told to one trio run in batches.

    A notice per request (trio's `run_sync_soon`) took trio's entry-queue lock and wrote a
    byte to its wakeup socket from the CRT's thread each time, letting go of the GIL and
    waiting for it again around the write while the trio thread, woken for each byte,
    did the same around its read: 10,000 such handoffs for a pull of 5,000 small files.
    Here the CRT's thread only appends to a queue, and wakes trio only when no wakeup is
    already on its way; trio then runs every notice queued by then.

    It also watches the run's requests for one that stalls: a timeout per request (a
    cancel scope entered and left around each wait) cost a pull of 5,000 small files
    more of the trio thread's time than anything else it did per file but the CRT's own
    call; one task looks at every request in flight a few times per idle timeout."""

    def __init__(self, token: Any, idle_timeout: float,
                 diagnose: Callable[[], str | None] | None = None) -> None:
        self.token = token
        self._diagnose = diagnose  # why requests stall, if the client can tell (TLS)
        self._queued: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._woken = False
        self._watched: dict[_Answer, tuple[Any, float]] = {}  # answer: (its trio.Event, allowed)
        self._tick = min(1.0, idle_timeout / 4)
        self._watching: Any = None  # a trio.Event the watcher waits on while none is in flight

    def watch(self, answer: _Answer, done: Any, allowed: float) -> None:
        """Set `done` and `answer.stalled` if nothing moves for `allowed` seconds (trio's
        thread, inside the run)."""
        import trio

        if self._watching is None:
            self._watching = trio.Event()
            trio.lowlevel.spawn_system_task(self._watch, name="fusesync: stalled requests")
        self._watched[answer] = done, allowed
        self._watching.set()

    def unwatch(self, answer: _Answer) -> None:
        self._watched.pop(answer, None)

    async def _watch(self) -> None:
        import trio

        while True:
            if not self._watched:
                self._watching = trio.Event()
                await self._watching.wait()
            await trio.sleep(self._tick)
            now = time.monotonic()
            if self._diagnose is not None and any(
                    not answer.over and not answer.status and now - answer.moved >= UNANSWERED
                    for answer in self._watched):
                diagnose, self._diagnose = self._diagnose, None
                if await trio.to_thread.run_sync(diagnose, abandon_on_cancel=True):
                    for answer, (done, _) in list(self._watched.items()):
                        answer.stalled = True  # `send` says why
                        del self._watched[answer]
                        done.set()
                    continue
            for answer, (done, allowed) in list(self._watched.items()):
                if not answer.over and now - answer.moved >= allowed:
                    answer.stalled = True
                    del self._watched[answer]
                    done.set()

    def tell(self, notice: Callable[[], None]) -> None:
        """Have `notice` run in trio's thread soon (from any thread)."""
        import trio

        self._queued.append(notice)
        with self._lock:
            if self._woken:  # the batch on its way takes this one too
                return
            self._woken = True
        with contextlib.suppress(trio.RunFinishedError):  # the run was torn down
            self.token.run_sync_soon(self._run)

    def _run(self) -> None:
        with self._lock:
            self._woken = False  # first: a notice queued from now on wakes trio again
        queued = self._queued
        while queued:
            queued.popleft()()


class _Answer:
    """What the CRT's threads tell of one request: its status, headers and body, when a
    byte last went either way, and that it is over (`notify` is then called, from the
    CRT's thread). An early one (`send_early`) can be waited for from any thread
    (`finished`)."""

    __slots__ = ("chunks", "finished", "headers", "moved", "notify", "over", "stalled",
                 "status")

    def __init__(self, notify: Callable[[], None] | None, *, early: bool = False) -> None:
        self.notify = notify
        self.status = 0
        self.headers: Sequence[tuple[str, str]] = ()
        self.chunks: list[bytes] = []
        self.moved = time.monotonic()
        self.over = False
        self.stalled = False  # given up: nothing moved for longer than allowed
        self.finished = threading.Event() if early else None

    def on_headers(self, status_code: int, headers: Sequence[tuple[str, str]], **_: Any) -> None:
        _keep_thread_state()
        self.status = status_code
        self.headers = headers

    def on_body(self, chunk: bytes, **_: Any) -> None:
        _keep_thread_state()
        self.chunks.append(bytes(chunk))
        self.moved = time.monotonic()

    def reply(self) -> Reply:
        """The answer as told, once it is over."""
        return Reply(self.status, _lower(self.headers), b"".join(self.chunks))

    def on_done(self, **_: Any) -> None:
        _keep_thread_state()
        self.over = True
        if self.finished is not None:
            self.finished.set()
        notify = self.notify
        if notify is not None:
            notify()


def _request(method: str, host: str, target: str, headers: Mapping[str, str] | None,
             body: bytes | None) -> tuple[crt_http.HttpRequest, int]:
    """The CRT's request, and its body's length."""
    fields: list[tuple[str, str]] = [("Host", host), *(headers or {}).items()]
    if body is not None:
        fields.append(("Content-Length", str(len(body))))
    length = next((int(v) for k, v in fields if k.lower() == "content-length"), 0)
    request = crt_http.HttpRequest(
        method, target, crt_http.HttpHeaders(fields),
        io.BytesIO(body) if body is not None else None,
    )
    return request, length


def _signature(method: str, bucket: str, key: str, query: str,
               headers: Mapping[str, str] | None) -> tuple[Any, ...]:
    """What makes two requests with no body the same request."""
    return method, bucket, key, query, tuple(sorted((headers or {}).items()))


def _lower(headers: Sequence[tuple[str, str]] | None) -> dict[str, str]:
    return {name.lower(): value for name, value in headers or ()}


def certificate_refusal(host: str, port: int, ca_file: str | None) -> str | None:
    """Why a TLS handshake with `host:port` fails on its certificate (trusting `ca_file`,
    else the system's authorities, as the CRT does), or None: it does not, or fails for
    another reason (the request's own timeout tells of that). Blocks up to a few seconds."""
    import socket
    import ssl

    try:
        context = ssl.create_default_context(cafile=ca_file or None)
        with socket.create_connection((host, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        return f"its certificate is not trusted ({exc.verify_message or exc.reason})"
    except (OSError, ValueError):
        return None

"""The mount's control socket: the CLI's push, pull and status, run inside the daemon.

One JSON line asks ({"verb": "push", "dry_run": false, ...}), one JSON line answers
({"status": 0, "output": "..."}). The socket is 0600 in the target's state folder (an
abstract socket when that folder lies inside the mount) and only its owner (or root) is
served. The CLI's side is forward.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from fusesync.config import Target
from fusesync.errors import FusesyncError
from fusesync.fs.forward import abstract_name, short_path, socket_path

log = logging.getLogger("fusesync.mount")

MAX_REQUEST = 1 << 16

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _bind(path: Path) -> socket.socket:
    """Bind the listening socket file, 0600. Blocks."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        with short_path(path) as short:
            sock.bind(short)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def _bind_abstract(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(name)
    sock.listen(16)
    return sock


async def serve(target: Target, handler: Handler,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer requests until cancelled; removes the socket file (if any) at the end."""
    abstract = abstract_name(target)
    path = socket_path(target)
    if abstract is not None:
        sock = _bind_abstract(abstract)  # peers are checked by SO_PEERCRED, not by a mode
    else:
        sock = await trio.to_thread.run_sync(_bind, path)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(
                functools.partial(_answer, handler=handler), [listener],
                handler_nursery=nursery,
            )
    finally:
        if abstract is None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _peer_allowed(stream: trio.SocketStream) -> bool:
    creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                     struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


async def _answer(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        if not _peer_allowed(stream):
            return
        data = b""
        while len(data) < MAX_REQUEST:
            chunk = await stream.receive_some(1 << 16)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            reply: dict[str, Any] = {"status": 2, "output": "fusesync: bad request\n"}
        else:
            reply = await _run(handler, request)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _run(handler: Handler, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request; a domain error becomes the CLI's one line and exit status."""
    verb = request.get("verb", "?")
    try:
        return await handler(request)
    except FusesyncError as exc:
        return {"status": exc.exit_status, "output": f"fusesync {verb}: {exc}\n"}
    except Exception as exc:
        log.error("forwarded %s failed", verb, exc_info=exc)
        return {"status": 1, "output": f"fusesync {verb}: internal error in the mount daemon: "
                                       f"{exc!r} (see mount.log)\n"}

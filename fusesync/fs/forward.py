"""The CLI's side of the mount's control socket (control.py is the daemon's).

No trio here, nor anything of the engine: a push or pull forwarded to a running mount
starts as fast as Python and click do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusesync.config import Target
from fusesync.errors import FusesyncError

SOCKET_NAME = "control.sock"


def socket_path(target: Target) -> Path:
    return target.state_dir / SOCKET_NAME


def abstract_name(target: Target) -> str | None:
    """The abstract socket name used instead of the file when the state folder lies inside
    the mounted directory (the usual ~/.local/state in a mounted home): a socket file bound
    there would pin the mount and make every plain unmount 'busy'. None otherwise.

    Pure string work, so the daemon may call it after mounting and client and daemon
    always agree."""
    state = os.path.abspath(target.state_dir)
    tree = os.path.abspath(target.path)
    if not (state == tree or state.startswith(tree.rstrip("/") + "/")):
        return None
    digest = hashlib.sha256(state.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"\0fusesync-{os.getuid()}-{digest}"


def forward(target: Target, verb: str, args: dict[str, Any]) -> tuple[int, str] | None:
    """Run `verb` in the target's mount daemon: (exit status, output), or None when no
    daemon listens. Blocks until the daemon has finished the run."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            abstract = abstract_name(target)
            if abstract is not None:
                sock.connect(abstract)
            else:
                with short_path(socket_path(target)) as short:
                    sock.connect(short)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None
        sock.sendall(json.dumps({"verb": verb, **args}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
        return int(reply["status"]), str(reply["output"])
    except (ValueError, KeyError, TypeError):
        raise FusesyncError(
            f"the mount daemon of '{target.name}' gave no answer (see its mount.log)"
        ) from None


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A spelling of `path` short enough for sun_path (108 bytes), however deep the state
    folder is: through a descriptor of its directory."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)

"""The `mount` and `unmount` commands: option parsing, daemonizing, and messages.

The mount itself is daemon.py's; here a click command starts it in the foreground or as
a daemon that reports back over a pipe once the mount is up (or why it could not be).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from fusesync.crypt.cli import passphrase_option
from fusesync.crypt.passphrase import PassphraseSource, given_passphrase
from fusesync.errors import BusyError, FusesyncError, UsageError, first_leaf

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_WAIT_FOR_DAEMON = 60.0  # seconds unmount waits for the daemon to finish its flush


class Size(click.ParamType):  # type: ignore[type-arg]
    """A size like 500M, 20G or 1073741824 (binary units; a trailing 'B' or 'iB' is fine)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
        if not found:
            self.fail(f"{value!r} is not a size like 500M or 20G", param, ctx)
        return int(float(found[1]) * _UNITS[found[2].upper()])


@click.command()
@click.argument("name", default="default")
@click.option("--foreground", "-f", is_flag=True,
              help="Stay in the foreground until unmounted (for systemd and tests).")
@click.option("--cache-limit", type=Size(), metavar="SIZE",
              help="Keep at most SIZE of clean fetched files; evict the least recently "
                   "used back to remote-only. Changed files are never evicted.")
@click.option("--allow-other", is_flag=True,
              help="Let other users use the mount (permissions are still checked by the "
                   "kernel: the mount always has default_permissions).")
@click.option("--no-pull", "no_pull", is_flag=True,
              help="Do not pull as the mount starts: show only what the last sync knew "
                   "(working offline; 'fusesync pull NAME' brings the rest later).")
@passphrase_option
@click.pass_context
def mount(ctx: click.Context, name: str, foreground: bool, cache_limit: int | None,
          allow_other: bool, no_pull: bool, passphrase_file: Path | None) -> None:
    """Mount target NAME (default: 'default') over its own directory.

    The mount pulls as it starts, so the directory shows its local files plus every
    remote file at once, with real sizes, modes and times; a file not here yet is fetched
    on first open. The pull's summary is printed (conflicts and skipped paths as in
    'fusesync pull'); if the remote cannot be reached, the mount still serves everything
    local. Every change is made to the directory itself and journaled, so 'fusesync push'
    uploads only what changed. While mounted, push, pull and status are run by the
    mount. Logs go to $XDG_STATE_HOME/fusesync/NAME/mount.log. Undo with
    'fusesync unmount NAME'.

    Encrypted files are decrypted on fetch and encrypted on push only when the mount is
    given the passphrase ($FUSESYNC_PASSPHRASE or --passphrase-file; it never asks):
    without it, opening a remote-only encrypted file fails with EACCES. Their names stay
    visible on the remote.
    """
    from fusesync.cli import load_config

    config = load_config(ctx)
    target = config.target(name)
    given, origin = given_passphrase(passphrase_file)
    passphrase = PassphraseSource(given, origin) if given is not None else None
    mounted = f"'{target.name}' mounted at '{target.path}'"

    def start(say: Callable[[str], None], ready: Callable[[], None]) -> None:
        # In the process that serves the mount (the CRT's threads do not survive a fork):
        # the target locked, its index open and its pull's first requests sent before
        # the daemon's imports (pyfuse3, trio: ~0.2 s), which they overlap.
        from fusesync.sync.head_start import opened

        with ExitStack() as stack:
            try:
                early = stack.enter_context(opened(config.settings, target, "mount",
                                                   listing=not no_pull))
            except BusyError as exc:
                if exc.activity == "mount":
                    raise BusyError(f"'{target.name}' is already mounted", "mount") from None
                raise BusyError(f"'{target.name}' is busy ({exc})", exc.activity) from None
            from fusesync.fs import daemon

            options = daemon.MountOptions(foreground, allow_other, cache_limit, passphrase,
                                          pull=not no_pull)
            daemon.run(config, target, options, say, ready, early)

    if foreground:
        def say(message: str) -> None:
            click.echo(f"fusesync mount: {message}")

        def ready() -> None:
            click.echo(f"fusesync mount: {mounted}")
            sys.stdout.flush()
            notify_systemd(f"READY=1\nSTATUS={mounted}")

        start(say, ready)
        return
    _daemonize(start, lambda line: click.echo(f"fusesync mount: {line}"))
    click.echo(f"fusesync mount: {mounted}")


@click.command()
@click.argument("name", default="default")
@click.pass_context
def unmount(ctx: click.Context, name: str) -> None:
    """Unmount target NAME (default: 'default'), leaving a plain directory.

    Everything fetched or written stays in the directory. A mount whose daemon was
    killed is cleaned up too. Fails while files in the mount are still open.
    """
    from fusesync.cli import load_config
    from fusesync.fs import mounts
    from fusesync.index import TargetLock

    target = load_config(ctx).target(name)
    path = target.path
    state = mounts.mount_state(path)
    if state == mounts.MountState.OTHER:
        raise FusesyncError(f"'{path}' is not a fusesync mount; not touching it")
    if mounts.is_stale(path):
        mounts.lazy_unmount(path)
        click.echo(f"fusesync unmount: cleaned a stale mount at '{path}' (its daemon had died)")
        return
    if state == mounts.MountState.NONE:
        raise FusesyncError(f"'{target.name}' is not mounted at '{path}'")
    mounts.unmount(path)
    deadline = time.monotonic() + _WAIT_FOR_DAEMON
    while True:  # the daemon holds the target's lock until it has closed everything
        try:
            with TargetLock(target.state_dir, target.name, "unmount"):
                break
        except FusesyncError:
            if time.monotonic() > deadline:
                raise FusesyncError(f"unmounted '{path}', but its daemon is still finishing; "
                                    "see mount.log") from None
            time.sleep(0.05)
    click.echo(f"fusesync unmount: '{target.name}' unmounted from '{path}'")


def notify_systemd(state: str) -> None:
    """Tell systemd (a Type=notify unit) how the mount stands: one datagram to
    $NOTIFY_SOCKET, the whole of sd_notify's protocol. Does nothing outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:  # systemd will time the unit out; the mount itself is fine
        click.echo(f"fusesync mount: cannot notify systemd at {address!r}: {exc}", err=True)


def last_word(exc: BaseException) -> str:
    """What a daemon that failed before it was ready tells the terminal: the domain
    error's own line (also from inside a nursery's group), else the exception's repr."""
    if isinstance(exc, BaseExceptionGroup):
        exc = first_leaf(exc)
    return str(exc) if isinstance(exc, FusesyncError | UsageError) else repr(exc)


def _daemonize(start: Callable[[Callable[[str], None], Callable[[], None]], None],
               echo: Callable[[str], None]) -> None:
    """Run `start` in a detached daemon; `echo` each of its messages as it comes, and return
    once the mount is up, or raise its error. The daemon speaks over a pipe: 'say TEXT'
    lines, then 'ok' or 'error TEXT'."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as pipe:
                for raw in pipe:  # until the daemon's 'ok' closes its end, or it dies
                    line = raw.decode(errors="replace").rstrip("\n")
                    if line.startswith("say "):
                        echo(line[4:])
                    elif line == "ok":
                        return
                    elif line.startswith("error "):
                        raise FusesyncError(line[6:])
        finally:
            os.waitpid(pid, 0)  # the first child, gone once it forked the daemon
        raise FusesyncError("the mount daemon died while starting (see mount.log)")
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    readied = False

    def say(message: str) -> None:
        os.write(write_end, f"say {message}\n".encode())

    def ready() -> None:
        nonlocal readied
        os.write(write_end, b"ok\n")
        os.close(write_end)
        readied = True

    code = 0
    try:
        start(say, ready)
    except BaseException as exc:  # the daemon's last word, whatever it is
        code = 1
        if not readied:
            os.write(write_end, f"error {last_word(exc)}\n".encode())
    os._exit(code)

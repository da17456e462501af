"""`fusesync mount --foreground` under systemd (Type=notify): READY=1 reaches
$NOTIFY_SOCKET only once the mount is up and its daemon answers, and a notify socket that
is gone costs a line on stderr, not the mount. A real mount and a real datagram socket."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mounting import MOUNT_TIMEOUT, Mount, forward_in, is_mounted, wait_until
from syncenv import Cluster

pytestmark = pytest.mark.timeout(120)


def start_mount(cluster: Cluster, notify_socket: str, out: Path) -> Mount:
    """The mount's subprocess, started without waiting for it: the test waits itself."""
    live = Mount(cluster.home, {**cluster.env, "NOTIFY_SOCKET": notify_socket})
    live.stdout = out
    with out.open("wb") as sink:
        live.proc = subprocess.Popen(live.command(), env={**os.environ, **live.env},
                                     stdout=sink, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
    return live


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket,
                                                                             str]]:
    """A datagram socket where systemd would listen, and its $NOTIFY_SOCKET spelling."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        name = f"fusesync-test-notify-{secrets.token_hex(6)}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(MOUNT_TIMEOUT)
    with sock:
        yield sock, address


def test_ready_is_sent_once_mounted_and_serving(one: Cluster, listener, tmp_path: Path
                                                ) -> None:
    sock, address = listener
    (one.home / "here.txt").write_text("local\n")
    live = start_mount(one, address, tmp_path / "mount.out")
    try:
        message = sock.recv(4096).decode()
        # At the moment systemd hears READY=1 the mount must be usable.
        assert is_mounted(one.home)
        assert (one.home / "here.txt").read_text() == "local\n"
        code, output = forward_in(one.env, "status")
        assert code == 0, output
        assert message == f"READY=1\nSTATUS='default' mounted at '{one.home}'"
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # said once
    finally:
        live.stop()
    assert live.proc is not None and live.proc.returncode == 0
    assert not is_mounted(one.home)


def test_a_vanished_notify_socket_costs_a_line_not_the_mount(one: Cluster, tmp_path: Path
                                                             ) -> None:
    gone = tmp_path / "no-such-socket"
    live = start_mount(one, str(gone), tmp_path / "mount.out")
    try:
        wait_until(lambda: "cannot notify systemd" in live.output(), MOUNT_TIMEOUT,
                   "the notify error")
        assert is_mounted(one.home)
        assert forward_in(one.env, "status")[0] == 0
        assert f"cannot notify systemd at '{gone}'" in live.output()
    finally:
        live.stop()
    assert not is_mounted(one.home)

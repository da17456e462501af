"""The CLI's push, pull and status go to a running mount without loading the engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

FORWARD_PROBE = """
import sys
from fusesync.cli import cli
try:
    cli(["{verb}", "t"], prog_name="fusesync")
except SystemExit as exc:
    code = exc.code
assert "trio" not in sys.modules, "trio loaded for a forwarded command"
assert "fusesync.sync.session" not in sys.modules, "the engine loaded for a forwarded command"
sys.exit(code)
"""


def test_forwarded_commands_start_without_trio_or_the_engine(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    (tmp_path / "tree").mkdir()
    for args in (["setup", "--bucket", "bucket", "--endpoint-url", "http://127.0.0.1:9"],
                 ["add", "t", str(tmp_path / "tree")]):
        made = subprocess.run([sys.executable, "-m", "fusesync.cli", *args], env=env,
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stdout + made.stderr
    state = tmp_path / "state" / "fusesync" / "t"
    state.mkdir(parents=True, exist_ok=True)
    asked: list[dict[str, object]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(state / "control.sock"))  # a stand-in for the mount daemon
        server.listen(4)

        def answer() -> None:
            for _ in range(3):
                conn, _ = server.accept()
                with conn:
                    asked.append(json.loads(conn.makefile("rb").readline()))
                    conn.sendall(json.dumps({"status": 0, "output": "done\n"}).encode() + b"\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        for verb in ("pull", "push", "status"):
            probe = subprocess.run([sys.executable, "-c", FORWARD_PROBE.format(verb=verb)],
                                   env=env, capture_output=True, text=True, timeout=60)
            assert probe.returncode == 0, probe.stderr
            assert probe.stdout == "done\n"
        thread.join(10)
    assert [request["verb"] for request in asked] == ["pull", "push", "status"]

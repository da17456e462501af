"""Where a run's passphrase comes from: a file, the environment, or a question on a terminal.

A passphrase file must be readable by its owner only. With neither a passphrase given nor
a terminal to ask on, the answer is "none" at once: a script never hangs on a prompt.
Nothing here keeps a passphrase beyond the run, writes one down or logs one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fusesync.errors import UsageError

ENV = "FUSESYNC_PASSPHRASE"
NEW_ENV = "FUSESYNC_NEW_PASSPHRASE"

Ask = Callable[[str], bytes | None]
"""Ask a question on the terminal without echo; None when the user pressed CTRL+C."""


def _quiet(_line: str) -> None:
    pass


@dataclass
class PassphraseSource:
    """How this run gets a passphrase when it needs one."""

    given: bytes | None = None  # from --passphrase-file or the environment
    origin: str = ""  # where `given` came from, to name it in an error
    ask: Ask | None = None  # None: no terminal to ask on
    say: Callable[[str], None] = field(default=_quiet)  # one line for the user


def read_passphrase_file(path: Path) -> bytes:
    """The passphrase in `path` (one trailing newline dropped). Refuses a file that group
    or others can read, a symlink, and anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file '{path}': {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"passphrase file '{path}' is not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(
                f"refusing passphrase file '{path}': group or others can read it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
            )
        data = f.read(1 << 16)
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if not data:
        raise UsageError(f"passphrase file '{path}' is empty")
    return data


def given_passphrase(path: Path | None, env_name: str = ENV) -> tuple[bytes | None, str]:
    """The passphrase from `path` if given, else from the environment variable; and where
    it came from."""
    if path is not None:
        return read_passphrase_file(path), f"passphrase file '{path}'"
    value = os.environ.get(env_name)
    if value:
        return value.encode("utf-8", "surrogateescape"), env_name
    return None, ""

"""Opening a target for one run: its lock, its index and its remote, closed in order.

The CLI and the mount daemon both come through here, so a target has one owner at a
time and every run sees the same index path and the same remote settings. The S3 client
is built on first use: a push with nothing to send never loads boto3 at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fusesync.config import Config, Settings, Target
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.remote.base import Remote
from fusesync.sync.engine import Engine
from fusesync.sync.head_start import TRANSFERS, Opened, opened
from fusesync.sync.report import Progress


class LazyRemote:
    """A Remote that builds the real one the first time it is used."""

    def __init__(self, factory: Callable[[], Remote], bucket: str) -> None:
        self._factory = factory
        self._remote: Remote | None = None
        self.bucket = bucket

    def __getattr__(self, name: str) -> Any:
        if self._remote is None:
            self._remote = self._factory()
        return getattr(self._remote, name)

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()


def s3_remote(settings: Settings, early: Opened | None = None) -> Remote:
    from fusesync.remote.s3 import S3Remote  # boto3 costs ~0.15 s to import: only when needed

    return S3Remote(settings, max_concurrency=TRANSFERS, crt=early.crt if early else None)


@asynccontextmanager
async def open_engine(
    config: Config, target: Target, activity: str, progress: Progress | None = None,
    passphrase: PassphraseSource | None = None, early: Opened | None = None,
) -> AsyncIterator[Engine]:
    """Lock the target, open its index and remote, and yield an Engine for them. `early`:
    the target as locked and opened already (sync/head_start.py), requests sent on it."""
    settings = config.settings
    async with AsyncExitStack() as stack:
        if early is None:
            early = stack.enter_context(opened(settings, target, activity))
        held = early
        remote = LazyRemote(lambda: s3_remote(settings, held), settings.bucket)
        stack.push_async_callback(remote.aclose)
        yield Engine(target, held.index, remote, progress, passphrase=passphrase)

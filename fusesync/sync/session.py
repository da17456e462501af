"""Opening a target for one run: its lock, its index and its remote, closed in order.

The CLI and the mount daemon both come through here, so a target has one owner at a
time and every run sees the same index path and the same remote settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fusesync.config import Config, Target
from fusesync.index import Index, TargetLock
from fusesync.remote.s3 import S3Remote
from fusesync.sync.engine import Engine
from fusesync.sync.report import Progress


@asynccontextmanager
async def open_engine(
    config: Config, target: Target, activity: str, progress: Progress | None = None
) -> AsyncIterator[Engine]:
    """Lock the target, open its index and remote, and yield an Engine for them."""
    async with AsyncExitStack() as stack:
        stack.enter_context(TargetLock(target.state_dir, target.name, activity))
        index = stack.enter_context(Index(target.state_dir / "index.db"))
        remote = S3Remote(config.settings)
        stack.push_async_callback(remote.aclose)
        yield Engine(target, index, remote, progress)

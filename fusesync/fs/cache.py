"""--cache-limit: keep the clean fetched files under a size, least recently used out first.

A clean file (its local copy, its base and the remote all the same version, not dirty)
can always be fetched again, so evicting it turns it back into a remote-only entry.
Dirty, open and in-flight files are never evicted. Runs as one task of the daemon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from fusesync.fs.journal import Journal
from fusesync.fs.overlay import Overlay
from fusesync.index import Index
from fusesync.sync.localfs import Tree
from fusesync.sync.pull import local_version

log = logging.getLogger("fusesync.mount")

CLEAN = (
    "dirty = 0 AND local_kind = 'file' AND base_kind = 'file' AND remote_kind = 'file' "
    "AND local_md5 IS NOT NULL AND local_md5 = base_md5 AND remote_etag = base_etag"
)
PERIOD = 5.0  # seconds between checks when nothing pokes the evictor

Forget = Callable[[list[str]], Awaitable[None]]


class Evictor:
    def __init__(self, limit: int, index: Index, journal: Journal, overlay: Overlay,
                 forget: Forget) -> None:
        self.limit = limit
        self.index = index
        self.journal = journal
        self.overlay = overlay
        self.forget = forget  # tells the kernel to drop what it cached for these paths
        self._poked = trio.Event()

    def poke(self, _size: int = 0) -> None:
        """A fetch completed: check soon."""
        self._poked.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(PERIOD):
                await self._poked.wait()
            self._poked = trio.Event()
            try:
                await self.enforce()
            except Exception as exc:  # an eviction that fails must not end the mount
                log.warning("cache limit: eviction failed: %s", exc, exc_info=exc)

    def cached(self) -> int:
        row = self.index.conn.execute(f"SELECT sum(local_size) FROM paths WHERE {CLEAN}")
        return int(row.fetchone()[0] or 0)

    async def enforce(self) -> list[str]:
        """Evict until the clean files fit the limit; returns the evicted paths."""
        total = self.cached()
        if total <= self.limit:
            return []
        busy = {node.path for node in self.overlay.handles.open_nodes() if not node.detached}
        if self.overlay.fetcher is not None:
            busy |= {fetch.path for fetch in self.overlay.fetcher.active.values()}
        used = self.overlay.last_used
        rows = sorted(self.index.rows(CLEAN), key=lambda r: used.get(r["path"], -math.inf))
        evicted: list[str] = []
        # files turn remote-only under the listings' feet: they keep nothing meanwhile
        with self.overlay.changing(), Tree(self.overlay.root_fd) as tree:
            for row in rows:
                if total <= self.limit:
                    break
                path = row["path"]
                if path in busy or not tree.remove(path, local_version(row)):
                    continue
                self.journal.evicted(path)
                used.pop(path, None)
                total -= row["local_size"] or 0
                evicted.append(path)
        if evicted:
            log.info("cache limit: evicted %d files back to remote-only", len(evicted))
            await self.forget(evicted)
        return evicted

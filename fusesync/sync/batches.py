"""Blocking work submitted by many trio tasks, done in batches by one worker thread.

A pull lands thousands of small files. One worker-thread hop per file cost more than the
file's download (trio's hand-off, and dozens of threads taking turns at the GIL); one hop
per batch does not. Batches form by themselves: while one is being handled, the next
fills up with whatever the downloads delivered meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Batcher(Generic[T]):
    """`submit(item)` returns once `handle` has been called on a batch holding `item`."""

    def __init__(self, handle: Callable[[Sequence[T]], None], limit: int) -> None:
        self._handle = handle
        self._limit = limit
        self._pending: list[tuple[T, trio.Event]] = []
        self._wake = trio.Event()
        self._closing = False
        self._failed: BaseException | None = None

    async def submit(self, item: T) -> None:
        if self._failed is not None or self._closing:
            raise RuntimeError("the batcher is not running") from self._failed
        done = trio.Event()
        self._pending.append((item, done))
        self._wake.set()
        await done.wait()
        if self._failed is not None:
            raise RuntimeError("the batch holding this item failed") from self._failed

    async def _run(self) -> None:
        while self._pending or not self._closing:
            if not self._pending:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            batch = self._pending[: self._limit]
            del self._pending[: self._limit]
            try:
                # Not abandoned on cancel: a batch in progress always finishes or unwinds.
                await trio.to_thread.run_sync(self._handle, [item for item, _ in batch])
            except BaseException as exc:
                self._failed = exc
                for _, done in (*batch, *self._pending):
                    done.set()
                raise
            for _, done in batch:
                done.set()

    @classmethod
    @asynccontextmanager
    async def running(
        cls, handle: Callable[[Sequence[T]], None], limit: int
    ) -> AsyncIterator[Batcher[T]]:
        """A batcher whose handling task lives as long as the block; on a clean exit, what
        was submitted is handled before the block ends."""
        batcher = cls(handle, limit)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher._run)
            try:
                yield batcher
            finally:
                batcher._closing = True
                batcher._wake.set()

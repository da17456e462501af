"""The sync engine: detect -> plan -> execute, for push, pull, status and purge.

One engine serves the CLI and the mount daemon. It owns the order of the steps and the
guards that stop a run before it can destroy data; the steps live in their own modules.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import trio

from fusesync.config import Target
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.errors import BucketNotFound, FusesyncError, SafetyStop, one_error
from fusesync.index import Index
from fusesync.remote.base import Remote
from fusesync.sync import base as columns
from fusesync.sync.guards import (
    guard_deletes,
    guard_empty_remote,
    prepare_remote,
)
from fusesync.sync.head_start import Looked
from fusesync.sync.localfs import Tree
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import Kind
from fusesync.sync.plan import (
    REMOTE_MOVED,
    REMOTE_SIDE_COLUMNS,
    Action,
    Op,
    Side,
    excluded,
    plan_pull,
    planned_push,
    remote_side,
    sql_functions,
)
from fusesync.sync.pull import Puller
from fusesync.sync.push import Pusher
from fusesync.sync.ranges import last_listing
from fusesync.sync.remote_scan import RemoteScan, list_remote, record_remote
from fusesync.sync.report import NoProgress, Progress, Report
from fusesync.sync.scan import LOCAL_COLUMNS, ScanResult, scan_paths, scan_tree
from fusesync.sync.sealed import Sealing

DEFAULT_MAX_DELETE = 0.5
DEFAULT_CONCURRENCY = 32
_MOVED_COLUMNS = ("path", *REMOTE_SIDE_COLUMNS, *LOCAL_COLUMNS)
"""What pull's detect reads of each row the remote moved: remote_side, excluded (kinds),
and the local state scan_paths compares with."""


@dataclass
class Status:
    push: list[Action] = field(default_factory=list)
    pull: list[Action] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Engine:
    """Runs one verb on one target. The caller holds the target's lock."""

    def __init__(
        self,
        target: Target,
        index: Index,
        remote: Remote,
        progress: Progress | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        root_fd: int | None = None,
        passphrase: PassphraseSource | None = None,
    ) -> None:
        """`root_fd`: the target directory, already open (the mount daemon's kept
        descriptor, beneath its own mount); by default the CLI opens `target.path`.
        `passphrase`: where encrypted files' passphrase comes from; None: they are skipped."""
        self.target = target
        self.index = index
        self.remote = remote
        self.progress = progress or NoProgress()
        self.concurrency = concurrency
        self.exclude = PathMatcher(target.exclude)
        self.root_fd = root_fd
        sql_functions(index.conn)
        self.sealing = Sealing(target, remote, passphrase, spool=target.state_dir)

    # -- detect ----------------------------------------------------------------------

    def open_tree(self) -> Tree:
        """The target directory, held open for one run."""
        if self.root_fd is not None:
            return Tree(self.root_fd)
        path = self.target.path
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:  # a FUSE mount whose daemon is gone
                raise FusesyncError(
                    f"'{path}' is a mount whose daemon died: run "
                    f"'fusesync unmount {self.target.name}' (nothing written is lost)"
                ) from exc
            raise FusesyncError(f"directory '{path}' does not exist") from exc
        if not is_dir:
            raise FusesyncError(f"'{path}' is not a directory")
        return Tree(path)

    async def scan_local(self) -> ScanResult:
        with self.open_tree() as tree:
            return await trio.to_thread.run_sync(scan_tree, tree.fd, self.index, self.exclude)

    async def _detect_both(self) -> tuple[RemoteScan, ScanResult]:
        """List the remote while the tree is scanned; record the listing only once it is
        complete, so a refused or broken listing changes no base."""
        found: dict[str, Any] = {}
        last = last_listing(self.index, self.target)

        async def remote_side() -> None:
            found["remote"] = await list_remote(self.remote, self.target, self.exclude, last)

        with one_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(remote_side)
                scan = await self.scan_local()
        rows, listing = found["remote"]
        record_remote(self.index, rows, listing)
        return listing, scan

    async def _detect_remote_first(self) -> tuple[RemoteScan, ScanResult, bool]:
        """Pull's detect: list the remote, then look at only the local paths whose remote
        side moved from the base. Pull acts on no other path (DESIGN.md's table), so a
        pull with nothing new costs one listing, whatever the size of the tree. The flag:
        whether any path moved (none: plan_pull would find nothing to do)."""
        rows, listing = await list_remote(self.remote, self.target, self.exclude,
                                          last_listing(self.index, self.target))
        record_remote(self.index, rows, listing)
        moved = {
            row["path"]: tuple(row[name] for name in LOCAL_COLUMNS)
            for row in self.index.rows(REMOTE_MOVED, columns=_MOVED_COLUMNS)
            if remote_side(row) not in (Side.SAME, Side.ABSENT)
            and not excluded(self.exclude, row)
        }
        with self.open_tree() as tree:
            scan = await trio.to_thread.run_sync(
                scan_paths, tree.fd, self.index, moved, self.exclude
            )
        return listing, scan, bool(moved)

    # -- plan ------------------------------------------------------------------------

    def plan_push(self, remote_listed: bool) -> list[Action]:
        return planned_push(self.index, self.exclude, remote_listed)

    def plan_pull(self) -> list[Action]:
        actions = []
        for row in self.index.rows(REMOTE_MOVED):  # pull acts on no other row
            action = plan_pull(row)
            if action is not None and not excluded(self.exclude, row):
                actions.append(action)
        return actions

    def _synced_files(self) -> int:
        return self.index.count("base_kind IS NOT NULL AND base_kind != 'dir'")

    # -- verbs -----------------------------------------------------------------------

    async def push(self, dry_run: bool = False, max_delete: float = DEFAULT_MAX_DELETE,
                   looked: Looked | None = None) -> Report:
        """`looked`: the run's look at the tree so far (sync/head_start.py)."""
        report = looked.report if looked is not None else Report("push", dry_run=dry_run)
        if looked is not None and looked.scan is not None and looked.actions is not None:
            scan, actions = looked.scan, looked.actions
        else:
            scan = await self.scan_local()
            actions = self.plan_push(remote_listed=False)
        report.skipped.extend(scan.skipped)
        actions += [a for a in self.sealing.unsealed(self.index, actions)
                    if a.row is not None and not excluded(self.exclude, a.row)]
        guard_deletes(actions, Op.DELETE_REMOTE, max_delete, self._synced_files)
        if dry_run:
            report.planned = actions
            return report.done()
        if actions:
            await prepare_remote(self.index, self.remote, self.target)
            actions = await self.sealing.admit_push(actions, report)  # asks, if it must
            self.index.set_meta("push_running", "1")
            self.progress.start(
                sum(1 for a in actions if a.op == Op.UPLOAD and a.kind != Kind.DIR),
                sum(a.size for a in actions if a.op == Op.UPLOAD),
            )
            pusher = Pusher(self.target, self.index, self.remote, report, self.progress,
                            self.sealing)
            await pusher.run(actions, self.concurrency)
            self.progress.finish()
            self.index.set_meta("push_running", "")
        self.sealing.checked(self.index, report)
        self.index.prune()
        return report.done()

    async def pull(self, dry_run: bool = False, max_delete: float = DEFAULT_MAX_DELETE) -> Report:
        report = Report("pull", dry_run=dry_run)
        if self.index.meta("pull_running"):  # the last pull was cut short: look everywhere
            listing, scan = await self._detect_both()
            moved = True
        else:
            listing, scan, moved = await self._detect_remote_first()
        report.skipped.extend(listing.skipped)
        report.skipped.extend(scan.skipped)
        guard_empty_remote(listing.empty, self.index, self.target)
        # nothing moved: no second walk of every row through remote_sig (8 ms at 5,000)
        actions = self.plan_pull() if moved else []
        guard_deletes(actions, Op.DELETE_LOCAL, max_delete, self._synced_files)
        if dry_run:
            report.planned = actions
            return report.done()
        actions = await self.sealing.admit_pull(actions, report)  # asks, if it must
        self.progress.start(
            sum(1 for a in actions if a.op == Op.FETCH and a.kind != Kind.DIR),
            sum(a.size for a in actions if a.op in (Op.FETCH, Op.CONFLICT)),
        )
        self.index.set_meta("pull_running", "1")
        with self.open_tree() as tree:
            for leftover in scan.leftovers:
                await trio.to_thread.run_sync(tree.remove_leftover, leftover)
            puller = Puller(self.target, self.index, self.remote, tree, report, self.progress,
                            self.sealing)
            await puller.run(actions, self.concurrency)
        self.index.set_meta("pull_running", "")
        self.progress.finish()
        self.index.prune()
        return report.done()

    async def status(self) -> Status:
        try:
            listing, scan = await self._detect_both()
        except BucketNotFound:  # nothing pushed yet: push will create the bucket
            scan = await self.scan_local()
            return Status(push=self.plan_push(remote_listed=False), skipped=scan.skipped,
                          notes=[f"bucket '{self.remote.bucket}' does not exist yet; "
                                 "push creates it"])
        return Status(
            push=self.plan_push(remote_listed=True),
            pull=self.plan_pull(),
            skipped=[*listing.skipped, *scan.skipped],
        )

    async def purge(self) -> int:
        """Delete every object under the prefix and the manifest; forget every base."""
        prefix = self.target.prefix
        if not prefix.strip("/") or prefix.count("/") < 3:
            raise SafetyStop(f"refusing to purge '{prefix}': not a target's prefix")
        keys = [obj.key async for obj in self.remote.list(prefix)]
        await self.remote.delete_many([*keys, self.target.manifest_key, self.target.keyring_key])
        with self.index.transaction():
            self.index.update_where("1", (), **columns.NO_BASE, **columns.NO_REMOTE)
            self.index.prune()
        return len(keys)

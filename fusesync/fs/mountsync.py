"""push, pull and status inside the mount daemon, on the same engine steps as the CLI's.

Push reads only the journal's dirty rows (its cost grows with the changes, not the tree)
and clears what it carried. Pull lists the remote into the index and leaves new remote
files remote-only (fetched on first open); a clean local copy that went stale is evicted,
one open meanwhile is fetched in place. Afterwards the kernel forgets what changed.
This module never reaches the tree through the mount: only through the kept descriptor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from fusesync.config import Target
from fusesync.errors import FusesyncError
from fusesync.fs import moves, output
from fusesync.fs.journal import Journal, is_remote_entry
from fusesync.fs.overlay import Overlay
from fusesync.index import Index, Row
from fusesync.remote.base import Remote
from fusesync.sync import base as columns
from fusesync.sync.engine import DEFAULT_CONCURRENCY, DEFAULT_MAX_DELETE, Status
from fusesync.sync.guards import (
    guard_deletes,
    guard_empty_remote,
    prepare_remote,
)
from fusesync.sync.localfs import Tree, UnsafePath
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.model import Kind, kind_of
from fusesync.sync.plan import (
    EMPTIED_FOLDER,
    REMOTE_MOVED,
    Action,
    Op,
    excluded,
    keep_emptied,
    plan_pull,
    plan_push,
    sql_functions,
)
from fusesync.sync.pull import Puller, local_version
from fusesync.sync.push import ManifestCache, Pusher
from fusesync.sync.ranges import last_listing
from fusesync.sync.remote_scan import RemoteScan, list_remote, record_remote, scan_remote
from fusesync.sync.report import NoProgress, Report
from fusesync.sync.scan import LOCAL_COLUMNS, md5_file, md5_text
from fusesync.sync.sealed import Sealing

NEVER_FETCHED = "local_kind IS NULL AND base_kind IS NULL AND dirty = 0"
"""SQL for a remote-only entry never fetched here: shown from its remote row alone, with
no base (an evicted file keeps the base it was fetched at)."""

MOVES_WAITING = "remote_from IS NOT NULL"
"""SQL for the rows of renamed remote-only entries whose objects wait to be copied."""
LISTED = "path IN (SELECT value FROM json_each(?))"
"""SQL for the rows whose paths are in a JSON list (the one parameter)."""

Invalidate = Callable[[list[tuple[int, str, int | None]]], Awaitable[None]]
log = logging.getLogger("fusesync.mount")

class MountService:
    """The daemon's push, pull and status; one at a time."""

    def __init__(self, target: Target, index: Index, remote: Remote, overlay: Overlay,
                 journal: Journal, invalidate: Invalidate, sealing: Sealing | None = None
                 ) -> None:
        """`sealing`: the daemon's encryption (its passphrase, if it was given one)."""
        self.target = target
        self.sealing = sealing or Sealing(target, remote, None)
        self.index = index
        sql_functions(index.conn)  # REMOTE_MOVED's
        self.remote = remote
        self.overlay = overlay
        self.journal = journal
        self.invalidate = invalidate
        self.exclude = PathMatcher(target.exclude)
        self.tree_path = Path(f"/proc/self/fd/{overlay.root_fd}")  # beneath the mount
        self._busy = trio.Lock()
        # the manifest as this daemon last wrote it: a push after one change then costs no
        # fetch and decode of every path's entry, and encodes only the shards it touches
        self.manifest = ManifestCache()

    async def first_pull(self) -> Report:
        """The pull a mount begins with (fs/daemon.py), as a forwarded one runs."""
        async with self._busy:
            with self.overlay.changing():
                return await self.pull(False, DEFAULT_MAX_DELETE)

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        verb = request.get("verb")
        async with self._busy:
            with self.overlay.changing():  # a pull changes the tree behind the requests
                return await self._handle(verb, request)

    async def _handle(self, verb: object, request: dict[str, Any]) -> dict[str, Any]:
        if verb == "push" or verb == "pull":
            run = self.push if verb == "push" else self.pull
            report = await run(bool(request.get("dry_run")),
                               float(request.get("max_delete", DEFAULT_MAX_DELETE)))
            return {"status": report.exit_status,
                    "output": output.sync_text(self.target, report)}
        if verb == "status":
            status = await self.status()
            remote_only = self.index.count(
                "local_kind IS NULL AND remote_kind IN ('file', 'symlink') AND dirty = 0"
            )
            if self.overlay.fetcher is not None:  # being fetched: no longer remote-only
                remote_only = max(0, remote_only - len(self.overlay.fetcher.active))
            return {"status": 0, "output": output.status_text(
                self.target, status, bool(request.get("json")), remote_only)}
        return {"status": 2, "output": f"fusesync: the mount does not forward '{verb}'\n"}

    # -- detect: the journal instead of a scan ------------------------------------------

    async def detect(self, rows: Sequence[Row]) -> list[tuple[str, str]]:
        """Record the local state of the journaled paths; returns paths skipped (why),
        whose rows keep their last known local state (an unreadable file is no delete)."""
        skipped: list[tuple[str, str]] = []

        def look() -> list[tuple[Any, ...]]:
            values = []
            with Tree(self.overlay.root_fd) as tree:
                for row in rows:
                    found = _local_values(tree, row, skipped)
                    if found is not None:
                        values.append((row["path"], *found))
            return values

        values = await trio.to_thread.run_sync(look)
        with self.index.transaction():
            self.index.upsert_many(LOCAL_COLUMNS, values)
        return skipped

    def _synced_files(self) -> int:
        # Remote-only entries count as synced: in the mount they simply are not fetched.
        return self.index.count("coalesce(base_kind, remote_kind) IN ('file', 'symlink')")

    # -- push --------------------------------------------------------------------------

    async def push(self, dry_run: bool, max_delete: float) -> Report:
        report = Report("push", dry_run=dry_run)
        if not dry_run:
            await self.carry_moves(report)
        upto = self.journal.snapshot()
        rows = self.journal.dirty_rows(upto)
        skipped = await self.detect(rows)
        report.skipped.extend(skipped)
        left = {path for path, _ in skipped}
        actions = []
        journaled = self._journaled(upto, left)  # as detect left them
        for row in journaled:
            action = plan_push(row, remote_listed=False)
            if action is not None and not excluded(self.exclude, row):
                actions.append(action)
        # a folder emptied through the mount: only the folders of what changed can be
        emptied = self.index.rows(
            f"{LISTED} AND {EMPTIED_FOLDER}",
            (json.dumps(sorted({row["parent"] for row in journaled})),),
        )
        actions += keep_emptied((r for r in emptied if not excluded(self.exclude, r)), actions)
        guard_deletes(actions, Op.DELETE_REMOTE, max_delete, self._synced_files)
        if dry_run:
            report.planned = actions
            return report.done()
        if actions:
            await prepare_remote(self.index, self.remote, self.target)
            actions = await self.sealing.admit_push(actions, report)  # no key: left dirty
            self.index.set_meta("push_running", "1")
            target = dataclasses.replace(self.target, path=self.tree_path)
            pusher = Pusher(target, self.index, self.remote, report, NoProgress(), self.sealing)
            pusher.manifest_cache = self.manifest
            await pusher.run(actions, DEFAULT_CONCURRENCY)
            self.index.set_meta("push_running", "")
        self._settle_journal(upto, left)
        self.index.prune()
        return report.done()

    def _journaled(self, upto: int, left: set[str]) -> list[Row]:
        """The rows marked as of journal number `upto`, but those in `left`, as they are
        now: one query, not one a path (1,000 new files: 1,000 lookups, twice a push)."""
        return [row for row in self.journal.dirty_rows(upto) if row["path"] not in left]

    async def carry_moves_alone(self) -> None:
        """carry_moves as a run of its own (at unmount), never beside a forwarded one."""
        async with self._busy:
            await self.carry_moves(Report("push"))

    async def carry_moves(self, report: Report) -> None:
        """Copy on the server what renames moved as rows only (moves.py); first thing in
        every run that looks at the remote, so no listing sees a half-carried rename."""
        await moves.carry_moves(self.journal, self.remote, self.target, report,
                                DEFAULT_CONCURRENCY, self.manifest)

    def _settle_journal(self, upto: int, left: set[str]) -> None:
        """Clear the marks push has carried (journal number `upto` and before, but paths
        in `left`); keep them where work is left."""
        moving = {row["remote_from"] for row in self.journal.moves()}
        with self.index.transaction():
            for row in self._journaled(upto, left):
                path = row["path"]
                if path in moving:
                    continue  # the old path of a move not carried yet: stays hidden
                action = plan_push(row, remote_listed=False)
                if action is not None and action.op == Op.KEEP_REMOTE:
                    self.index.upsert(path, **columns.NO_BASE)  # the remote copy stays: show it
                    action = None
                if action is None or excluded(self.exclude, row):
                    self.journal.clear(path, upto)

    # -- pull --------------------------------------------------------------------------

    async def pull(self, dry_run: bool, max_delete: float) -> Report:
        report = Report("pull", dry_run=dry_run)
        if dry_run:
            return await self._dry_pull(report, max_delete)
        await self._moves_carried(report)
        listing = await scan_remote(self.remote, self.target, self.index, self.exclude)
        report.skipped.extend(listing.skipped)
        report.skipped.extend(await self.detect(self.journal.dirty_rows(self.journal.seq)))
        guard_empty_remote(listing.empty, self.index, self.target)
        actions = self._pull_actions(())
        guard_deletes(actions, Op.DELETE_LOCAL, max_delete, self._synced_files)
        report.shown = self.index.count(
            f"({NEVER_FETCHED}) AND remote_kind IS NOT NULL AND {LISTED}",
            (json.dumps(listing.moved),))
        open_paths = self._open_paths(writable=False)
        writing = self._open_paths(writable=True)
        delegated: list[Action] = []
        with Tree(self.overlay.root_fd) as tree:
            absent = AbsentPaths(tree)
            for action in actions:
                row = action.row  # as planned: the loop changes no row but its own
                assert row is not None, "plans carry their rows"
                if action.path in writing and action.op in (Op.FETCH, Op.DELETE_LOCAL):
                    # replacing or removing it would strand what is written through the
                    # open handle; left for the next pull
                    report.skipped.append((action.path, "open for writing here; pull again "
                                           "once it is closed"))
                elif action.op != Op.FETCH or action.path in open_paths:
                    delegated.append(action)
                elif absent(action.path):
                    if row["dirty"] and row["base_kind"] is not None:  # deleted here: restore
                        self.index.upsert(action.path, **columns.NO_BASE, dirty=0)
                elif action.kind == Kind.DIR:
                    delegated.append(action)
                elif tree.remove(action.path, local_version(row)):
                    self.journal.evicted(action.path)  # stale and clean: remote-only again
                else:
                    report.skipped.append((action.path, "changed locally; kept"))
            delegated = await self.sealing.admit_pull(delegated, report)
            puller = Puller(self.target, self.index, self.remote, tree, report, NoProgress(),
                            self.sealing)
            await puller.run(delegated, DEFAULT_CONCURRENCY)
        self.index.prune()
        self.overlay.dirs.clear()
        await self.forget_in_kernel(sorted({*(a.path for a in actions), *listing.moved}))
        return report.done()

    async def _dry_pull(self, report: Report, max_delete: float) -> Report:
        """What pull would do, planned from a listing recorded only while it is planned
        from (Index.undone): the mount shows nothing new after it, and no pending move is
        carried to the remote."""
        rows, listing, skipped = await self._listed_aside()
        report.skipped.extend(skipped)
        with self.index.undone():
            record_remote(self.index, rows, listing)
            guard_empty_remote(listing.empty, self.index, self.target)
            actions = self._pull_actions(listing.moved)
        guard_deletes(actions, Op.DELETE_LOCAL, max_delete, self._synced_files)
        report.planned = actions
        return report.done()

    async def _listed_aside(self) -> tuple[dict[str, tuple[Any, ...]] | None, RemoteScan,
                                           list[tuple[str, str]]]:
        """The remote listed but not recorded (`record_remote` inside `Index.undone`, by
        the caller), the journaled paths looked at, and what both skipped: what a dry run
        and a status plan from."""
        rows, listing = await list_remote(self.remote, self.target, self.exclude,
                                          last_listing(self.index, self.target))
        skipped = await self.detect(self.journal.dirty_rows(self.journal.seq))
        return rows, listing, [*listing.skipped, *skipped]

    def _pull_actions(self, shown: Sequence[str]) -> list[Action]:
        return [a for row in self._moved_rows(shown)
                if (a := plan_pull(row)) is not None and not excluded(self.exclude, row)]

    def _moved_rows(self, shown: Sequence[str]) -> list[Row]:
        """The rows pull acts on (REMOTE_MOVED), but of the entries never fetched only those
        in `shown` (what a dry run's listing changed, to show them): with no base, every
        one of them counts as moved at every pull, and a pull with nothing new cost a plan
        of each (40 ms at 5,000 paths) and dropped every name the kernel had cached. A pull
        itself has nothing to do for them (each stays remote-only, absent from the tree, as
        the listing recorded it): a first pull of 5,000 entries planned each for nothing,
        ~40 ms."""
        return list(self.index.rows(f"(NOT ({NEVER_FETCHED}) OR {LISTED}) AND ({REMOTE_MOVED})",
                                    (json.dumps(shown),)))

    def _open_paths(self, writable: bool) -> set[str]:
        nodes = self.overlay.handles.open_nodes(writable)
        return {node.path for node in nodes if not node.detached}

    async def forget_in_kernel(self, paths: list[str]) -> None:
        """Tell the kernel to drop the names and cached data of `paths` (changed behind
        its back by a pull or an eviction)."""
        entries: dict[tuple[int, str, int | None], None] = {}  # once each: a first pull's
        for path in paths:  # thousands of paths all name the few top-level folders
            # The deepest folder on the way the kernel may know, and the next name in it:
            # the path's own parent and name, or the first folder new to the kernel (its
            # parent's listing lacks it).
            parent = self.overlay.inodes.root
            parts = path.split("/")
            for depth, name in enumerate(parts):
                node = parent.children.get(name)
                if node is None or depth == len(parts) - 1:
                    break
                parent = node
            entries[parent.inode, name, node.inode if node is not None else None] = None
        if entries:
            await self.invalidate(list(entries))

    # -- status ------------------------------------------------------------------------

    async def _moves_carried(self, report: Report) -> None:
        """Carry pending moves, or stop: a listing would drop the entries still waiting."""
        await self.carry_moves(report)
        waiting = self.index.count(MOVES_WAITING)
        if waiting:
            problems = "; ".join(f"{p}: {why}" for p, why in [*report.conflicts, *report.skipped])
            raise FusesyncError(f"{waiting} renamed remote-only entries could not be copied "
                                f"to their new paths on the remote ({problems}); nothing else "
                                "was done")

    async def status(self) -> Status:
        """Planned, as a dry run is, from a listing recorded only while it is planned from:
        the mount shows nothing new after it, and no pending move is carried."""
        rows, listing, skipped = await self._listed_aside()
        result = Status(skipped=skipped)
        with self.index.undone():
            record_remote(self.index, rows, listing)
            new = set(listing.moved)
            for row in self.index.rows():
                if excluded(self.exclude, row):
                    continue
                push = plan_push(row, remote_listed=True)
                if push is not None:
                    result.push.append(push)
                pull = plan_pull(row)
                # an entry the mount shows already, never fetched, is no pull to do (it
                # has no base: it would count as new at every status)
                shown = row["local_kind"] is None and is_remote_entry(row) \
                    and row["path"] not in new
                if pull is not None and not (pull.op == Op.FETCH and shown):
                    result.pull.append(pull)
        return result


def _local_values(tree: Tree, row: Row, skipped: list[tuple[str, str]]
                  ) -> tuple[Any, ...] | None:
    """The local columns for one path as a scan would record them, or None when it cannot
    be read (reported in `skipped`). Blocks."""
    path = row["path"]
    st = tree.lstat(path)
    kind = kind_of(st.st_mode) if st is not None else None
    if st is None or kind is None:
        if st is not None:
            skipped.append((path, "special file (fifo, socket or device)"))
        return (None,) * len(LOCAL_COLUMNS)
    md5: str | None = None
    target: str | None = None
    try:
        with tree.parent_dir(path) as (dir_fd, name):
            if kind == Kind.FILE:
                same = (row["local_md5"] is not None and row["local_size"] == st.st_size
                        and row["local_mtime_ns"] == st.st_mtime_ns
                        and row["local_ctime_ns"] == st.st_ctime_ns
                        and row["local_ino"] == st.st_ino and row["local_mode"] == st.st_mode)
                md5 = row["local_md5"] if same else md5_file(name, dir_fd=dir_fd)
            elif kind == Kind.SYMLINK:
                target = os.readlink(name, dir_fd=dir_fd)
                md5 = md5_text(target)
    except (OSError, UnsafePath) as exc:
        skipped.append((path, f"unreadable: {getattr(exc, 'strerror', None) or exc}"))
        return None
    return (kind.value, st.st_size if kind != Kind.DIR else 0, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino, st.st_mode, st.st_uid, st.st_gid, md5, target)


class AbsentPaths:
    """Whether nothing stands at a path of `tree`; the paths of a first pull into an empty
    tree (thousands) are answered from their missing parent, without a walk each."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.missing: set[str] = set()  # paths found absent: nothing below them exists

    def __call__(self, path: str) -> bool:
        if path.rpartition("/")[0] in self.missing:
            self.missing.add(path)
            return True
        if self.tree.lstat(path) is None:
            self.missing.add(path)
            return True
        return False

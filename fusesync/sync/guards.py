"""Steps every run shares, whether the CLI or the mount daemon drives it: which rows a
target excludes, the delete guard, and readying the remote before the first write.
"""

from __future__ import annotations

from collections.abc import Callable

from fusesync.config import Target
from fusesync.errors import SafetyStop
from fusesync.index import Index
from fusesync.remote.base import Remote
from fusesync.sync.model import Kind
from fusesync.sync.plan import Action, Op


def guard_empty_remote(listed_nothing: bool, index: Index, target: Target) -> None:
    """Stop a pull whose listing found nothing while paths were synced from the remote
    before (purged elsewhere, or the wrong bucket): it would delete them all here."""
    if listed_nothing and (synced := index.count("base_kind IS NOT NULL")):
        raise SafetyStop(
            f"the remote {target.url} is empty but {synced} paths were synced from it "
            "before (purged elsewhere, or the wrong bucket?); nothing was deleted"
        )


def guard_deletes(actions: list[Action], op: Op, max_delete: float,
                  synced_files: Callable[[], int]) -> None:
    """Stop before a run deletes more than `max_delete` of the files synced so far (a
    count of every row: asked for only when the run deletes anything)."""
    deletes = sum(1 for a in actions if a.op == op and a.kind != Kind.DIR)
    if deletes and deletes > max_delete * (synced := synced_files()):
        raise SafetyStop(
            f"this run would delete {deletes} of {synced} synced files "
            f"(more than {max_delete:.0%}); nothing was changed. "
            "Check the target, then rerun with --max-delete 100% to allow it"
        )


async def prepare_remote(index: Index, remote: Remote, target: Target) -> None:
    """Create a missing bucket once; abort the multipart uploads a killed push left."""
    if not index.meta("bucket_ok"):
        if not await remote.bucket_exists():
            await remote.create_bucket()
        index.set_meta("bucket_ok", "1")
    if index.meta("push_running"):
        await remote.abort_multipart_uploads(target.prefix)

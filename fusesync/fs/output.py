"""The text of push, pull and status when the mount daemon runs them for the CLI.

The same lines cli.py prints for a run of its own (the original tool's look), so a
forwarded command reads exactly like a local one. Pure functions: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from fusesync.config import Target
from fusesync.sync.engine import Status
from fusesync.sync.plan import Action
from fusesync.sync.report import Report


def sync_text(target: Target, report: Report) -> str:
    if report.verb == "push":
        lines = [f" > Synchronizing directory '{target.path}' to {target.url}"]
    else:
        lines = [f" > Synchronizing {target.url} to directory '{target.path}'"]
    lines.append("    Permissions ... OK")
    lines.append("           Sync ... " + ("(dry run)" if report.dry_run else "OK"))
    lines += [f"   would {action.op.value}: {action.path}" for action in report.planned]
    lines += report.problem_lines()
    lines.append(f"   {report.summary()}")
    return "\n".join(lines) + "\n"


def _rows(actions: list[Action]) -> list[dict[str, Any]]:
    return [{"op": a.op.value, "path": a.path, "kind": a.kind, "reason": a.reason}
            for a in actions]


def status_text(target: Target, status: Status, as_json: bool, remote_only: int = 0) -> str:
    if as_json:
        return json.dumps({
            "target": target.name, "path": str(target.path), "url": target.url,
            "push": _rows(status.push), "pull": _rows(status.pull),
            "skipped": [{"path": p, "reason": r} for p, r in status.skipped],
            "mounted": True, "remote_only": remote_only,
        }, indent=2) + "\n"
    lines = [f" > Status of '{target.name}': {target.path} <-> {target.url} (mounted)"]
    if not (status.push or status.pull or status.skipped):
        lines.append("   in step: nothing to push or pull")
    lines += [f"   push {a.op.value}: {a.path}" for a in status.push]
    lines += [f"   pull {a.op.value}: {a.path}" for a in status.pull
              if a.op.value != "conflict" or a not in status.push]
    lines += [f"   skipped: {path}: {reason}" for path, reason in status.skipped]
    if remote_only:
        lines.append(f"   remote-only: {remote_only} files, fetched on first open")
    return "\n".join(lines) + "\n"

"""What a run did, for the summary line, --json and the exit status. No I/O here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from fusesync.sync.plan import Action


class Progress(Protocol):
    """Told about transfers as they finish; the CLI draws a bar on a terminal."""

    def start(self, files: int, size: int) -> None: ...
    def advance(self, files: int = 0, size: int = 0) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, files: int, size: int) -> None:
        pass

    def advance(self, files: int = 0, size: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Report:
    verb: str
    dry_run: bool = False
    uploaded: int = 0
    uploaded_bytes: int = 0
    downloaded: int = 0
    downloaded_bytes: int = 0
    deleted: int = 0
    shown: int = 0
    """A pull through the mount: entries its listing brought or changed that the mount now
    shows, remote-only (each fetched on its first open)."""
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    planned: list[Action] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def done(self) -> Report:
        self.elapsed = time.monotonic() - self.started
        return self

    @property
    def exit_status(self) -> int:
        return 3 if self.conflicts or self.skipped else 0

    def problem_lines(self) -> list[str]:
        """A line for each path left as a conflict, then for each one skipped: what push
        and pull print above their summary line, forwarded or not, and a mount's pull."""
        return ([f"   conflict: {path}: {reason}" for path, reason in self.conflicts]
                + [f"   skipped: {path}: {reason}" for path, reason in self.skipped])

    def summary(self) -> str:
        if self.verb == "push":
            moved = f"{self.uploaded} uploaded ({human_size(self.uploaded_bytes)})"
        else:
            moved = f"{self.downloaded} downloaded ({human_size(self.downloaded_bytes)})"
            if self.shown:
                moved += f", {self.shown} shown remote-only"
        n = len(self.conflicts)
        text = (
            f"{moved}, {self.deleted} deleted, {n} conflict{'s' if n != 1 else ''}"
            f" in {self.elapsed:.1f} s"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "verb": self.verb,
            "dry_run": self.dry_run,
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "downloaded": self.downloaded,
            "downloaded_bytes": self.downloaded_bytes,
            "deleted": self.deleted,
            "shown": self.shown,
            "conflicts": [{"path": p, "reason": r} for p, r in self.conflicts],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "planned": [
                {"op": a.op.value, "path": a.path, "kind": a.kind, "size": a.size}
                for a in self.planned
            ],
        }


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")

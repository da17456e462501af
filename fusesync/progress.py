"""A progress bar of files and bytes for long transfers, drawn only on a terminal."""

from __future__ import annotations

import threading

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class TerminalProgress:
    """Implements fusesync.sync.report.Progress with rich; safe to call from threads."""

    def __init__(self, label: str) -> None:
        self._lock = threading.Lock()
        self._files_total = 0
        self._files_done = 0
        self._bar = Progress(
            TextColumn(f"   {label}"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._bar.add_task(label, total=None, files="")

    def start(self, files: int, size: int) -> None:
        if not files:
            return
        self._files_total = files
        self._bar.update(self._task, total=max(size, 1), files=f"0/{files}")
        self._bar.start()

    def advance(self, files: int = 0, size: int = 0) -> None:
        with self._lock:
            self._files_done += files
            self._bar.update(
                self._task, advance=size, files=f"{self._files_done}/{self._files_total}"
            )

    def finish(self) -> None:
        self._bar.stop()

"""A target's index: its schema, typed queries, and the lock that makes one owner."""

from fusesync.index.db import Index, IndexUnusable, NoSuchRow, Row, RowWriter
from fusesync.index.lock import TargetLock

__all__ = ["Index", "IndexUnusable", "NoSuchRow", "Row", "RowWriter", "TargetLock"]

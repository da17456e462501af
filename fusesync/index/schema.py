"""The index's on-disk format: one commented block per version, applied in order.

This is the canonical reference for what every column means. A change of format is a new
entry in MIGRATIONS, never an edit of an old one: indexes in the field run them in order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

# Version 1. Paths are relative POSIX paths inside the target's directory: no leading or
# trailing '/', never '' or '.', components as the file system spells them (UTF-8).
V1 = """
CREATE TABLE paths (
    path        TEXT PRIMARY KEY,
    parent      TEXT NOT NULL,  -- path of the containing directory; '' for the top level

    -- The base: what both sides held after the last successful push or pull of this path.
    -- base_kind NULL means there is no base (never synced, or forgotten after a conflict).
    base_kind     TEXT,         -- 'file' | 'dir' | 'symlink'
    base_md5      TEXT,         -- files: hex MD5 of the content; symlinks: of the target
    base_size     INTEGER,
    base_mode     INTEGER,      -- permission bits (0o7777) as they stood locally
    base_uid      INTEGER,
    base_gid      INTEGER,
    base_owner    TEXT,         -- user and group names, so a cluster with other ids can map
    base_group    TEXT,
    base_mtime_ns INTEGER,      -- local mtime; NULL for directories (their mtime is noise)
    base_target   TEXT,         -- symlinks: the link's target
    base_etag     TEXT,         -- the object's etag (unquoted); NULL for a dir with no marker
    base_rsig     TEXT,         -- the remote side's signature at sync: etag, mode, ids, mtime

    -- What the last scan of the local tree saw. local_kind NULL: absent at that scan.
    -- A file whose (size, mtime_ns, ctime_ns, ino, mode) still match is not hashed again.
    local_kind     TEXT,
    local_size     INTEGER,
    local_mtime_ns INTEGER,
    local_ctime_ns INTEGER,
    local_ino      INTEGER,
    local_mode     INTEGER,     -- full st_mode, type bits included
    local_uid      INTEGER,
    local_gid      INTEGER,
    local_md5      TEXT,
    local_target   TEXT,

    -- The remote as last listed (LIST + manifest, HEAD for objects other tools wrote).
    -- remote_kind NULL: absent from that listing. A mount shows rows with a remote but
    -- no local state as remote-only entries.
    remote_kind   TEXT,
    remote_etag   TEXT,
    remote_size   INTEGER,
    remote_mode   INTEGER,      -- full st_mode from x-amz-meta-mode or the manifest
    remote_uid    INTEGER,
    remote_gid    INTEGER,
    remote_owner  TEXT,
    remote_group  TEXT,
    remote_mtime  REAL,         -- seconds
    remote_md5    TEXT,         -- content MD5 when known (manifest, or a single-part etag)
    remote_target TEXT,
    remote_marker INTEGER NOT NULL DEFAULT 0,  -- dirs: a 'path/' marker object exists

    -- The journal: set by the mount on every change made through it, cleared by push.
    dirty INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX paths_parent ON paths(parent);
CREATE INDEX paths_dirty ON paths(dirty) WHERE dirty != 0;

-- Small facts about the target: 'bucket_ok' (created or seen), 'push_running', ...
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 2: client-side encryption. A row whose remote object is ciphertext says so, so
# that pull decrypts it (or skips it without a passphrase) and never writes ciphertext as
# a file. For such a row remote_size is the plaintext's size and remote_md5 holds the
# object's keyed content tag ('k1:...', see fusesync/crypt/keys.py), never a bare MD5.
V2 = """
-- the object's encryption format ('fusesync-aes256gcm-v1'); NULL: plaintext
ALTER TABLE paths ADD COLUMN remote_enc TEXT;
"""


# Version 3: a directory renamed in a mount moves its remote-only entries at once, with no
# download: each new row still points at the object under the old path until push copies
# it there on the server and deletes the old one. The old row stays dirty meanwhile.
V3 = """
-- the path whose object holds this row's remote state; NULL: the row's own path
ALTER TABLE paths ADD COLUMN remote_from TEXT;
CREATE INDEX paths_moved ON paths(remote_from) WHERE remote_from IS NOT NULL;
"""


# Version 4: a run ends by dropping the rows that say nothing any more (prune). Found
# through an index of their own, that costs what the run emptied, not a walk of every row
# (6-7 ms at 50,000 paths, after each push through a mount).
V4 = """
CREATE INDEX paths_empty ON paths(path)
    WHERE base_kind IS NULL AND local_kind IS NULL AND remote_kind IS NULL;
"""


# Version 5: a pull that finds every key as the index holds it, and the manifest still the
# version the rows were built from (meta 'listed_manifest', asked with If-None-Match),
# keeps the rows as they are: the manifest is neither read nor decoded (10-25 ms of a pull
# at 5,000 paths). Any write of a remote_* column forgets that version, whoever makes it
# (a push recording what it uploaded, a rename in a mount, a re-key): the next listing
# rebuilds the rows from the manifest and names the version again.
_REMOTE_WRITTEN = "BEGIN DELETE FROM meta WHERE key = 'listed_manifest'; END;"
V5 = f"""
CREATE TRIGGER remote_inserted AFTER INSERT ON paths WHEN NEW.remote_kind IS NOT NULL
{_REMOTE_WRITTEN}
CREATE TRIGGER remote_updated AFTER UPDATE OF
    remote_kind, remote_etag, remote_size, remote_mode, remote_uid, remote_gid,
    remote_owner, remote_group, remote_mtime, remote_md5, remote_target, remote_marker,
    remote_enc, remote_from ON paths
{_REMOTE_WRITTEN}
CREATE TRIGGER remote_deleted AFTER DELETE ON paths WHEN OLD.remote_kind IS NOT NULL
{_REMOTE_WRITTEN}
"""


Migration = str | Callable[["sqlite_utils.Database"], None]
"""A schema script, run statement by statement; or, for a step that must reshape a table
(which SQLite's ALTER TABLE cannot), a function given sqlite-utils' Database for its
transform(). sqlite-utils is imported only for such a step: loading it took 43 ms, three
times the making of a new index."""

MIGRATIONS: tuple[Migration, ...] = (V1, V2, V3, V4, V5)
"""MIGRATIONS[i] takes an index from version i to version i + 1 (PRAGMA user_version),
inside one transaction."""


def statements(script: str) -> Iterator[str]:
    """Split a schema script into whole statements, as SQLite itself would."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()

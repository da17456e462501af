"""A run's head start: what a push or a pull does before Python imports trio and the engine.

A pull with nothing new is one listing and the manifest asked for conditionally; what it
waits for is the server (the listing of 5,000 keys, ~60 ms) and the import of trio and the
engine (~90 ms), one after the other. Here, with no trio and nothing that imports it, the
target is locked, its index opened, and the requests the listing begins with are sent on
the CRT's own threads (`CrtClient.send_early`): the first page of each range the last
listing gives (sync/ranges.py), and the manifest, conditionally when the index names the
version its rows came from. The engine then runs as ever and asks for the same requests;
their answers are taken instead of asked again (`CrtClient.send`). Only when the light
path needs nothing of boto3 (the environment's keys, a region known): otherwise nothing
leaves early.

Most pulls find nothing new (a login on a cluster whose home was pulled already). When
the manifest is still the version the index's rows came from, every range's first page
ends the range, the keys listed are the keys the index holds with the etags it holds,
and no row waits for a change pulled earlier, the engine would do nothing: `quiet_pull`
says so from these answers alone, and trio and the engine are never imported. Anything
else, or any doubt (an answer late, an error, a range longer than a page), and the
engine runs as ever, taking the same answers.

A push scans the tree and plans here (`look_before_push`): with nothing to send it is
over; with something, the engine goes on from that scan, and the manifest, which the
push reads back to merge its changes into, is asked for while trio is imported.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusesync.config import Settings, Target
from fusesync.index import Index, TargetLock

if TYPE_CHECKING:
    from fusesync.remote.crt import CrtClient
    from fusesync.sync.plan import Action
    from fusesync.sync.ranges import LastListing
    from fusesync.sync.report import Report
    from fusesync.sync.scan import ScanResult

TRANSFERS = 64
"""Requests in flight at once. Against SeaweedFS on 2 cores, 32 beat 16 by ~10%; 64 beat
32 by ~8% on a pull of the bench tree (3.2-3.5 s against 3.4-4.1, 8 runs each, in turn;
the server spent less CPU per request), as fast as 128 and 256 with less memory; a push
of everything is the server's CPU either way."""
QUIET_WAIT = 5.0
"""Seconds `quiet_pull` waits for the early answers; later ones are the engine's to wait
for (with its idle timeout) and to tell of."""


@dataclass
class Opened:
    """A target locked and its index open for one run, and the light path's client when
    requests were sent early on it (for the run's S3Remote to adopt)."""

    index: Index
    crt: CrtClient | None = None
    last: LastListing | None = None
    """The last listing whose ranges' first pages were sent early (None: none were)."""
    ranges: list[tuple[str | None, bytes | None]] | None = None


@contextmanager
def opened(settings: Settings, target: Target, activity: str, *,
           listing: bool | None = None) -> Iterator[Opened]:
    """Lock `target` and open its index; with `listing` (by default: for a pull, and a
    mount pulls as it starts unless told not to), send its listing's first requests."""
    with ExitStack() as stack:
        stack.enter_context(TargetLock(target.state_dir, target.name, activity))
        index = stack.enter_context(Index(target.state_dir / "index.db"))
        early = Opened(index)
        if listing is None:
            listing = activity == "pull"
        if listing:
            _early_listing(settings, target, early)
        yield early


def _early_listing(settings: Settings, target: Target, early: Opened) -> None:
    # here: a push loads none of it unless it has something to send
    from fusesync.remote.shapes import conditions, list_query
    from fusesync.sync.ranges import S3_PAGE, key_ranges, last_listing

    crt = early.crt = _light_client(settings)
    if crt is None:
        return
    last = last_listing(early.index, target)
    if not last.etags:  # a first pull: the manifest comes first, its paths cut the ranges,
        crt.send_early("GET", settings.bucket, target.manifest_key, "GetObject")
        crt.send_early("GET", settings.bucket, "", "ListObjectsV2",  # the first one from here
                       query=list_query(target.prefix, S3_PAGE, None, None))
        return
    early.last, early.ranges = last, key_ranges(list(last.etags), S3_PAGE)
    for start_after, _ in early.ranges:
        crt.send_early("GET", settings.bucket, "", "ListObjectsV2",
                       query=list_query(target.prefix, S3_PAGE, None, start_after))
    crt.send_early("GET", settings.bucket, target.manifest_key, "GetObject",
                   headers=conditions(if_none_match=last.manifest_etag))


def quiet_pull(early: Opened, settings: Settings, target: Target, dry_run: bool
               ) -> Report | None:
    """The report of a pull that has nothing to do, told from the early answers alone
    (module docstring), with what the listing skipped, as the engine would report it;
    None: the engine must run."""
    from fusesync.sync.report import Report

    report = Report("pull", dry_run=dry_run)
    crt, last, ranges = early.crt, early.last, early.ranges
    if crt is None or last is None or ranges is None or early.index.meta("pull_running"):
        return None  # (a pull cut short: the engine looks at both sides)
    if not _is_dir(target.path):
        return None  # the engine says what is wrong with it
    from xml.etree.ElementTree import ParseError

    from fusesync.remote.shapes import conditions, list_page, list_query
    from fusesync.sync.matcher import PathMatcher
    from fusesync.sync.plan import REMOTE_MOVED, sql_functions
    from fusesync.sync.ranges import S3_PAGE, Range, RangeCut, meet, settle

    deadline = time.monotonic() + QUIET_WAIT
    manifest = crt.early_reply("GET", settings.bucket, target.manifest_key,
                               headers=conditions(if_none_match=last.manifest_etag),
                               timeout=QUIET_WAIT)
    if manifest is None or manifest.status != 304:  # changed, or no version to compare
        return None
    taken: list[Range | None] = []
    for start_after, end in ranges:
        reply = crt.early_reply(
            "GET", settings.bucket, "",
            query=list_query(target.prefix, S3_PAGE, None, start_after),
            timeout=max(0.0, deadline - time.monotonic()),
        )
        if reply is None or reply.status != 200:
            return None
        try:
            page = list_page(reply.body)
        except (ParseError, ValueError):
            return None
        cut = RangeCut(start_after, end)
        if all(cut.take(obj) for obj in page.objects) and page.truncated:
            return None  # the range goes on past its first page: keys came
        taken.append(cut.range())
    if not meet(taken):
        return None
    settled = settle([each for each in taken if each is not None], target.prefix,
                     PathMatcher(target.exclude))
    if settled.etags() != last.etags:
        return None
    sql_functions(early.index.conn)
    if early.index.conn.execute(f"SELECT 1 FROM paths WHERE {REMOTE_MOVED} LIMIT 1").fetchone():
        return None  # a change an earlier pull left alone (skipped): the engine tries again
    report.skipped.extend(settled.skipped)
    if not dry_run:
        early.index.prune()  # as the engine's pull ends
    return report.done()


@dataclass
class Looked:
    """A push's look at the tree before trio is imported (`look_before_push`)."""

    report: Report
    """Begun with the look; the whole run's when there is nothing more to do (`done`)."""
    scan: ScanResult | None = None
    """The tree as scanned, for the engine to go on from (None: not scanned)."""
    actions: list[Action] | None = None
    """The push planned from that scan (`plan.planned_push`)."""
    done: bool = False


def look_before_push(early: Opened, settings: Settings, target: Target, dry_run: bool
                     ) -> Looked:
    """Scan the tree and plan the push as the engine would. Nothing to do: done, reported
    as the engine would report it. Else the scan, for the engine to go on from, with the
    manifest asked for already; none when the target's directory is not one to scan (the
    engine says why)."""
    from fusesync.sync.report import Report

    report = Report("push", dry_run=dry_run)
    if not _is_dir(target.path):
        return Looked(report)
    from fusesync.sync.localfs import Tree
    from fusesync.sync.matcher import ENCRYPT_CHECKED, PathMatcher, encrypt_mark
    from fusesync.sync.plan import planned_push
    from fusesync.sync.scan import scan_tree

    exclude = PathMatcher(target.exclude)
    with Tree(target.path) as tree:
        scan = scan_tree(tree.fd, early.index, exclude)
    # The encrypt list changed since a push last looked at every row for files still
    # plaintext on the remote (sync/sealed.py): the engine looks.
    looked = early.index.meta(ENCRYPT_CHECKED) == encrypt_mark(target.encrypt)
    actions = planned_push(early.index, exclude, remote_listed=False)
    if actions or not looked:
        # read back by the push's merge (Pusher), once the bucket is known to exist (else
        # the push makes it first)
        known = bool(early.index.meta("bucket_ok"))
        early.crt = _light_client(settings) if known and not dry_run else None
        if early.crt is not None:
            early.crt.send_early("GET", settings.bucket, target.manifest_key, "GetObject")
        return Looked(report, scan, actions)
    report.skipped.extend(scan.skipped)
    if not dry_run:
        early.index.prune()  # as the engine's push ends
    return Looked(report.done(), done=True)


def _is_dir(path: os.PathLike[str] | str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _light_client(settings: Settings) -> CrtClient | None:
    """The client S3Remote would build for the light path, when it can be told without
    boto3: the environment's keys and a region from the settings or the environment."""
    from fusesync.remote.crt import CrtClient
    from fusesync.remote.signed import (
        endpoint_of,
        env_credentials,
        fast_path_allowed,
        uses_path_style,
    )

    region = settings.region or os.environ.get("AWS_DEFAULT_REGION")
    credentials = env_credentials(settings.profile)
    if not region or credentials is None:
        return None
    url = endpoint_of(settings.endpoint_url, region)
    if not fast_path_allowed(url):
        return None
    path_style = uses_path_style(url, settings.addressing_style, settings.bucket)
    return CrtClient(url, credentials, region, path_style, TRANSFERS)

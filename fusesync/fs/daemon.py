"""The mount daemon: one target's FUSE mount from start to clean exit.

Order matters: take the target's lock and open its index (the caller does, sending the
listing's first requests: sync/head_start.py), clean a stale mount, open the directory's
descriptor, reconcile by a scan, and only then mount over the same path.
Everything the daemon needs later is imported and opened before the mount exists, so it
never reaches through its own mount (that would deadlock). It exits on unmount, SIGTERM
or SIGINT, closing in reverse order.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from fusesync import crypt, heap
from fusesync.config import Config, Target
from fusesync.crypt.passphrase import PassphraseSource
from fusesync.errors import FusesyncError
from fusesync.fs import control, mountsync
from fusesync.fs.adapter import Adapter
from fusesync.fs.cache import Evictor
from fusesync.fs.fetch import Fetcher
from fusesync.fs.journal import Journal
from fusesync.fs.mounts import MountState, is_stale, lazy_unmount, mount_state
from fusesync.fs.overlay import Overlay
from fusesync.index import Index
from fusesync.remote.crt import CrtClient
from fusesync.remote.s3 import S3Remote
from fusesync.sync.head_start import TRANSFERS, Opened
from fusesync.sync.localfs import Tree
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.scan import scan_tree
from fusesync.sync.sealed import Sealing

log = logging.getLogger("fusesync.mount")

LOG_NAME = "mount.log"
FETCH_GRACE = 30.0  # seconds an unmount waits for downloads in flight
PULL_WAIT = 30.0
"""Seconds a mount waits for the pull it begins with before it is ready; a slower one
goes on while the mount serves. A first mount of 50,000 small files pulled in 1.7-1.8 s
(the mount command took 2.0 s), a remount with nothing new in 0.6 s (1.2 s)."""
PULL_PATIENCE = 1.0
"""Seconds of that pull before the mount says it is pulling."""


@dataclass(frozen=True)
class MountOptions:
    foreground: bool = False
    allow_other: bool = False
    cache_limit: int | None = None  # bytes of clean fetched files to keep; None: no limit
    passphrase: PassphraseSource | None = field(default=None, repr=False)  # for encrypted files
    pull: bool = True  # pull as it starts, so the directory shows the remote's tree at once

    def fuse_options(self) -> set[str]:
        options = {"fsname=fusesync", "subtype=fusesync", "nosuid", "nodev",
                   "default_permissions"}
        if self.allow_other:
            options.add("allow_other")  # safe only because default_permissions is always on
        return options


Say = Callable[[str], None]


def run(config: Config, target: Target, options: MountOptions, say: Say,
        ready: Callable[[], None], early: Opened) -> None:
    """Mount `target`, locked with its index open (`early`), and serve it until it is
    unmounted. Blocks; raises FusesyncError (before `ready` is called) when the mount
    cannot start."""
    os.umask(0o077)
    os.chdir("/")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise FusesyncError("this user cannot open /dev/fuse, which every FUSE mount needs "
                            "(most systems make it 0666; here it is not)")
    if options.allow_other and os.geteuid() != 0 and not fuse_conf_allows_other():
        raise FusesyncError(
            "--allow-other needs 'user_allow_other' in /etc/fuse.conf for a user other than "
            "root: ask an administrator to add that line, or mount without --allow-other")
    with ExitStack() as stack:
        _clean_stale(target.path, say)
        root_fd = _open_root(target.path)
        stack.callback(os.close, root_fd)
        stack.enter_context(_logging(target.state_dir / LOG_NAME))
        index = early.index
        exclude = PathMatcher(target.exclude)
        _reconcile(root_fd, index, exclude)
        remote = S3Remote(config.settings, max_concurrency=TRANSFERS, crt=early.crt)
        crypt.preload()
        log.info("mounting '%s' at %s", target.name, target.path)
        with heap.settled():
            trio.run(_serve, config, target, options, root_fd, index, remote, exclude, say,
                     ready, early.crt)
        log.info("unmounted '%s'", target.name)


def fuse_conf_allows_other(conf: Path = Path("/etc/fuse.conf")) -> bool:
    """Whether fusermount3 lets users other than root mount with allow_other."""
    try:
        lines = conf.read_text().splitlines()
    except OSError:
        return False
    return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines)


def _clean_stale(path: Path, say: Say) -> None:
    state = mount_state(path)
    if state == MountState.OTHER:
        raise FusesyncError(f"'{path}' has another file system mounted on it; not mounting")
    if state == MountState.FUSESYNC or is_stale(path):
        # We hold the lock, so no live daemon owns this mount: it is a dead one's.
        lazy_unmount(path)
        say(f"cleaned a stale mount at '{path}' (its daemon had died)")


def _open_root(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FusesyncError(f"directory '{path}' does not exist") from None
    except NotADirectoryError:
        raise FusesyncError(f"'{path}' is not a directory") from None


@contextlib.contextmanager
def _logging(path: Path):  # type: ignore[no-untyped-def]
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, ours = logging.getLogger(), logging.getLogger("fusesync")
    root.addHandler(handler)  # pyfuse3's and the libraries' warnings too
    root.setLevel(logging.WARNING)
    ours.setLevel(logging.INFO)
    gone = _RequestGone()
    pyfuse3_log = logging.getLogger("pyfuse3")
    pyfuse3_log.addFilter(gone)
    try:
        yield
    finally:
        pyfuse3_log.removeFilter(gone)
        root.removeHandler(handler)
        handler.close()


class _RequestGone(logging.Filter):
    """pyfuse3 logs an error when the kernel refuses a reply with ENOENT: the kernel no
    longer waits for that request (it was interrupted, or the mount was torn down, as a
    lazy unmount does right after the last file is closed, its release still on its way).
    libfuse itself takes ENOENT so and stays silent; the log keeps it at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and "fuse_reply_* failed with" in message \
                and message.endswith(os.strerror(errno.ENOENT)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("pyfuse3").isEnabledFor(logging.DEBUG)
        return True


def _reconcile(root_fd: int, index: Index, exclude: PathMatcher) -> None:
    """Catch up with changes made while unmounted (or before a daemon was killed)."""
    result = scan_tree(root_fd, index, exclude)
    with Tree(root_fd) as tree:
        for leftover in result.leftovers:
            tree.remove_leftover(leftover)
    changed = Journal(index).reconcile()
    log.info("scanned %d paths; %d changed since the last sync", result.paths, changed)


PREPARE_AFTER = 5.0
"""Seconds after the mount serves before boto3's client is built in the background."""


async def _prepare(remote: S3Remote) -> None:
    """Build boto3's client (~0.2 s: imports, data files, ~/.aws) once the mount serves,
    in a worker thread: the files it reads may lie under the mount, and a worker's read
    is served by the trio thread, never waited on by it. Not at once: the first pull,
    lookups and listings after mounting would share the interpreter with it (50 ms of a
    first pull and find at 5,000 files). Requests that need boto3 (copies, deletes,
    large uploads: the light path and the CRT cover the rest) build it in their own
    worker thread if it is not there yet; one that fails here is tried again by the
    first of them, which reports it."""
    await trio.sleep(PREPARE_AFTER)
    try:
        await trio.to_thread.run_sync(remote.prepare, abandon_on_cancel=True)
    except Exception as exc:  # reported again by the first request that needs it
        log.warning("the S3 client could not be built yet: %s", exc)


async def _serve(config: Config, target: Target, options: MountOptions, root_fd: int,
                 index: Index, remote: S3Remote, exclude: PathMatcher, say: Say,
                 ready: Callable[[], None], early: CrtClient | None) -> None:
    journal = Journal(index)
    sealing = Sealing(target, remote, options.passphrase)
    if target.encrypt or options.passphrase is not None:
        log.info("encrypted files: %s", f"decrypted with the passphrase from "
                 f"{options.passphrase.origin}" if options.passphrase else "no passphrase given; "
                 "remote-only ones cannot be opened and changed ones are not pushed")
    try:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(remote, target.prefix, journal, nursery, sealing)
            overlay = Overlay(root_fd, journal, fetcher, exclude)
            try:
                pyfuse3.init(Adapter(overlay), str(target.path), options.fuse_options())
            except RuntimeError as exc:
                raise FusesyncError(f"cannot mount '{target.path}': {exc}") from None
            try:
                service = mountsync.MountService(
                    target, index, remote, overlay, journal, invalidate, sealing
                )

                async def services() -> None:
                    # Only once pyfuse3.main() serves requests: the socket may lie inside
                    # the mount (a state folder in the home directory).
                    await nursery.start(control.serve, target, service.handle)
                    if options.cache_limit is not None:
                        evictor = Evictor(options.cache_limit, index, journal, overlay,
                                          service.forget_in_kernel)
                        fetcher.on_fetched = evictor.poke
                        nursery.start_soon(evictor.run)
                    if options.pull:
                        await _pull_at_mount(service, nursery, say)
                    if early is not None:  # what the pull did not take (or all: no pull)
                        early.drop_all_early()
                    ready()
                    nursery.start_soon(_prepare, remote)

                nursery.start_soon(_signals)
                nursery.start_soon(services)
                await pyfuse3.main()
                await _finish_fetches(fetcher)
                await _carry_moves(service)
            finally:
                nursery.cancel_scope.cancel()
                pyfuse3.close(unmount=True)
                overlay.close()
    finally:
        with trio.CancelScope(shield=True):
            await remote.aclose()


async def _pull_at_mount(service: mountsync.MountService, nursery: trio.Nursery,
                         say: Say) -> None:
    """The pull a mount begins with, so that the directory shows the remote's tree when
    the mount command returns (DESIGN.md, "The mount"); its listing takes the answers to
    the requests sent before the daemon's imports. The mount waits for it up to
    PULL_WAIT seconds, then serves while a slower one goes on, the log telling its end.
    A pull that fails leaves the mount serving what the index knew."""
    url, done, waiting = service.target.url, trio.Event(), True

    def tell(line: str, level: int = logging.INFO) -> None:
        log.log(level, "pull at mount: %s", line)
        if waiting:
            say(line)

    async def pull() -> None:
        try:
            report = await service.first_pull()
        except FusesyncError as exc:
            tell(f"not pulled: {exc}; showing what the last sync knew", logging.WARNING)
        except Exception:
            log.exception("pull at mount")
            tell("not pulled: internal error (see mount.log); showing what the last sync knew",
                 logging.ERROR)
        else:
            tell(f"pulled {url}: {report.summary()}")
            for line in report.problem_lines():
                tell(line, logging.WARNING)
        finally:
            done.set()

    nursery.start_soon(pull)
    with trio.move_on_after(PULL_PATIENCE):
        await done.wait()
    if not done.is_set():
        tell(f"pulling {url} ...")
        with trio.move_on_after(max(0.0, PULL_WAIT - PULL_PATIENCE)):
            await done.wait()
    if not done.is_set():
        tell(f"still pulling {url} after {PULL_WAIT:.0f} s: it goes on while the mount "
             "serves (mount.log tells when it ends)")
    waiting = False


async def _finish_fetches(fetcher: Fetcher) -> None:
    """Let downloads in flight land (a file read to its end should be there after the
    unmount), for a while; what is still running then is dropped, leaving nothing."""
    with trio.move_on_after(FETCH_GRACE):
        while fetcher.active:
            await next(iter(fetcher.active.values())).done.wait()


async def _carry_moves(service: mountsync.MountService) -> None:
    """Renames still waiting for their server-side copies are carried before the daemon
    goes, when the remote answers in time; otherwise the next mount's first run does."""
    with trio.move_on_after(FETCH_GRACE):
        try:
            await service.carry_moves_alone()
        except Exception as exc:  # offline, say: nothing is lost, the rows stay
            log.warning("renames not yet carried to the remote: %s", exc)


async def invalidate(entries: list[tuple[int, str, int | None]]) -> None:
    """Make the kernel forget names and cached data the daemon changed behind it:
    (parent inode, name, inode or None), and the listing of each parent it keeps
    (adapter.READDIR_BY_INODE): a name new to it would not show otherwise. Runs in a worker
    thread: these calls block."""

    def run() -> None:
        for parent, name, inode in entries:
            if inode is not None:
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(inode)
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_entry(parent, os.fsencode(name))
        for parent in {parent for parent, _, _ in entries}:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(parent)  # attributes and the listing it keeps

    await trio.to_thread.run_sync(run)


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()

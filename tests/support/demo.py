"""`make demo`: fusesync's main job end to end, against a local SeaweedFS.

Two clusters in one machine: each has its own home directory and state, both share one
bucket. Every command is printed before its real output. The server started here is
stopped here, also on Ctrl+C or failure.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import FrameType

from tests.support.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "cache" / "demo"
BUCKET = "demo-bucket"


class Cluster:
    """A home directory and fusesync's state, as one short-lived cluster would have them."""

    def __init__(self, name: str, server: SeaweedServer) -> None:
        self.name = name
        self.root = DEMO / name
        self.home = self.root / "home" / "alces"
        self.home.mkdir(parents=True)
        self.env = {
            **os.environ,
            **server.env(),
            "HOME": str(self.home),
            "USER": "alces",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_STATE_HOME": str(self.root / "state"),
        }
        self.env.pop("FUSESYNC_CONFIG", None)

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> int:
        shown = " ".join(shlex.quote(a) for a in args)
        print(f"\n[{self.name}] $ {shown}" + (f"   (answering {stdin.strip()!r})" if stdin else ""))
        sys.stdout.flush()
        argv = list(args)
        if argv[0] == "fusesync":  # the venv's own command, whatever PATH says
            argv[0] = str(Path(sys.executable).parent / "fusesync")
        proc = subprocess.run(
            argv,
            env=self.env,
            cwd=self.root,  # never inside the home: a mount over it must be free to go
            input=stdin,
            text=True,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise SystemExit(f"demo: '{shown}' exited with status {proc.returncode}")
        return proc.returncode

    def cat(self, relpath: str) -> None:
        print(f"\n[{self.name}] $ cat {relpath}")
        print((self.home / relpath).read_text(), end="")

    def tree(self, folder: Path | None = None) -> None:
        folder = folder or self.home
        print(f"\n[{self.name}] $ ls -lR {folder.name}  (what the directory holds)")
        for path in sorted(folder.rglob("*")):
            st = path.lstat()
            rel = path.relative_to(folder)
            extra = f" -> {os.readlink(path)}" if path.is_symlink() else ""
            size = "" if stat.S_ISDIR(st.st_mode) else f"{st.st_size:>6}"
            print(f"  {stat.filemode(st.st_mode)} {size:>6}  {rel}{extra}")


def show_bucket(server: SeaweedServer, prefix: str = "sync/") -> None:
    shown = f"aws s3 ls --recursive s3://{BUCKET}/{prefix}"
    print(f"\n$ {shown}   (listed with boto3, plus the s3fs headers)")
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            meta = client.head_object(Bucket=BUCKET, Key=obj["Key"])["Metadata"]
            mode = meta.get("mode")
            shown = stat.filemode(int(mode)) if mode and mode.isdigit() else "-"
            print(f"  {obj['Size']:>6}  {shown}  mode={mode or '-':<6}  {obj['Key']}")


def make_home(home: Path) -> None:
    (home / "jobs").mkdir()
    job = home / "jobs" / "simulate.sh"
    job.write_text("#!/bin/bash\n#SBATCH -N 2\nsrun ./simulate --steps 1000\n")
    job.chmod(0o755)
    (home / "outputs" / "run-001").mkdir(parents=True)
    (home / "outputs" / "run-001" / "result.csv").write_text("step,energy\n1,-3.2\n2,-3.5\n")
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (home / "scratch").mkdir()  # an empty directory travels too
    (home / "latest").symlink_to("outputs/run-001")
    (home / ".cache").mkdir()
    (home / ".cache" / "pip-junk").write_text("never synced: .cache/ is excluded\n")


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_term)
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir(parents=True)
    print("Starting a local S3 server (SeaweedFS, 127.0.0.1 only)...")
    with SeaweedServer(DEMO / "s3") as server:
        print(f"S3 endpoint: {server.endpoint_url}")
        one = Cluster("cluster-1", server)
        two = Cluster("cluster-2", server)
        setup = ("fusesync", "setup", "--bucket", BUCKET, "--endpoint-url", server.endpoint_url,
                 "--addressing-style", "path")

        print(textwrap.dedent("""
            == Day 1, on the first cluster: set up, and push the home directory =="""))
        one.run(*setup)
        one.run("fusesync", "list")
        make_home(one.home)
        one.tree()
        one.run("fusesync", "status")
        one.run("fusesync", "push")
        show_bucket(server)

        print("\n== Day 2, a new cluster: pull the home directory ==")
        two.run(*setup)
        two.run("fusesync", "pull")
        two.tree()

        print("\n== Work on the new cluster, push, and bring it back to the first ==")
        (two.home / "outputs" / "run-002").mkdir()
        (two.home / "outputs" / "run-002" / "result.csv").write_text("step,energy\n1,-4.0\n")
        (two.home / "jobs" / "simulate.sh").chmod(0o700)
        (two.home / ".bashrc").unlink()
        two.run("fusesync", "push")
        one.run("fusesync", "pull", "--max-delete", "100%")
        one.tree()

        print("\n== Both clusters edit the same file: nothing is lost ==")
        (one.home / "notes.txt").write_text("from cluster 1\n")
        one.run("fusesync", "push")
        two.run("fusesync", "pull")
        (one.home / "notes.txt").write_text("edited on cluster 1\n")
        (two.home / "notes.txt").write_text("edited on cluster 2\n")
        one.run("fusesync", "push")
        two.run("fusesync", "push", check=False)
        two.run("fusesync", "pull", check=False)
        two.tree()
        two.run("fusesync", "push")

        print("\n== A third cluster mounts its home instead: everything shows at once ==")
        three = Cluster("cluster-3", server)
        three.run(*setup)
        three.run("fusesync", "mount")  # it pulls as it starts: nothing downloaded yet
        try:
            three.tree()
            three.cat("jobs/simulate.sh")  # the first open fetches it
            (three.home / "outputs" / "run-003").mkdir()
            (three.home / "outputs" / "run-003" / "result.csv").write_text("step,energy\n")
            three.run("fusesync", "status")
            three.run("fusesync", "push")
        finally:
            if three.run("fusesync", "unmount", check=False) and os.path.ismount(three.home):
                subprocess.run(["fusermount3", "-u", "-z", str(three.home)], check=False)
        print("\nUnmounted: a plain directory again, holding what was fetched or written.")
        three.tree()

        print("\n== A data directory as a second target ==")
        data = one.root / "data"
        data.mkdir()
        (data / "sample.dat").write_bytes(os.urandom(256 * 1024))
        one.run("fusesync", "add", "data", str(data))
        one.run("fusesync", "list")
        one.run("fusesync", "push", "data")
        show_bucket(server, "sync/alces/data/")
        one.run("fusesync", "purge", "data", stdin="y\n")
        one.run("fusesync", "remove", "data", stdin="Y\n")
        one.run("fusesync", "list")
        print("\nDemo finished; stopping the S3 server.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ndemo: interrupted; the S3 server was stopped", file=sys.stderr)
        sys.exit(130)

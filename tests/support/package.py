"""The Debian package for the tests: `make deb` once per test session, unpacked with
`dpkg-deb -x` into a throwaway folder that other users can read (the first-login tests
run the packaged command as a user of their own). The folder goes at exit."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Package:
    deb: Path
    root: Path  # the package's files, unpacked: root/usr/bin/fusesync, root/etc/...
    control: Path  # its control files (dpkg-deb -e writes them here)
    arch: str
    build_seconds: float


@functools.cache
def built_package() -> Package:
    """Build and unpack the package; blocks for as long as `make deb` takes."""
    folder = Path(tempfile.mkdtemp(prefix="fusesync-deb-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    folder.chmod(0o755)
    out = folder / "out"
    started = time.monotonic()
    done = subprocess.run(["make", "--no-print-directory", "deb", f"DEB_DIR={out}"],
                          cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"make deb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    (deb,) = out.glob("fusesync_*.deb")
    root = folder / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    root.chmod(0o755)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return Package(deb, root, folder / "control", arch, seconds)

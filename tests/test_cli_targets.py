"""setup, list, add and remove through the real CLI: exact outputs, prompts and bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fusesync.cli import cli


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def configured(fusesync_env):
    result = run("setup", "--bucket", "home-bucket", "--endpoint-url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    return fusesync_env


def config_text(env) -> str:
    return Path(env.config_path).read_text()


# -- setup ----------------------------------------------------------------------------


def test_setup_writes_private_config_and_default_target(fusesync_env) -> None:
    result = run(
        "setup", "--bucket", "home-bucket", "--endpoint-url", "http://127.0.0.1:9/",
        "--region", "eu-west-2", "--profile", "cluster", "--addressing-style", "path",
    )
    assert result.exit_code == 0, result.output
    path = Path(fusesync_env.config_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert 'bucket = "home-bucket"' in text
    assert 'endpoint_url = "http://127.0.0.1:9"' in text
    assert "secret" not in text.lower() and "access_key" not in text.lower()
    assert result.output.splitlines()[-1] == (
        f"default: {fusesync_env.home} <-> s3://home-bucket/sync/tester/default"
    )


def test_setup_again_keeps_targets(configured, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert run("add", "data", str(tmp_path / "data")).exit_code == 0
    assert run("setup", "--bucket", "other-bucket").exit_code == 0
    lines = run("list").output.splitlines()
    assert lines[0] == f"data: {tmp_path / 'data'} <-> s3://other-bucket/sync/tester/data"


@pytest.mark.parametrize("bucket", ["b1", "Upper-Case", "-dash", "a" * 64, "two..dots"])
def test_setup_refuses_invalid_bucket(fusesync_env, bucket: str) -> None:
    result = run("setup", "--bucket", bucket)
    assert result.exit_code == 2
    assert "invalid bucket name" in result.output
    assert not Path(fusesync_env.config_path).exists()


def test_setup_refuses_invalid_endpoint(fusesync_env) -> None:
    result = run("setup", "--bucket", "home-bucket", "--endpoint-url", "ftp://x")
    assert result.exit_code == 2
    assert "invalid endpoint URL" in result.output


# -- list -----------------------------------------------------------------------------


def test_list_exact_lines_sorted(configured, tmp_path: Path) -> None:
    for name in ("zeta", "alpha"):
        (tmp_path / name).mkdir()
        assert run("add", name, str(tmp_path / name)).exit_code == 0
    result = run("list")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        f"alpha: {tmp_path / 'alpha'} <-> s3://home-bucket/sync/tester/alpha",
        f"default: {configured.home} <-> s3://home-bucket/sync/tester/default",
        f"zeta: {tmp_path / 'zeta'} <-> s3://home-bucket/sync/tester/zeta",
    ]
    assert run("ls").output == result.output


def test_list_json(configured) -> None:
    rows = json.loads(run("list", "--json").output)
    assert rows == [
        {
            "name": "default",
            "path": str(configured.home),
            "url": "s3://home-bucket/sync/tester/default",
        }
    ]


def test_no_bucket_configured(fusesync_env) -> None:
    for args in (["list"], ["add", "x", str(fusesync_env.home)], ["remove", "x", "--yes"]):
        result = run(*args)
        assert result.exit_code == 1
        assert "run 'fusesync setup --bucket BUCKET' first" in result.output
        assert len(result.output.strip().splitlines()) == 1


# -- add ------------------------------------------------------------------------------


def test_add_exact_output(configured, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = run("add", "data", str(tmp_path / "data"))
    assert result.exit_code == 0
    assert result.output == f"fusesync add: created 'data' to sync '{tmp_path / 'data'}'\n"


def test_add_relative_path_is_made_absolute(configured, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    result = run("add", "rel", "rel")
    assert result.output == f"fusesync add: created 'rel' to sync '{tmp_path / 'rel'}'\n"
    assert f'path = "{tmp_path / "rel"}"' in config_text(configured)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "a b", "x" * 65, "naïve", "semi;colon", "tab\t"]
)
def test_add_invalid_names(configured, tmp_path: Path, name: str) -> None:
    before = config_text(configured)
    result = run("add", name, str(tmp_path))
    assert result.exit_code == 1
    assert "invalid target name" in result.output
    assert config_text(configured) == before


def test_add_accepts_all_allowed_characters(configured, tmp_path: Path) -> None:
    name = "Az09._-" + "x" * 57
    assert len(name) == 64
    (tmp_path / "d").mkdir()
    assert run("add", name, str(tmp_path / "d")).exit_code == 0


def test_add_missing_path_and_file_path(configured, tmp_path: Path) -> None:
    before = config_text(configured)
    result = run("add", "x", str(tmp_path / "nope"))
    assert (result.exit_code, result.output) == (
        1, f"fusesync add: path '{tmp_path / 'nope'}' does not exist\n"
    )
    (tmp_path / "file").write_text("x")
    result = run("add", "x", str(tmp_path / "file"))
    assert (result.exit_code, result.output) == (
        1, f"fusesync add: path '{tmp_path / 'file'}' is not a directory\n"
    )
    assert config_text(configured) == before


def test_add_duplicate_name(configured, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert run("add", "data", str(tmp_path / "a")).exit_code == 0
    result = run("add", "data", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert result.output == "fusesync add: a target named 'data' already exists\n"
    assert run("add", "default", str(tmp_path / "b")).exit_code == 1


def test_add_overlapping_paths(configured, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "inner").mkdir(parents=True)
    assert run("add", "data", str(data)).exit_code == 0
    before = config_text(configured)
    cases = {
        str(data): "is already synced by target 'data'",
        str(data / "inner"): f"is inside '{data}', synced by target 'data'",
        str(tmp_path): f"contains '{data}', synced by target 'data'",
        str(configured.home): "is already synced by target 'default'",
    }
    for path, message in cases.items():
        result = run("add", "other", path)
        assert result.exit_code == 1, path
        assert message in result.output, result.output
    (configured.home / "projects").mkdir()
    result = run("add", "projects", str(configured.home / "projects"))
    assert "synced by target 'default'" in result.output
    assert config_text(configured) == before


def test_add_through_symlink_is_same_path(configured, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert run("add", "one", str(tmp_path / "real")).exit_code == 0
    result = run("add", "two", str(tmp_path / "link"))
    assert result.exit_code == 1
    assert "already synced by target 'one'" in result.output


# -- remove ---------------------------------------------------------------------------


@pytest.fixture
def with_data(configured, tmp_path: Path):
    (tmp_path / "data").mkdir()
    assert run("add", "data", str(tmp_path / "data")).exit_code == 0
    state = Path(configured.state_dir) / "data"
    state.mkdir(parents=True)
    (state / "index.db").write_bytes(b"")
    return configured, state


def test_remove_prompt_yes(with_data, tmp_path: Path) -> None:
    _, state = with_data
    (tmp_path / "data" / "keep.txt").write_text("mine")
    result = run("remove", "data", input="Y\n")
    assert result.exit_code == 0
    assert result.output == (
        "Remove sync configuration for 'data' (Y/N)? fusesync remove: removed 'data'\n"
    )
    assert "data" not in run("list").output
    assert not state.exists()
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("answer", ["n\n", "N\n", "yes\n", "\n", "q\n"])
def test_remove_anything_but_y_does_nothing(with_data, answer: str) -> None:
    env, state = with_data
    before = config_text(env)
    result = run("remove", "data", input=answer)
    assert result.exit_code == 1
    assert result.output.startswith("Remove sync configuration for 'data' (Y/N)? ")
    assert "nothing changed" in result.output
    assert config_text(env) == before
    assert state.exists()


def test_remove_aliases_and_yes(with_data) -> None:
    assert run("rm", "data", "--yes").output == "fusesync remove: removed 'data'\n"
    assert run("delete", "data", "-y").output == (
        "fusesync remove: no target named 'data' (see 'fusesync list')\n"
    )


def test_remove_default_or_unknown(configured) -> None:
    assert run("remove", "default", "--yes").output == (
        "fusesync remove: the 'default' target cannot be removed\n"
    )
    result = run("remove", "ghost", "--yes")
    assert result.exit_code == 1
    assert result.output == "fusesync remove: no target named 'ghost' (see 'fusesync list')\n"


def test_remove_without_stdin_refuses_without_hanging(with_data) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "remove", "data"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, env=os.environ,
    )
    assert proc.returncode == 1
    assert "no answer on standard input" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "data:" in run("list").output


# -- broken settings files ------------------------------------------------------------


def test_corrupt_config_names_file_and_line_and_is_not_overwritten(
    configured, tmp_path: Path
) -> None:
    path = Path(configured.config_path)
    broken = 'bucket = "home-bucket"\n\n[targets.data\npath = "/x"\n'
    path.write_text(broken)
    for args in (["list"], ["add", "x", str(tmp_path)], ["setup", "--bucket", "new-bucket"]):
        result = run(*args)
        assert result.exit_code == 1, args
        assert str(path) in result.output
        assert "line 3" in result.output
        assert path.read_text() == broken


def test_config_with_wrong_types(configured) -> None:
    path = Path(configured.config_path)
    path.write_text('bucket = "home-bucket"\n[targets.data]\npath = 7\n')
    result = run("list")
    assert result.exit_code == 1
    assert "[targets.data] 'path' must be a string" in result.output


def test_unreadable_config(fusesync_env, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = blocker / "config.toml"
    monkeypatch.setenv("FUSESYNC_CONFIG", str(path))
    result = run("list")
    assert result.exit_code == 1
    assert result.output == f"fusesync list: cannot read config file {path}: Not a directory\n"


def test_config_that_is_a_directory(fusesync_env, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cfgdir"
    folder.mkdir()
    result = run("--config", str(folder), "list")
    assert result.exit_code in (1, 2)
    assert str(folder) in result.output


def test_config_option_and_env_point_elsewhere(fusesync_env, tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "elsewhere.toml"
    assert run("--config", str(other), "setup", "--bucket", "elsewhere").exit_code == 0
    assert other.exists()
    assert not Path(fusesync_env.config_path).exists()
    monkeypatch.setenv("FUSESYNC_CONFIG", str(other))
    assert "s3://elsewhere/" in run("list").output


def test_no_traceback_without_debug(fusesync_env) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "list"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fusesync.cli", "--debug", "list"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert "Traceback" in proc.stderr


def test_output_to_a_reader_that_stopped_ends_quietly(configured, tmp_path: Path) -> None:
    """`fusesync list | head -1` with more lines to come: the closed pipe ends the command
    with no message (as coreutils end), not as an internal error."""
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
        assert run("add", f"d{i}", str(tmp_path / f"d{i}")).exit_code == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fusesync.cli", "list"],
            stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE, text=True,
            timeout=30,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (128 + 13, "")
    # A broken pipe elsewhere (the mount's control socket) is no closed output: an
    # output still open is not taken for one.
    from fusesync import cli as cli_module

    assert not cli_module._stdout_gone()


def test_usage_errors_exit_2(fusesync_env) -> None:
    assert run("add").exit_code == 2
    assert run("no-such-verb").exit_code == 2
    assert run("setup").exit_code == 2

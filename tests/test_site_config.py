"""The site-wide settings file beneath the user's own: the user's keys win one by one, the
site file is never written, and a broken or overreaching site file is named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fusesync.cli import cli
from fusesync.config import Config


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def site(fusesync_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site file the test writes; FUSESYNC_SITE_CONFIG points at it."""
    path = tmp_path / "site" / "config.toml"
    path.parent.mkdir()
    monkeypatch.setenv("FUSESYNC_SITE_CONFIG", str(path))
    return path


def write_site(path: Path, env, **extra: str) -> str:
    text = (
        f'bucket = "{env.bucket}"\n'
        f'endpoint_url = "{env.server.endpoint_url}"\n'
        'addressing_style = "path"\n'
        'first_login = "pull"\n'
        + "".join(f'{key} = "{value}"\n' for key, value in extra.items())
    )
    path.write_text(text)
    return text


def test_site_file_alone_gives_the_default_target_and_syncs(fusesync_env, site: Path) -> None:
    """A user with no settings of their own pushes to the site's bucket and endpoint."""
    text = write_site(site, fusesync_env)
    assert run("list").output == (
        f"default: {fusesync_env.home} <-> s3://{fusesync_env.bucket}/sync/tester/default\n"
    )
    (fusesync_env.home / "notes.txt").write_text("from the site's settings\n")
    result = run("push")
    assert result.exit_code == 0, result.output
    body = fusesync_env.server.client().get_object(
        Bucket=fusesync_env.bucket, Key="sync/tester/default/notes.txt")["Body"].read()
    assert body == b"from the site's settings\n"
    assert not fusesync_env.config_path.exists()  # nothing was copied into the user's file
    assert site.read_text() == text


def test_user_settings_win_key_by_key(fusesync_env, site: Path) -> None:
    write_site(site, fusesync_env, region="site-region")
    result = run("setup", "--bucket", "own-bucket", "--region", "own-region")
    assert result.exit_code == 0, result.output
    settings = Config.load().settings
    assert settings.bucket == "own-bucket"  # the user's
    assert settings.region == "own-region"  # the user's
    assert settings.endpoint_url == fusesync_env.server.endpoint_url  # the site's
    assert settings.addressing_style == "path"  # the site's
    user_text = fusesync_env.config_path.read_text()
    assert "endpoint_url" not in user_text and "site-region" not in user_text


def test_no_site_file_changes_nothing(fusesync_env, site: Path) -> None:
    assert not site.exists()
    result = run("list")
    assert result.exit_code == 1
    assert "run 'fusesync setup --bucket BUCKET' first" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('bucket = "b"\n[targets.data\n', "is not valid TOML"),
        ('bucket = "b"\nregion = 3\n', "'region' must be a string"),
        ('bucket = "b"\nfirst_login = "always"\n', "'first_login' must be 'pull', 'mount' or"),
        ('bucket = "b"\nuser = "everyone"\n', "'user' belongs in each user's own settings"),
        ('bucket = "b"\n[targets.data]\npath = "/x"\n', "'targets' belongs in each user's own"),
    ],
)
def test_broken_or_overreaching_site_file_is_one_line_naming_it(
    fusesync_env, site: Path, text: str, message: str
) -> None:
    site.write_text(text)
    result = run("list")
    assert result.exit_code == 1
    assert str(site) in result.output and message in result.output
    assert len(result.output.splitlines()) == 1
    assert site.read_text() == text


def test_unreadable_site_file_is_named(fusesync_env, site: Path) -> None:
    site.mkdir()  # a folder where the file should be: unreadable for root too
    result = run("list")
    assert result.exit_code == 1
    assert f"cannot read config file {site}" in result.output

"""Settings and targets: the TOML file under $XDG_CONFIG_HOME/fusesync, and XDG paths.

This module reads, validates and atomically rewrites the user's settings file, read over
the site-wide one (/etc/fusesync/config.toml) key by key. It never stores credentials
(boto3's own chain finds those), never writes the site file, and never overwrites a file
it could not parse.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from fusesync.errors import ConfigError, NotConfigured, TargetError, UsageError

APP = "fusesync"
DEFAULT_TARGET = "default"
DEFAULT_ENCRYPT = (".ssh/", ".gnupg/", ".aws/")
DEFAULT_EXCLUDE = (".cache/",)
ADDRESSING_STYLES = ("path", "virtual")
FIRST_LOGIN_MODES = ("pull", "mount", "off")  # read by the login hooks in packaging/
SITE_CONFIG = Path("/etc/fusesync/config.toml")
# What a site file may set; the user's own file wins key by key. Not `user` or targets:
# those are each user's own.
SITE_KEYS = ("bucket", "endpoint_url", "region", "profile", "addressing_style", "first_login")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# S3's rules for bucket names, minus the legacy upper-case names no region accepts now.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def config_path() -> Path:
    """The settings file: $FUSESYNC_CONFIG, else $XDG_CONFIG_HOME/fusesync/config.toml."""
    override = os.environ.get("FUSESYNC_CONFIG")
    if override:
        return Path(override).expanduser().absolute()
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def site_config_path() -> Path:
    """The site-wide settings: $FUSESYNC_SITE_CONFIG, else /etc/fusesync/config.toml."""
    override = os.environ.get("FUSESYNC_SITE_CONFIG")
    return Path(override).expanduser().absolute() if override else SITE_CONFIG


def state_root() -> Path:
    """$XDG_STATE_HOME/fusesync: one folder per target (index, lock, control socket)."""
    return Path(platformdirs.user_state_dir(APP))


def current_user() -> str:
    """The user name that names the remote prefix: $USER, else the login database."""
    return os.environ.get("USER") or getpass.getuser()


def validate_target_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise TargetError(
            f"invalid target name {name!r}: use 1 to 64 of A-Z a-z 0-9 . _ - "
            "(and not '.' or '..')"
        )
    return name


def validate_bucket(bucket: str) -> str:
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise UsageError(
            f"invalid bucket name {bucket!r}: 3 to 63 lower-case letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    return bucket


def validate_endpoint(url: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise UsageError(f"invalid endpoint URL {url!r}: expected http://HOST[:PORT] or https://…")
    return url.rstrip("/")


@dataclass(frozen=True)
class Settings:
    """Where the remote lives; the same for every target."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None


@dataclass(frozen=True)
class Target:
    """A name, a local directory and a remote prefix."""

    name: str
    path: Path
    bucket: str
    user: str
    exclude: tuple[str, ...] = ()
    encrypt: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        """The key prefix of the target's objects, with its trailing slash."""
        return f"sync/{self.user}/{self.name}/"

    @property
    def manifest_key(self) -> str:
        """Beside the prefix, so listings of the tree show only the user's files."""
        return f"sync/{self.user}/{self.name}.manifest"

    @property
    def keyring_key(self) -> str:
        """The target's encryption keys (salts and key checks, never a key), beside the
        prefix like the manifest, so every cluster finds them."""
        return f"sync/{self.user}/{self.name}.keys"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/sync/{self.user}/{self.name}"

    @property
    def state_dir(self) -> Path:
        return state_root() / self.name


def _default_excludes(home: Path) -> tuple[str, ...]:
    """`.cache/`, and fusesync's own config and state where they live inside $HOME."""
    patterns = list(DEFAULT_EXCLUDE)
    for own in (config_path().parent, state_root()):
        try:
            rel = own.resolve().relative_to(home.resolve())
        except ValueError:
            continue
        if rel.parts:
            patterns.append(f"/{rel.as_posix()}/")
    return tuple(patterns)


def _read_toml(path: Path) -> dict[str, Any] | None:
    """The file's table, or None when there is no file; a file that cannot be read or
    parsed is an error naming it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(value)


@dataclass
class Config:
    """The settings file as read from disk, and the operations that rewrite it."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)  # the user's file: what save() writes
    site: dict[str, Any] = field(default_factory=dict)  # the site file's settings, beneath

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        config = cls(path, _read_toml(path) or {})
        config._check()
        site_path = site_config_path()
        site = _read_toml(site_path)
        if site is not None:
            for key in ("user", "targets"):
                if key in site:
                    raise ConfigError(f"site config file {site_path}: '{key}' belongs in "
                                      "each user's own settings file, not the site's")
            cls(site_path, site)._check()
            config.site = {key: site[key] for key in SITE_KEYS if key in site}
        return config

    def _check(self) -> None:
        """Refuse a file whose shape is wrong, naming the key; never guess."""
        where = f"config file {self.path}"
        for key in (*SITE_KEYS, "user"):
            if key in self.data and not isinstance(self.data[key], str):
                raise ConfigError(f"{where}: '{key}' must be a string")
        style = self.data.get("addressing_style")
        if style is not None and style not in ADDRESSING_STYLES:
            raise ConfigError(f"{where}: 'addressing_style' must be 'path' or 'virtual'")
        mode = self.data.get("first_login")
        if mode is not None and mode not in FIRST_LOGIN_MODES:
            raise ConfigError(f"{where}: 'first_login' must be 'pull', 'mount' or 'off'")
        targets = self.data.get("targets", {})
        if not isinstance(targets, dict):
            raise ConfigError(f"{where}: 'targets' must be a table")
        for name, table in targets.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: [targets.{name}] must be a table")
            try:
                validate_target_name(name)
            except TargetError as exc:
                raise ConfigError(f"{where}: [targets.{name}]: {exc}") from exc
            if "path" in table and not isinstance(table["path"], str):
                raise ConfigError(f"{where}: [targets.{name}] 'path' must be a string")
            if "path" not in table and name != DEFAULT_TARGET:
                raise ConfigError(f"{where}: [targets.{name}] has no 'path'")
            for key in ("exclude", "encrypt"):
                if key in table:
                    _str_list(table[key], f"{where}: [targets.{name}] '{key}'")

    # -- reading ---------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The user's settings over the site's, key by key."""
        merged = {**self.site, **self.data}
        bucket = merged.get("bucket")
        if not bucket:
            raise NotConfigured("no bucket configured: run 'fusesync setup --bucket BUCKET' first")
        return Settings(
            bucket=bucket,
            endpoint_url=merged.get("endpoint_url"),
            region=merged.get("region"),
            profile=merged.get("profile"),
            addressing_style=merged.get("addressing_style"),
        )

    @property
    def user(self) -> str:
        return str(self.data.get("user") or current_user())

    def _target_tables(self) -> Mapping[str, dict[str, Any]]:
        tables: dict[str, dict[str, Any]] = dict(self.data.get("targets", {}))
        tables.setdefault(DEFAULT_TARGET, {})
        return tables

    def _make_target(self, name: str, table: Mapping[str, Any]) -> Target:
        bucket = self.settings.bucket
        if name == DEFAULT_TARGET:
            path = Path(table.get("path") or Path.home())
            exclude = table.get("exclude", list(_default_excludes(path)))
            encrypt = table.get("encrypt", list(DEFAULT_ENCRYPT))
        else:
            path = Path(table["path"])
            exclude = table.get("exclude", [])
            encrypt = table.get("encrypt", [])
        return Target(name, path, bucket, self.user, tuple(exclude), tuple(encrypt))

    def targets(self) -> list[Target]:
        """Every target, `default` included, sorted by name."""
        tables = self._target_tables()
        return [self._make_target(name, tables[name]) for name in sorted(tables)]

    def target(self, name: str) -> Target:
        _ = self.settings  # without a bucket no target means anything: say that first
        tables = self._target_tables()
        if name not in tables:
            raise TargetError(f"no target named '{name}' (see 'fusesync list')")
        return self._make_target(name, tables[name])

    # -- changing --------------------------------------------------------------------

    def set_settings(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str | None,
        profile: str | None,
        addressing_style: str | None,
    ) -> None:
        self.data["bucket"] = validate_bucket(bucket)
        for key, value in (
            ("endpoint_url", endpoint_url and validate_endpoint(endpoint_url)),
            ("region", region),
            ("profile", profile),
            ("addressing_style", addressing_style),
        ):
            if value:
                self.data[key] = value
            else:
                self.data.pop(key, None)

    def add_target(
        self, name: str, path: Path, encrypt: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
    ) -> Target:
        """Register a new target; `path` must be an existing directory no other target covers."""
        validate_target_name(name)
        _ = self.settings  # a target needs a bucket to mean anything: say so first
        if name in self._target_tables():
            raise TargetError(f"a target named '{name}' already exists")
        path = path.expanduser().absolute()
        if not path.exists():
            raise TargetError(f"path '{path}' does not exist")
        if not path.is_dir():
            raise TargetError(f"path '{path}' is not a directory")
        real = path.resolve()
        for other in self.targets():
            theirs = other.path.resolve()
            if real == theirs:
                raise TargetError(f"path '{path}' is already synced by target '{other.name}'")
            if real.is_relative_to(theirs):
                raise TargetError(
                    f"path '{path}' is inside '{other.path}', synced by target '{other.name}'"
                )
            if theirs.is_relative_to(real):
                raise TargetError(
                    f"path '{path}' contains '{other.path}', synced by target '{other.name}'"
                )
        table: dict[str, Any] = {"path": str(path)}
        if encrypt:
            table["encrypt"] = list(encrypt)
        if exclude:
            table["exclude"] = list(exclude)
        self.data.setdefault("targets", {})[name] = table
        return self._make_target(name, table)

    def remove_target(self, name: str) -> Target:
        if name == DEFAULT_TARGET:
            raise TargetError("the 'default' target cannot be removed")
        target = self.target(name)
        del self.data["targets"][name]
        return target

    def save(self) -> None:
        """Write the file atomically (temp file, fsync, rename), 0600 in a 0700 folder."""
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                tomli_w.dump(self.data, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

"""The `fusesync` command: click wiring and the output formats, nothing more.

Each verb parses its arguments, calls into config, sync or fs, and prints. Domain errors
become one line and an exit status here, in `FusesyncGroup.invoke`, and nowhere else.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from fusesync import __version__, heap
from fusesync.config import ADDRESSING_STYLES, Config, Target
from fusesync.crypt.cli import passphrase_option, rekey, terminal_source
from fusesync.errors import Declined, FusesyncError, first_leaf
from fusesync.index.lock import TargetLock

if TYPE_CHECKING:
    from fusesync.crypt.passphrase import PassphraseSource
    from fusesync.sync.head_start import Looked, Opened
    from fusesync.sync.report import Report

SIGPIPE_STATUS = 128 + 13  # as a shell reports a program its closed output ended
ALIASES = {"put": "push", "get": "pull", "ls": "list", "rm": "remove", "delete": "remove"}


class FusesyncGroup(click.Group):
    """A group that knows the original tool's aliases and turns errors into one line."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            except BaseExceptionGroup as group:  # trio's nurseries wrap what their tasks raise
                raise first_leaf(group) from group
        except FusesyncError as exc:
            if ctx.params.get("debug"):
                raise
            _fail(ctx, str(exc), exc.exit_status)
        except KeyboardInterrupt:
            click.echo("", err=True)
            _fail(ctx, "interrupted", 130)
        except BrokenPipeError:
            if not _stdout_gone():
                raise
            # Whoever read our output stopped (`fusesync list | head -1`): stop too, with
            # no message, as coreutils do; nothing is written to the closed pipe again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(SIGPIPE_STATUS)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # anything unexpected: one line, the rest only with --debug
            if ctx.params.get("debug"):
                raise
            _fail(ctx, f"internal error: {exc!r} (run with --debug for the traceback)", 1)


def _stdout_gone() -> bool:
    """The reading end of our standard output was closed."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _fail(ctx: click.Context, message: str, status: int) -> NoReturn:
    verb = ctx.invoked_subcommand
    click.echo(f"fusesync {verb}: {message}" if verb else f"fusesync: {message}", err=True)
    ctx.exit(status)


def confirm(question: str, assume_yes: bool) -> None:
    """Ask the original tool's Y/N question; anything but y/Y, or no answer, changes nothing."""
    if assume_yes:
        return
    stdin = sys.stdin
    click.echo(f"{question} ", nl=False)
    try:
        answer = stdin.readline()
    except (OSError, ValueError):  # closed or unreadable standard input
        answer = ""
    if not answer:
        click.echo("")
        raise Declined("no answer on standard input; nothing changed (use --yes to confirm)")
    if answer.strip() not in ("y", "Y"):
        raise Declined("not confirmed; nothing changed")


def load_config(ctx: click.Context) -> Config:
    config: Config = ctx.ensure_object(dict).setdefault(
        "config", Config.load(ctx.find_root().params.get("config_file"))
    )
    return config


yes_option = click.option("--yes", "-y", is_flag=True, help="Answer yes to the confirmation.")


@click.group(cls=FusesyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FUSESYNC_CONFIG",
    help="Settings file to use instead of $XDG_CONFIG_HOME/fusesync/config.toml.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, prog_name="fusesync")
def cli(config_file: Path | None, debug: bool) -> None:
    """Keep home and data directories in step with an S3 prefix.

    A target pairs a local directory with s3://BUCKET/sync/USER/NAME. The 'default'
    target is your home directory. Run 'fusesync setup --bucket BUCKET' once, then
    'fusesync push' on one cluster and 'fusesync pull' on the next.

    Credentials are never stored by fusesync: boto3 finds them (environment, shared
    credentials file, --profile, instance role). Files a target encrypts (its 'encrypt'
    list) are encrypted before they leave; their names stay visible on the remote.
    """


@cli.command()
@click.option("--bucket", required=True, help="The S3 bucket that holds every target.")
@click.option("--endpoint-url", help="An S3-compatible endpoint, e.g. http://127.0.0.1:8333.")
@click.option("--region", help="The bucket's region.")
@click.option("--profile", help="A named profile of the AWS shared config and credentials.")
@click.option(
    "--addressing-style",
    type=click.Choice(ADDRESSING_STYLES),
    help="Bucket in the path (most S3-compatible servers) or in the host name (AWS).",
)
@click.pass_context
def setup(
    ctx: click.Context,
    bucket: str,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    addressing_style: str | None,
) -> None:
    """Write the global settings; the 'default' target exists from then on.

    Settings already in the file are replaced by those given here; targets are kept.
    """
    config = load_config(ctx)
    config.set_settings(bucket, endpoint_url, region, profile, addressing_style)
    config.save()
    click.echo(f"fusesync setup: settings written to '{config.path}'")
    default = config.target("default")
    click.echo(f"{default.name}: {default.path} <-> {default.url}")


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of targets.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the targets: NAME: PATH <-> s3://BUCKET/sync/USER/NAME (alias: ls)."""
    targets = load_config(ctx).targets()
    if as_json:
        rows = [{"name": t.name, "path": str(t.path), "url": t.url} for t in targets]
        click.echo(json.dumps(rows, indent=2))
        return
    for target in targets:
        click.echo(f"{target.name}: {target.path} <-> {target.url}")


@cli.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--encrypt",
    multiple=True,
    metavar="PATTERN",
    help="Encrypt matching paths (gitignore syntax; repeatable). Names stay visible.",
)
@click.option(
    "--exclude", multiple=True, metavar="PATTERN", help="Never sync matching paths (repeatable)."
)
@click.pass_context
def add(
    ctx: click.Context, name: str, path: Path, encrypt: tuple[str, ...], exclude: tuple[str, ...]
) -> None:
    """Create target NAME to sync the directory PATH.

    NAME is 1 to 64 of A-Z a-z 0-9 . _ -; PATH must be an existing directory that
    neither lies inside nor contains another target's directory.
    """
    config = load_config(ctx)
    target = config.add_target(name, path, encrypt=encrypt, exclude=exclude)
    config.save()
    click.echo(f"fusesync add: created '{target.name}' to sync '{target.path}'")


@cli.command()
@click.argument("name")
@yes_option
@click.pass_context
def remove(ctx: click.Context, name: str, yes: bool) -> None:
    """Forget target NAME and its index (aliases: rm, delete).

    Local files and the remote objects are left as they are.
    """
    config = load_config(ctx)
    target = config.remove_target(name)  # in memory only until confirmed
    with TargetLock(target.state_dir, target.name, "remove"):  # not while mounted or syncing
        confirm(f"Remove sync configuration for '{target.name}' (Y/N)?", yes)
        config.save()
        shutil.rmtree(target.state_dir, ignore_errors=True)
    click.echo(f"fusesync remove: removed '{target.name}'")


class Fraction(click.ParamType):  # type: ignore[type-arg]
    """A share of the target's files: '50%', '100%' or '0.5'."""

    name = "PERCENT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            self.fail(f"{value!r} is not a percentage like 50% or 100%", param, ctx)
        if not 0 <= number <= 1:
            self.fail(f"{value!r} is not between 0% and 100%", param, ctx)
        return number


def sync_options(func: Any) -> Any:
    func = click.option(
        "--dry-run", "-n", is_flag=True, help="Say what would be done; do nothing."
    )(func)
    func = click.option(
        "--max-delete", type=Fraction(), default="50%", show_default=True,
        help="Stop before deleting more than this share of the target's files.",
    )(func)
    func = passphrase_option(func)
    return click.argument("name", default="default")(func)


def _progress(label: str) -> Any:
    if sys.stdout.isatty():
        from fusesync.progress import TerminalProgress

        return TerminalProgress(label)
    return None


def _forward_if_mounted(
    ctx: click.Context, target: Target, verb: str, options: dict[str, Any]
) -> None:
    """While mounted, the daemon owns the target: it runs the verb and we print its answer."""
    from fusesync.fs.forward import forward

    answer = forward(target, verb, options)
    if answer is not None:
        status, text = answer
        click.echo(text, nl=False, err=status not in (0, 3))
        ctx.exit(status)


def _run_sync(ctx: click.Context, verb: str, name: str, dry_run: bool, max_delete: float,
              passphrase_file: Path | None) -> None:
    config = load_config(ctx)
    target = config.target(name)
    _forward_if_mounted(ctx, target, verb, {"dry_run": dry_run, "max_delete": max_delete})

    from fusesync.sync.head_start import opened

    with opened(config.settings, target, verb) as early:  # a pull's listing leaves now
        _sync(ctx, config, target, verb, dry_run, max_delete, passphrase_file, early)


def _sync(ctx: click.Context, config: Config, target: Target, verb: str, dry_run: bool,
          max_delete: float, passphrase_file: Path | None, early: Opened) -> None:
    from fusesync.sync.head_start import look_before_push, quiet_pull

    if verb == "push":
        click.echo(f" > Synchronizing directory '{target.path}' to {target.url}")
    else:
        click.echo(f" > Synchronizing {target.url} to directory '{target.path}'")
    shown: list[bool] = []

    def permissions() -> None:  # before a passphrase prompt, as the original tool printed it
        if not shown:
            click.echo("    Permissions ... OK")
            shown.append(True)

    passphrase = terminal_source(passphrase_file, before=permissions)
    looked = None
    if verb == "pull":
        report = quiet_pull(early, config.settings, target, dry_run)
    else:
        looked = look_before_push(early, config.settings, target, dry_run)
        report = looked.report if looked.done else None
    if report is None:
        report = _run_engine(config, target, verb, dry_run, max_delete, passphrase, early,
                             looked)
    permissions()
    click.echo("           Sync ... OK" if not dry_run else "           Sync ... (dry run)")
    for action in report.planned:
        click.echo(f"   would {action.op.value}: {action.path}")
    for line in report.problem_lines():
        click.echo(line)
    click.echo(f"   {report.summary()}")
    ctx.exit(report.exit_status)


def _run_engine(config: Config, target: Target, verb: str, dry_run: bool, max_delete: float,
                passphrase: PassphraseSource, early: Opened, looked: Looked | None
                ) -> Report:
    # here, not at the top, and only once no mount runs it: list, add, remove, a forwarded
    # push or pull, and a push or pull with nothing to do end sooner without them
    import trio

    from fusesync.sync.session import open_engine

    async def go() -> Report:
        async with open_engine(config, target, verb, _progress(verb), passphrase,
                               early) as engine:
            if verb == "push":
                return await engine.push(dry_run, max_delete, looked)
            return await engine.pull(dry_run, max_delete)

    with heap.settled():
        return trio.run(go)


@cli.command()
@sync_options
@click.pass_context
def push(ctx: click.Context, name: str, dry_run: bool, max_delete: float,
         passphrase_file: Path | None) -> None:
    """Upload local changes of target NAME (default: 'default') (alias: put).

    New, changed and deleted files, and changes of mode, owner and mtime, go to the
    remote with conditional writes: a file changed on the remote since the last sync is
    left alone and reported as a conflict (exit status 3).

    Files matching the target's encrypt list ('.ssh/', '.gnupg/' and '.aws/' for
    'default') are encrypted here first (AES-256-GCM, key from a passphrase by scrypt):
    push asks for the passphrase when it has one to encrypt (CTRL+C skips them), or reads
    $FUSESYNC_PASSPHRASE or --passphrase-file. Their names, sizes, modes and times stay
    visible on the remote.
    """
    _run_sync(ctx, "push", name, dry_run, max_delete, passphrase_file)


@cli.command()
@sync_options
@click.pass_context
def pull(ctx: click.Context, name: str, dry_run: bool, max_delete: float,
         passphrase_file: Path | None) -> None:
    """Bring remote changes of target NAME into its directory (alias: get).

    A file changed on both sides keeps the local version at its path; the remote one is
    written beside it as NAME.conflict-HOST-YYYYMMDD-HHMMSS[.ext] (exit status 3).
    A local file is deleted only if it is unchanged since the last sync. Files arrive
    whole or not at all; a directory out of room or quota stops the pull at the first
    file refused, keeping what came before it: pull again once there is room.

    Encrypted files are decrypted with the passphrase (asked for, or $FUSESYNC_PASSPHRASE
    or --passphrase-file); without it they are left unpulled and listed.
    """
    _run_sync(ctx, "pull", name, dry_run, max_delete, passphrase_file)


@cli.command()
@click.argument("name", default="default")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def status(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show what push and pull of target NAME would do; change nothing."""
    config = load_config(ctx)
    target = config.target(name)
    _forward_if_mounted(ctx, target, "status", {"json": as_json})

    import trio  # only once no mount runs it, as in _run_sync

    from fusesync.sync.session import open_engine

    async def go() -> Any:
        async with open_engine(config, target, "status") as engine:
            return await engine.status()

    result = trio.run(go)
    if as_json:
        def rows(actions: Any) -> list[dict[str, Any]]:
            return [{"op": a.op.value, "path": a.path, "kind": a.kind, "reason": a.reason}
                    for a in actions]

        click.echo(json.dumps({
            "target": target.name, "path": str(target.path), "url": target.url,
            "push": rows(result.push), "pull": rows(result.pull),
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "notes": result.notes,
        }, indent=2))
        return
    click.echo(f" > Status of '{target.name}': {target.path} <-> {target.url}")
    for note in result.notes:
        click.echo(f"   note: {note}")
    if not (result.push or result.pull or result.skipped):
        click.echo("   in step: nothing to push or pull")
    for action in result.push:
        click.echo(f"   push {action.op.value}: {action.path}")
    for action in result.pull:
        if action.op.value != "conflict" or action not in result.push:
            click.echo(f"   pull {action.op.value}: {action.path}")
    for path, reason in result.skipped:
        click.echo(f"   skipped: {path}: {reason}")


@cli.command()
@click.argument("name")
@yes_option
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be deleted; do nothing.")
@click.pass_context
def purge(ctx: click.Context, name: str, yes: bool, dry_run: bool) -> None:
    """Delete every remote object of target NAME, and its manifest.

    Local files stay as they are; the next push uploads everything again.
    """
    import trio

    from fusesync.sync.session import open_engine

    config = load_config(ctx)
    target = config.target(name)
    if dry_run:
        click.echo(f"fusesync purge: would delete every object under {target.url}/")
        return
    confirm(f"Purge all files for '{target.name}' at '{target.url}' (Y/N)?", yes)

    async def go() -> int:
        async with open_engine(config, target, "purge") as engine:
            return await engine.purge()

    count = trio.run(go)
    click.echo(f"fusesync purge: deleted {count} objects under {target.url}/")


from fusesync.fs.commands import mount, unmount  # noqa: E402 - the mount's commands

cli.add_command(mount)
cli.add_command(unmount)
cli.add_command(rekey)


def main() -> None:
    try:
        cli(prog_name="fusesync")
    finally:
        heap.leave_to_exit()


if __name__ == "__main__":
    main()

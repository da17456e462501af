"""The command line's side of encryption: where push, pull, mount and rekey get their
passphrase (--passphrase-file, FUSESYNC_PASSPHRASE, or a question on the terminal), and
the `rekey` command. Click wiring only: the work is sync/sealed.py's and sync/rekey.py's.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fusesync.crypt.passphrase import ENV, NEW_ENV, Ask, PassphraseSource, given_passphrase


def _nothing() -> None:
    pass


def passphrase_option(func: Any) -> Any:
    return click.option(
        "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
        help=f"Read the encryption passphrase from FILE (mode 600) instead of ${ENV} or a "
             "prompt.",
    )(func)


def _terminal_ask(before: Callable[[], None], on_interrupt: str) -> Ask:
    def ask(question: str) -> bytes | None:
        before()
        try:
            answer = getpass.getpass(f"    {question}: ")
        except KeyboardInterrupt:
            click.echo(on_interrupt)
            return None
        except EOFError:
            click.echo("")
            return None
        return answer.encode("utf-8", "surrogateescape")

    return ask


def terminal_source(path: Path | None, before: Callable[[], None] = _nothing,
                    on_interrupt: str = "Skipping.", env_name: str = ENV) -> PassphraseSource:
    """A passphrase from `path`, else from $`env_name`, else asked on the terminal (only
    when standard input is one: with none, nobody is asked and nothing waits)."""
    given, origin = given_passphrase(path, env_name)

    def say(line: str) -> None:
        before()
        click.echo(f"    {line}")

    ask = _terminal_ask(before, on_interrupt) if sys.stdin.isatty() else None
    return PassphraseSource(given, origin, ask, say)


@click.command()
@click.argument("name", default="default")
@passphrase_option
@click.option(
    "--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help=f"Read the new passphrase from FILE (mode 600) instead of ${NEW_ENV} or a prompt.",
)
@click.pass_context
def rekey(ctx: click.Context, name: str, passphrase_file: Path | None,
          new_passphrase_file: Path | None) -> None:
    """Re-encrypt target NAME's encrypted files under a new passphrase.

    Asks for the current passphrase and the new one (or reads them from
    $FUSESYNC_PASSPHRASE and $FUSESYNC_NEW_PASSPHRASE, or the files given). Each object
    is replaced whole, so until the rekey ends every one opens with the old or the new
    passphrase; if it is interrupted, run it again with the same two. The old key is
    kept, retired: it seals nothing, but a file another cluster sealed with it after the
    rekey still opens with the old passphrase, and running rekey again with the same two
    moves it under the new one. Object names, sizes, modes and times stay visible, as
    they always are.
    """
    import trio

    from fusesync.cli import load_config
    from fusesync.sync.rekey import Rekey, RekeyResult
    from fusesync.sync.session import open_engine

    config = load_config(ctx)
    target = config.target(name)
    click.echo(f" > Re-encrypting {target.url} under a new passphrase")
    old = terminal_source(passphrase_file, on_interrupt="Stopped.")
    new = terminal_source(new_passphrase_file, on_interrupt="Stopped.", env_name=NEW_ENV)
    started = time.monotonic()

    async def go() -> RekeyResult:
        async with open_engine(config, target, "rekey") as engine:
            run = Rekey(target, engine.index, engine.remote, old, new, target.state_dir,
                        old.say)
            return await run.run()

    result = trio.run(go)
    for path, key_id in sorted(result.stranded.items()):
        click.echo(f"   skipped: {path}: sealed under an older key (id {key_id}) this "
                   "passphrase does not open")
    if result.stranded:
        click.echo(f"   to move them: run 'fusesync rekey {name}' again with that key's "
                   "passphrase as the current one and the current passphrase as the new one")
    click.echo(f"   {result.resealed} file(s) re-encrypted in {time.monotonic() - started:.1f} s"
               + (" (an interrupted rekey finished)" if result.resumed else ""))
    ctx.exit(3 if result.stranded else 0)

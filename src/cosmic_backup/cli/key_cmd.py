"""`cosmic-backup key init|fingerprint|rotate`."""

from __future__ import annotations

import typer

from cosmic_backup.cli.common import (
    emit_json,
    open_cli_runtime,
    say,
    settings_for,
    state,
    stdout,
)
from cosmic_backup.operations.keys import KeySource

key_app = typer.Typer(help="Create, identify and rotate the backup key.", no_args_is_help=True)


def _keys(ctx: typer.Context) -> KeySource:
    return KeySource(settings_for(ctx), say)


@key_app.command("init")
def init(ctx: typer.Context) -> None:
    """Create the key file (0600); it is also created by the first backup."""
    loaded = _keys(ctx).init()
    if state(ctx).json:
        emit_json({"key_file": loaded.source, "fingerprint": loaded.key.fingerprint})


@key_app.command("fingerprint")
def fingerprint(ctx: typer.Context) -> None:
    """Print the current key's fingerprint (a public id, safe to share) and the keyring's."""
    keys = _keys(ctx)
    loaded = keys.current()
    retired = keys.keyring.fingerprints()
    if state(ctx).json:
        emit_json(
            {"fingerprint": loaded.key.fingerprint, "source": loaded.source, "keyring": retired}
        )
        return
    stdout.print(f"{loaded.key.fingerprint}  (from {loaded.source})", markup=False)
    for old in retired:
        stdout.print(f"{old}  (keyring, retired)", markup=False)


@key_app.command("rotate")
def rotate(ctx: typer.Context) -> None:
    """Start a new key for new backups; the old one moves to the keyring."""
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    rotation = runtime.keys.rotate(runtime.catalog, wait=runtime.wait)
    runtime.log.info(
        "key rotated: %s retired to %s, new key %s",
        rotation.old.fingerprint,
        rotation.retired_to,
        rotation.new.fingerprint if rotation.new else f"to be set in {rotation.source}",
    )
    if state(ctx).json:
        emit_json(
            {
                "old": rotation.old.fingerprint,
                "new": rotation.new.fingerprint if rotation.new else None,
                "retired_to": str(rotation.retired_to),
            }
        )
        return
    stdout.print(
        f"Old key {rotation.old.fingerprint} kept in {rotation.retired_to}; older "
        "backups still restore with it.",
        markup=False,
    )
    if rotation.new is None:
        stdout.print(
            f"The key comes from {rotation.source}: set it to a new passphrase now "
            "(for example: openssl rand -hex 32). New backups then use it.",
            markup=False,
        )
    else:
        stdout.print(
            f"New key {rotation.new.fingerprint} written to {rotation.source}; copy it "
            "to your safe place now.",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(key_app, name="key")

"""`otagw token create|list|revoke`: scoped API tokens for devices and integrations.

Devices and integrations never get the admin token: each gets its own token with only the scopes it needs
(query, status, download), optionally bound to one device, revocable at any time. The gateway stores the
SHA-256 only (gateway/api/credentials.py) and picks changes up while it runs.
"""

from __future__ import annotations

import json

import click

from gateway.api.credentials import SCOPES, CredentialError, CredentialStore
from gateway.cli import CliContext, UserError, main


@main.group()
def token() -> None:
    """Scoped API tokens for devices and integrations."""


def _store(ctx: click.Context) -> CredentialStore:
    cli: CliContext = ctx.obj
    return CredentialStore(cli.config.data_dir)


@token.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    required=True,
    help=f"comma-separated scopes: {', '.join(SCOPES)}",
)
@click.option(
    "--device", "device", default=None, help="bind to one device id (protocol:network:address:endpoint)"
)
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
@click.pass_context
def create_cmd(ctx: click.Context, name: str, scopes: str, device: str | None, as_json: bool) -> None:
    """Create token NAME and print its secret (shown this once; only its SHA-256 is stored)."""
    try:
        cred, secret = _store(ctx).create(name, scopes, device)
    except CredentialError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**cred.public(), "token": secret}))
        return
    bound = f", bound to {cred.device}" if cred.device else ""
    click.echo(
        f"created token {cred.name!r} (scopes: {', '.join(cred.scopes)}{bound}); it is shown only once:"
    )
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """The scoped tokens (names, scopes, bound device; never a secret)."""
    try:
        creds = _store(ctx).entries()
    except CredentialError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([c.public() for c in creds]))
        return
    if not creds:
        click.echo("no scoped tokens")
    for c in creds:
        click.echo(f"{c.name}\t{','.join(c.scopes)}\t{c.device or '(any device)'}")


@token.command("revoke")
@click.argument("name")
@click.pass_context
def revoke_cmd(ctx: click.Context, name: str) -> None:
    """Revoke token NAME: the gateway refuses it (401) from its next request on."""
    try:
        _store(ctx).revoke(name)
    except CredentialError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"revoked token {name!r}")

"""`otagw fleet status` and `otagw store migrate --to postgres`: the fleet's view and the move onto PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import click

from gateway.cli import CliContext, UserError, main
from gateway.core.records import StateDBError


@main.group()
def fleet() -> None:
    """A fleet of gateways sharing one PostgreSQL database (store.backend: postgres)."""


@main.group()
def store() -> None:
    """The device-state store (records, history, rollouts)."""


def _fleet_config(ctx: click.Context) -> Any:
    cli: CliContext = ctx.obj
    cfg = cli.config
    if cfg.store.backend != "postgres":
        source = cfg.source or "the embedded defaults"
        raise UserError(f"{source}: store.backend is {cfg.store.backend!r}; the fleet needs 'postgres'")
    return cfg


@fleet.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def fleet_status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Gateways (alive, version, devices, transfers), the rollout-engine leader and fleet budget use."""
    from gateway.fleet.db import connect_pool, migrate_fleet
    from gateway.fleet.status import fleet_status

    cfg = _fleet_config(ctx)

    async def go() -> dict[str, Any]:
        pool = await connect_pool(cfg.store, max_size=1)
        try:
            await migrate_fleet(pool)
            return await fleet_status(pool)
        finally:
            await pool.close()

    try:
        status = asyncio.run(go())
    except StateDBError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    click.echo(f"{'GATEWAY':<20} {'SITE':<14} {'ALIVE':<6} {'VERSION':<10} {'DEVICES':>8} {'TRANSFERS':>9}")
    for g in status["gateways"]:
        click.echo(
            f"{g['id']:<20} {g['site']:<14} {'yes' if g['alive'] else 'NO':<6} {g['version']:<10} "
            f"{g['devices']:>8} {g['transfers']:>9}"
        )
    leader = status["leader"]
    click.echo(
        "rollout engine: "
        + (
            f"{leader['id']} (epoch {leader['epoch']}{'' if leader['alive'] else ', lease expired'})"
            if leader
            else "none"
        )
    )
    for scope, b in status["budgets"].items():
        click.echo(f"budget {scope}: {b['used']}/{b['limit']}")


@store.command("migrate")
@click.option("--to", "to", type=click.Choice(["postgres"]), required=True, help="Target backend.")
@click.option("--dsn", default=None, help="Target database (default: store.dsn from the config).")
@click.pass_context
def store_migrate_cmd(ctx: click.Context, to: str, dsn: str | None) -> None:
    """Move this gateway's SQLite state (data_dir/state.db) into an empty PostgreSQL database, verified."""
    from gateway.config import StoreConfig
    from gateway.fleet.migrate import migrate_sqlite_to_postgres

    cli: CliContext = ctx.obj
    cfg = cli.config
    target_dsn = dsn or cfg.store.dsn
    if not target_dsn:
        raise UserError("store migrate: no target; give --dsn or set store.dsn in the config")
    try:
        target = StoreConfig.model_validate({**cfg.store.model_dump(), "backend": to, "dsn": target_dsn})
    except ValueError as exc:
        raise UserError(f"--dsn: {exc}") from None
    try:
        report = asyncio.run(
            migrate_sqlite_to_postgres(cfg.data_dir / "state.db", target, cfg.gateway.id, cfg.gateway.site)
        )
    except StateDBError as exc:
        raise UserError(str(exc)) from None
    for table, n in report.rows.items():
        click.echo(f"{table}: {n} rows copied, sha256 {report.digests[table][:16]} identical on both sides")
    click.echo(f"records owned by gateway {cfg.gateway.id} at site {cfg.gateway.site}")
    click.echo("now set store.backend: postgres and store.dsn in the config")


@fleet.command("add-gateway")
@click.argument("gateway_id")
@click.option("--site", required=True, help="Site whose devices this gateway may see.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the generated password (created owner-only, 0600).",
)
@click.pass_context
def fleet_add_gateway_cmd(ctx: click.Context, gateway_id: str, site: str, password_file: Path) -> None:
    """Create a gateway's own database role (least privilege, its site only); run with the admin DSN."""
    from gateway.core.pg_repository import PostgresRecordsRepository
    from gateway.fleet.db import migrate_fleet
    from gateway.fleet.roles import install_row_security, provision_gateway, role_name

    cfg = _fleet_config(ctx)
    try:
        name = role_name(gateway_id)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", site):
        raise UserError(f"--site {site!r}: expected lower-case letters, digits, '_', '.', '-'")
    password = secrets.token_urlsafe(24)
    try:
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UserError(f"{password_file}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")

    async def go() -> None:
        repo = PostgresRecordsRepository(cfg.store)
        await repo.open()  # both schemas exist before policies refer to them
        try:
            await migrate_fleet(repo.pool)
            async with repo.pool.acquire() as conn:
                await install_row_security(conn)
                await provision_gateway(conn, gateway_id, site, password)
        finally:
            await repo.close()

    try:
        asyncio.run(go())
    except Exception as exc:
        password_file.unlink(missing_ok=True)
        if isinstance(exc, StateDBError):
            raise UserError(str(exc)) from None
        raise
    click.echo(f"role {name} (gateway {gateway_id}, site {site}); password in {password_file}")


@fleet.command("budget")
@click.argument("limits", nargs=-1, required=True)
@click.pass_context
def fleet_budget_cmd(ctx: click.Context, limits: tuple[str, ...]) -> None:
    """Set fleet-wide transfer limits: global=N, site:NAME=N, protocol:P=N, network:SITE/NET=N."""
    from gateway.fleet.budget import FleetBudget
    from gateway.fleet.db import connect_pool, migrate_fleet

    cfg = _fleet_config(ctx)
    parsed: dict[str, int] = {}
    for i, item in enumerate(limits, 1):
        m = re.fullmatch(
            r"(global|site:[^=\s]+|protocol:(?:matter|zigbee)|network:[^=\s/]+/[^=\s]+)=(\d+)", item
        )
        if not m:
            raise UserError(
                f"argument {i} {item!r}: expected global=N, site:NAME=N, protocol:P=N or network:SITE/NET=N"
            )
        parsed[m.group(1)] = int(m.group(2))

    async def go() -> None:
        pool = await connect_pool(cfg.store, max_size=1)
        try:
            await migrate_fleet(pool)
            await FleetBudget(pool, "", "").set_limits(parsed)
        finally:
            await pool.close()

    try:
        asyncio.run(go())
    except StateDBError as exc:
        raise UserError(str(exc)) from None
    click.echo(", ".join(f"{k}={v}" for k, v in parsed.items()))

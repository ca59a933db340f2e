"""`otagw fleet status` and `otagw store migrate --to postgres`: the fleet's view and the move onto PostgreSQL."""

from __future__ import annotations

import asyncio
import json
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

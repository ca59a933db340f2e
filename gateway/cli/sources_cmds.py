"""`otagw sources list|check [NAME]|fetch ENTRY`: upstream firmware sources from the shell.

Runs a `SourceManager` in this process against the configured data_dir (the catalog, state.db's device records
as the fleet, and the per-source state files a running gateway shares). Only enabled sources are contacted; a
running gateway picks imported images up within its catalog refresh (30 s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from gateway.cli import CliContext, UserError, main
from gateway.cli.image_catalog import _fleet
from gateway.clock import SystemClock
from gateway.core.records import StateDBError
from gateway.sources.manager import CheckReport, SourceManager
from gateway.sources.model import SourceError
from gateway.store.errors import StoreError
from gateway.store.store import ImageStore

_T = TypeVar("_T")


@main.group()
def sources() -> None:
    """Upstream firmware sources (Zigbee2MQTT, zigpy, vendors, the Matter DCL)."""


def _run(ctx: click.Context, op: Callable[[SourceManager], Awaitable[_T]]) -> _T:
    cli: CliContext = ctx.obj
    cfg = cli.config

    async def go() -> _T:
        store = ImageStore(cfg.data_dir)
        await store.open()
        fleet = await _fleet(cfg)
        manager = SourceManager(cfg, store, SystemClock(), fleet=lambda: fleet)
        try:
            return await op(manager)
        finally:
            await manager.stop()
            await store.close()

    try:
        return asyncio.run(go())
    except (SourceError, StoreError, StateDBError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{cfg.data_dir}: {exc.strerror or exc}") from None


def _ts(t: float | None) -> str:
    return "-" if not t else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _print_report(ctx: click.Context, report: CheckReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        state = "not modified" if report.not_modified else f"{report.entries} entries"
        click.echo(
            f"{report.source}: {state}; {len(report.imported)} imported, {len(report.rejected)} rejected"
        )
        for image_id in report.imported:
            click.echo(f"  imported {image_id} (available; approve with: otagw image approve {image_id})")
        for line in report.rejected:
            click.echo(f"  rejected: {line}")
        for line in report.errors:
            click.echo(f"  error: {line}")
    if report.errors or report.rejected:
        ctx.exit(1)


@sources.command("list")
@click.option("--entries", "show_entries", is_flag=True, help="Also list each source's index entries.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(ctx: click.Context, show_entries: bool, as_json: bool) -> None:
    """Configured sources, whether enabled, last check, entries and errors."""

    async def op(m: SourceManager) -> tuple[list[Any], list[Any]]:
        return m.statuses(), m.entries() if show_entries else []

    statuses, entries = _run(ctx, op)
    if as_json:
        click.echo(
            json.dumps(
                {"sources": [s.to_dict() for s in statuses], "entries": [e.to_dict() for e in entries]},
                indent=2,
            )
        )
        return
    header = ["NAME", "TYPE", "ENABLED", "LAST CHECK", "ENTRIES", "ERRORS", "REJECTED", "LAST ERROR"]
    rows = [
        [s.name, s.type, "yes" if s.enabled else "no", _ts(s.last_check), str(s.entries), str(s.errors),
         str(s.rejected), (s.last_error or "")[:60]]
        for s in statuses
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for e in entries:
        notes = f"  notes: {e.release_notes_url}" if e.release_notes_url else ""
        click.echo(f"{e.source}:{e.key}  {e.version_string or e.version}  {e.url}{notes}")


@sources.command("check")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check_cmd(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Check NAME (or every enabled source) now; download what a device of the fleet can use."""

    async def op(m: SourceManager) -> list[CheckReport]:
        names = [name] if name else m.enabled
        if not names:
            raise SourceError(
                "no source is enabled: set `enabled: true` for one under `sources:` in the config"
            )
        return [await m.check(n) for n in names]

    reports = _run(ctx, op)
    failed = False
    for report in reports:
        try:
            _print_report(ctx, report, as_json)
        except click.exceptions.Exit:
            failed = True
    if failed:
        ctx.exit(1)


@sources.command("fetch")
@click.argument("entry")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fetch_cmd(ctx: click.Context, entry: str, as_json: bool) -> None:
    """Download, verify and import one index entry (<source>:<key>, see `sources list --entries`)."""
    _print_report(ctx, _run(ctx, lambda m: m.fetch(entry)), as_json)

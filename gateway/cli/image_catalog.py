"""`otagw image add|list|remove|approve|revoke|import-list|import-z2m-index`: manage the image catalog.

Thin click layer over `gateway.store`: opens the store in the configured data_dir, runs one operation and prints
a human table (or JSON with `--json`). Store errors become a one-line `UserError` (exit 2); an import where some
files failed prints every per-file result and exits 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.cli import CliContext, UserError, image
from gateway.config import Config
from gateway.core.policy import selector_matches
from gateway.core.records import StateDBError
from gateway.core.repository import StateDB
from gateway.store.approval import APPROVED, approval_selector, describe_approval, is_upstream, reach
from gateway.store.errors import StoreError
from gateway.store.importers import (
    ImportReport,
    import_ota_image_list,
    import_paths,
    import_z2m_index,
)
from gateway.store.model import CatalogEntry
from gateway.store.store import ImageStore

__all__ = ["entry_json"]

_T = TypeVar("_T")


def _run(ctx: click.Context, op: Callable[[ImageStore], Awaitable[_T]]) -> _T:
    cli: CliContext = ctx.obj
    data_dir = cli.config.data_dir

    async def go() -> _T:
        store = ImageStore(data_dir)
        await store.open()
        try:
            return await op(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except (StoreError, StateDBError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{data_dir}: {exc.strerror or exc}") from None


async def _fleet(config: Config) -> list[Any]:
    """The gateway's device records (read from state.db; empty when the gateway never ran here)."""
    path = config.data_dir / "state.db"
    if not path.exists():
        return []
    db = StateDB(path)
    await db.open()
    try:
        return await db.load_devices()
    finally:
        await db.close()


def reach_note(config: Config, entry: CatalogEntry, device_ids: list[str]) -> str:
    """What adding `entry` means for the fleet now, and the command that approves it."""
    n = len(device_ids)
    devices = f"{n} device{'s' if n != 1 else ''}"
    if entry.approval == APPROVED:
        return f"{entry.image_id}: approved; applies to {devices} now"
    if config.policy.auto_approve and not is_upstream(entry):
        return f"{entry.image_id}: offered to {devices} now (policy.auto_approve is on)"
    return (
        f"{entry.image_id}: available, not approved; would reach {devices} now. "
        f"Approve with: otagw image approve {entry.image_id}"
    )


def entry_json(e: CatalogEntry) -> dict[str, Any]:
    """An entry as JSON-ready data (tuples become lists)."""
    out: dict[str, Any] = {name: getattr(e, name) for name in e.__dataclass_fields__}
    out["model_ids"] = list(e.model_ids)
    return out


def _ident(e: CatalogEntry) -> tuple[str, str]:
    return f"0x{e.vendor_id:04X}", f"0x{e.product_id:04X}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _print_report(
    ctx: click.Context, report: ImportReport, as_json: bool, notes: list[str] | None = None
) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "results": [r.as_dict() for r in report.results],
                    "summary": {s: report.count(s) for s in ("created", "exists", "skipped", "failed")},
                },
                indent=2,
            )
        )
    else:
        rows = []
        for r in report.results:
            e = r.entry
            vendor, product = _ident(e) if e else ("", "")
            rows.append(
                [
                    r.status,
                    e.image_id if e else "",
                    e.protocol if e else "",
                    vendor,
                    product,
                    e.version_string if e else "",
                    r.item
                    if not r.message
                    else r.message
                    if r.item in r.message
                    else f"{r.item}: {r.message}",
                ]
            )
        click.echo(_table(rows, ["STATUS", "ID", "PROTO", "VENDOR", "PRODUCT", "VERSION", "FILE / MESSAGE"]))
        for note in notes or ():
            click.echo(note)
        click.echo(report.summary())
    if not report.ok:
        ctx.exit(1)


@image.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def add_cmd(ctx: click.Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Import OTA files, or every OTA file under directories, into the catalog."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UserError(f"{missing[0]}: no such file or directory")
    config: Config = ctx.obj.config

    async def op(store: ImageStore) -> tuple[ImportReport, list[Any]]:
        return await import_paths(store, paths, source="cli"), await _fleet(config)

    report, fleet = _run(ctx, op)
    notes = [
        reach_note(config, r.entry, reach(r.entry, fleet))
        for r in report.results
        if r.entry is not None and r.status in ("created", "exists")
    ]
    _print_report(ctx, report, as_json, notes)


@image.command("list")
@click.option("--protocol", type=click.Choice(["matter", "zigbee"]), help="Only this protocol.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, protocol: Any, as_json: bool) -> None:
    """List the images in the catalog."""
    entries = _run(ctx, lambda store: store.list(protocol))
    if as_json:
        click.echo(json.dumps([entry_json(e) for e in entries], indent=2))
        return
    rows = [
        [
            e.image_id,
            e.protocol,
            *_ident(e),
            e.version_string,
            str(e.numeric_version),
            str(e.size),
            "yes" if e.valid else "no",
            e.payload_check,
            describe_approval(e),
            e.file_name,
        ]
        for e in entries
    ]
    click.echo(
        _table(
            rows,
            ["ID", "PROTO", "VENDOR", "PRODUCT", "VERSION", "NUMERIC", "SIZE", "VALID", "PAYLOAD", "APPROVAL", "FILE"],
        )
    )


@image.command("approve")
@click.argument("ref")
@click.option(
    "--devices", "device_ids", multiple=True, help="Only devices whose id matches (pattern; repeat)."
)
@click.option("--model", "models", multiple=True, help="Only this model (pattern like TRADFRI*; repeat).")
@click.option("--network", "networks", multiple=True, help="Only this network (pan:1a2b, fabric:<id>).")
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag (repeat: all needed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def approve_cmd(
    ctx: click.Context,
    ref: str,
    device_ids: tuple[str, ...],
    models: tuple[str, ...],
    networks: tuple[str, ...],
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Approve an image: devices it applies to are offered it without a rollout (all, or those filtered)."""
    selector = {
        k: list(v)
        for k, v in (("devices", device_ids), ("model", models), ("networks", networks), ("tags", tags))
        if v
    }
    config: Config = ctx.obj.config

    async def op(store: ImageStore) -> tuple[CatalogEntry, list[Any]]:
        entry = await store.approve(ref, selector=selector or None, by="cli")
        return entry, await _fleet(config)

    entry, fleet = _run(ctx, op)
    if as_json:
        click.echo(json.dumps(entry_json(entry), indent=2))
        return
    sel = approval_selector(entry)
    covered = [r for r in fleet if sel is None or selector_matches(sel, r)]
    n = len(reach(entry, covered))
    click.echo(
        f"approved {entry.image_id} {entry.package_id} ({describe_approval(entry)}); "
        f"applies to {n} device{'s' if n != 1 else ''} now (a running gateway offers it within 30 s)"
    )


@image.command("revoke")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def revoke_cmd(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Withdraw an image's approval: it stays in the catalog but is offered only through rollouts."""
    entry = _run(ctx, lambda store: store.revoke(ref, by="cli"))
    if as_json:
        click.echo(json.dumps(entry_json(entry), indent=2))
    else:
        click.echo(f"revoked {entry.image_id} {entry.package_id}: available, not approved")


@image.command("remove")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def remove_cmd(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Remove an image by id (or a unique sha256 prefix of at least 8 hex digits)."""
    entry = _run(ctx, lambda store: store.remove(ref))
    if as_json:
        click.echo(json.dumps(entry_json(entry), indent=2))
    else:
        click.echo(f"removed {entry.image_id} {entry.package_id} ({entry.file_name})")


@image.command("import-list")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def import_list_cmd(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Import the images of a CHIP ota-provider-app --otaImageList JSON file."""
    report = _run(ctx, lambda store: import_ota_image_list(store, file))
    _print_report(ctx, report, as_json)


@image.command("import-z2m-index")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def import_z2m_cmd(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Import the locally present images of a Zigbee2MQTT OTA index (nothing is downloaded)."""
    report = _run(ctx, lambda store: import_z2m_index(store, file))
    _print_report(ctx, report, as_json)

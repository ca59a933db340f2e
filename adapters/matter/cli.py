"""`otagw matter ...`: commission devices onto the gateway's fabric and list the nodes it administers.

`announce NODE` makes one node query now (AnnounceOTAProvider, UrgentUpdateAvailable).
`commission CODE [--ip ADDR [--port N]]` takes a QR (`MT:...`) or manual pairing code, commissions the device with the chip SDK
controller (fabric created on first use in `<data_dir>/matter/`), reads its identity and versions, and points its
OTA requestor at the gateway's provider node (DefaultOTAProviders). `nodes [--json] [--refresh]` lists the
commissioned nodes (from `<data_dir>/matter/nodes.json`; `--refresh` reads them live first).

The Matter plugin hands this group to the CLI (`gateway.plugins`); the fabric code is imported per command, so
`otagw --help` stays fast.
The fabric storage has one writer at a time: while a gateway runs it owns the fabric, and these commands hand
their work to it through its control socket (`<data_dir>/matter/admin.sock`, owner-only).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

import click

from gateway.plugins import CliState as CliContext
from gateway.plugins import UserError


@click.group()
def matter() -> None:
    """Matter fabric administration."""


def _admin(ctx: CliContext) -> Any:
    from adapters.matter.fabric.admin import FabricAdmin, matter_dir

    cfg = ctx.config
    return FabricAdmin(matter_dir(cfg.data_dir), cfg.matter)


def _node_id(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text, 0)
    except ValueError:
        raise UserError(f"--node-id: {text!r} is not a number (decimal or 0x hex)") from None
    if not 1 <= value <= 0xFFFF_FFEF_FFFF_FFFF:
        raise UserError(f"--node-id: {text} is outside the operational node id range")
    return value


async def _via_gateway(ctx: CliContext, request: dict[str, Any], timeout: float) -> Any:
    """Hand a request to the running gateway's Matter adapter (its control socket); it owns the fabric."""
    from adapters.matter.adapter import control_socket_path

    path = control_socket_path(ctx.config.data_dir)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise UserError(
            f"the fabric is in use but the gateway's control socket {path} is unreachable: "
            f"{exc.strerror or exc}"
        ) from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise UserError(f"the gateway did not answer within {timeout:.0f} s") from None
    finally:
        writer.close()
    reply = json.loads(line or b"{}")
    if not reply.get("ok"):
        raise UserError(f"gateway: {reply.get('error', 'no answer')}")
    return reply.get("result")


async def _commission(
    ctx: CliContext, code: str, ip: str | None, port: int | None, node_id: int | None, timeout: float
) -> Any:
    from adapters.matter.fabric.admin import FabricBusyError, NodeEntry
    from adapters.matter.fabric.controller import ControllerError

    admin = _admin(ctx)
    try:
        await admin.start()
    except FabricBusyError:
        got = await _via_gateway(
            ctx,
            {
                "op": "commission",
                "code": code,
                "ip": ip,
                "port": port,
                "node_id": node_id,
                "timeout_s": timeout,
            },
            timeout + 120,
        )
        return NodeEntry(**got)
    except ControllerError as exc:
        raise UserError(str(exc)) from None
    try:
        entry = await admin.commission(code, ip=ip, port=port, node_id=node_id, timeout_s=timeout)
        info = await admin.node_info(entry.node_id)
        if info.get("has_requestor"):
            await admin.set_provider(entry.node_id)
        else:
            entry.last_error = "no OTA Software Update Requestor cluster on endpoint 0"
            admin.save_nodes()
        return admin.nodes[entry.node_id]
    except ControllerError as exc:
        raise UserError(f"commissioning failed: {exc}") from None
    finally:
        await admin.close()


@matter.command("commission")
@click.argument("code")
@click.option(
    "--ip",
    "ip",
    help="Device address: ADDR, [IPv6]:PORT or IPv4:PORT (skips mDNS discovery of the commissionable node).",
)
@click.option("--port", "port", type=int, help="Device UDP port with --ip (default 5540).")
@click.option("--node-id", "node_id", help="Operational node id to assign (default: next free).")
@click.option(
    "--timeout", "timeout", type=float, default=60.0, show_default=True, help="Discovery timeout (s)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the node record as JSON.")
@click.pass_obj
def commission_cmd(
    ctx: CliContext,
    code: str,
    ip: str | None,
    port: int | None,
    node_id: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Commission a device (QR or manual pairing CODE) and point its OTA requestor at this gateway."""
    from adapters.matter.fabric.address import parse_device_address

    if port is not None and ip is None:
        raise UserError("--port needs --ip (without --ip the device is found by mDNS, port included)")
    if ip is not None:
        try:
            parse_device_address(ip, port)  # bad input: a precise error before any controller starts
        except ValueError as exc:
            raise UserError(str(exc)) from None
    entry = asyncio.run(_commission(ctx, code, ip, port, _node_id(node_id), timeout))
    if as_json:
        click.echo(json.dumps(asdict(entry), indent=1))
        return
    click.echo(
        f"commissioned node 0x{entry.node_id:016X}: {entry.vendor_name or '?'} {entry.product_name or '?'} "
        f"({_hex(entry.vendor_id)}:{_hex(entry.product_id)}) version {entry.software_version_string or '?'} "
        f"({entry.software_version})"
    )
    if entry.default_provider is not None:
        click.echo(f"  OTA provider set to node 0x{entry.default_provider:016X}")
    if entry.last_error:
        click.echo(f"  note: {entry.last_error}")


def _hex(v: int | None) -> str:
    return "?" if v is None else f"0x{v:04X}"


async def _refresh(ctx: CliContext) -> None:
    from adapters.matter.fabric.admin import FabricBusyError
    from adapters.matter.fabric.controller import ControllerError

    admin = _admin(ctx)
    try:
        await admin.start()
    except FabricBusyError:
        await _via_gateway(ctx, {"op": "refresh"}, 300)
        return
    except ControllerError as exc:
        raise UserError(str(exc)) from None
    try:
        for nid, entry in list(admin.nodes.items()):
            try:
                await admin.node_info(nid)
                entry.last_error = None
            except ControllerError as exc:
                entry.last_error = f"unreachable: {exc}"
        admin.save_nodes()
    finally:
        await admin.close()


@matter.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--refresh", is_flag=True, help="Read every node live first.")
@click.pass_obj
def nodes_cmd(ctx: CliContext, as_json: bool, refresh: bool) -> None:
    """List the nodes commissioned onto the gateway's fabric."""
    from adapters.matter.fabric.admin import load_nodes, matter_dir

    if refresh:
        asyncio.run(_refresh(ctx))
    try:
        nodes = load_nodes(matter_dir(ctx.config.data_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{matter_dir(ctx.config.data_dir) / 'nodes.json'}: unreadable: {exc}") from None
    if as_json:
        click.echo(
            json.dumps(
                {"nodes": [asdict(n) for n in sorted(nodes.values(), key=lambda n: n.node_id)]}, indent=1
            )
        )
        return
    if not nodes:
        click.echo("no commissioned nodes")
        return
    click.echo(f"{'NODE ID':<18}  {'VID:PID':<13}  {'VERSION':<20}  {'PROVIDER':<18}  NAME")
    for n in sorted(nodes.values(), key=lambda n: n.node_id):
        version = f"{n.software_version_string or '?'} ({n.software_version})"
        provider = f"0x{n.default_provider:016X}" if n.default_provider is not None else "-"
        click.echo(
            f"0x{n.node_id:016X}  {_hex(n.vendor_id)}:{_hex(n.product_id)[2:]:<6}  {version:<20}  "
            f"{provider:<18}  {n.product_name or ''}" + (f"  [{n.last_error}]" if n.last_error else "")
        )


async def _announce(ctx: CliContext, node_id: int) -> None:
    from adapters.matter.fabric.admin import FabricBusyError
    from adapters.matter.fabric.controller import ControllerError

    admin = _admin(ctx)
    try:
        await admin.start()
    except FabricBusyError:  # the running gateway owns the fabric (and the record): it sends the announce
        await _via_gateway(ctx, {"op": "announce", "node_id": node_id}, 120)
        return
    except ControllerError as exc:
        raise UserError(str(exc)) from None
    try:
        if node_id not in admin.nodes:
            raise UserError(f"node 0x{node_id:016X} is not commissioned on the gateway's fabric")
        await admin.announce(node_id, reason=2)  # UrgentUpdateAvailable: query now
    except ControllerError as exc:
        raise UserError(f"announce failed: {exc}") from None
    finally:
        await admin.close()


@matter.command("announce")
@click.argument("node")
@click.pass_obj
def announce_cmd(ctx: CliContext, node: str) -> None:
    """Make one node query for an update now (AnnounceOTAProvider, UrgentUpdateAvailable). NODE: decimal or 0x hex."""
    node_id = _node_id(node)
    assert node_id is not None
    asyncio.run(_announce(ctx, node_id))
    click.echo(f"AnnounceOTAProvider sent to node 0x{node_id:016X}")

"""`otagw zigbee ...`: coordinator-mode network management — form, backup, restore, permit-join, devices, remove.

Who talks to the radio: a serial radio has one owner. When a gateway runs (its API answers at `api.listen` with
the admin token from `OTAGW_API_TOKEN`, `api.token` or `<data_dir>/api-token`), every command goes through its API
(`/api/v1/zigbee/network/...`, admin only), since the gateway owns the radio. When no gateway answers, `form`,
`backup` and `restore` open the radio themselves (zigpy + the configured radio library, database in data_dir) and
close it again; `devices` reads zigpy's database; `permit-join` and `remove` need the running gateway (a joining
device is interviewed by whoever holds the radio, a leave is confirmed over the air).

Backups are Open ZigBee Coordinator Backup JSON (Zigbee2MQTT and ZHA write the same), written 0600: they hold the
network key, which is never printed or logged.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.plugins import CliState, UserError, gateway_api_access

T = TypeVar("T")
API_TIMEOUT_S = 120.0


@click.group()
def zigbee() -> None:
    """Zigbee network management (coordinator mode)."""


class _NoGateway(Exception):
    """No gateway answers at api.listen: the CLI may open the radio itself."""


def _api(ctx: CliState, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the running gateway's zigbee API; _NoGateway when nothing listens there."""
    base, token = gateway_api_access(ctx.config)
    url = f"{base}/api/v1/zigbee{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=API_TIMEOUT_S) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", {})
            message = detail.get("message") if isinstance(detail, dict) else str(detail)
        except ValueError:
            message = exc.reason
        if exc.code == 401:
            raise UserError(
                f"the gateway at {base} refused the admin token (set OTAGW_API_TOKEN or api.token)"
            ) from None
        raise UserError(f"gateway at {base}: {message or exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError | FileNotFoundError):
            raise _NoGateway() from None
        raise UserError(f"the gateway at {base} is unreachable: {exc.reason}") from None
    except (ConnectionRefusedError, ConnectionResetError):
        raise _NoGateway() from None


async def _with_radio(ctx: CliState, op: Callable[[Any], Awaitable[T]], *, connect: bool = True) -> T:
    """Open the configured radio (no gateway holds it), run `op(NetworkManager)`, close it."""
    from adapters.zigbee.network import NetworkError, NetworkManager, install_key_redaction, secure_database
    from adapters.zigbee.radio import AdapterStartError, open_controller

    cfg = ctx.config
    install_key_redaction()
    secure_database(Path(cfg.data_dir) / cfg.zigbee.database)
    try:
        app = await open_controller(cfg.zigbee, Path(cfg.data_dir), connect=connect)
    except AdapterStartError as exc:
        raise UserError(str(exc)) from None
    try:
        return await op(NetworkManager(app, Path(cfg.data_dir)))
    except NetworkError as exc:
        raise UserError(str(exc)) from None
    finally:
        await app.shutdown()


def _net_error(exc: Exception) -> UserError:
    return UserError(str(exc))


@zigbee.command("form")
@click.option("--channel", type=click.IntRange(11, 26), help="Zigbee channel (default: 11, 15, 20 or 25).")
@click.option("--pan-id", "pan_id", help="16-bit PAN id, e.g. 0x1A62 (default: random).")
@click.option("--extended-pan-id", "extended_pan_id", help="aa:bb:cc:dd:ee:ff:00:11 (default: random).")
@click.option(
    "--force", is_flag=True, help="Replace a network already formed on the radio (its devices are lost)."
)
@click.pass_obj
def form_cmd(
    ctx: CliState, channel: int | None, pan_id: str | None, extended_pan_id: str | None, force: bool
) -> None:
    """Form a new Zigbee network on the radio."""
    from adapters.zigbee.network import FormRequest, NetworkError

    params = {"channel": channel, "pan_id": pan_id, "extended_pan_id": extended_pan_id, "force": force}
    try:
        req = FormRequest.from_params(params)  # bad input is refused before anything is touched
    except NetworkError as exc:
        raise _net_error(exc) from None
    try:
        result = _api(ctx, "POST", "/network/form", params)
    except _NoGateway:
        result = asyncio.run(_with_radio(ctx, lambda m: m.form(req)))
    click.echo(
        f"formed network: extended PAN id {result['extended_pan_id']}, PAN id {result['pan_id']}, "
        f"channel {result['channel']}"
    )


@zigbee.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def backup_cmd(ctx: CliState, file: Path) -> None:
    """Write the network's backup (Open ZigBee Coordinator Backup JSON, mode 0600) to FILE."""
    from adapters.zigbee.network import parse_backup, write_backup_file

    try:
        data = _api(ctx, "POST", "/network/backup", {})
        backup = parse_backup(data, "the gateway's backup")
    except _NoGateway:
        backup = asyncio.run(_with_radio(ctx, lambda m: m.backup()))
    try:
        write_backup_file(file, backup)
    except OSError as exc:
        raise UserError(f"{file}: cannot write: {exc.strerror or exc}") from None
    info = backup.network_info
    click.echo(
        f"backed up network {info.extended_pan_id} (PAN id 0x{int(info.pan_id):04X}, channel {info.channel}, "
        f"{len(info.children) + len(info.nwk_addresses)} device entries) to {file}"
    )


@zigbee.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def restore_cmd(ctx: CliState, file: Path) -> None:
    """Write the network in FILE (Open ZigBee Coordinator Backup JSON from otagw, Zigbee2MQTT or ZHA) to the radio."""
    from adapters.zigbee.network import NetworkError, read_backup_file

    try:
        backup = read_backup_file(file)
    except NetworkError as exc:
        raise _net_error(exc) from None
    try:
        result = _api(ctx, "POST", "/network/restore", {"backup": backup.as_open_coordinator_json()})
    except _NoGateway:
        result = asyncio.run(_with_radio(ctx, lambda m: m.restore(backup)))
    click.echo(
        f"restored network {result['extended_pan_id']} (PAN id {result['pan_id']}, channel {result['channel']})"
    )


@zigbee.command("permit-join")
@click.argument("seconds", type=click.IntRange(0, 254), default=60)
@click.pass_obj
def permit_join_cmd(ctx: CliState, seconds: int) -> None:
    """Let new devices join for SECONDS (default 60; 0 closes the network). Needs the running gateway."""
    try:
        _api(ctx, "POST", "/network/permit-join", {"seconds": seconds})
    except _NoGateway:
        raise UserError(
            "permit-join needs the running gateway (it interviews the devices that join): start `otagw run`"
        ) from None
    click.echo("joining closed" if seconds == 0 else f"joining open for {seconds} s")


@zigbee.command("devices")
@click.option("--json", "as_json", is_flag=True, help="JSON array.")
@click.pass_obj
def devices_cmd(ctx: CliState, as_json: bool) -> None:
    """Devices on the network (live from the gateway, else from zigpy's database)."""
    try:
        devices = _api(ctx, "GET", "/network/devices")
    except _NoGateway:

        async def listed(m: Any) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = m.devices()
            return result

        devices = asyncio.run(_with_radio(ctx, listed, connect=False))
    if as_json:
        click.echo(json.dumps(devices, indent=1))
        return
    if not devices:
        click.echo("no devices")
        return
    for d in devices:
        ota = "ota" if d.get("ota_client") else "-"
        click.echo(f"{d['ieee']}  {d['nwk']}  {d.get('manufacturer') or '?'}  {d.get('model') or '?'}  {ota}")


@zigbee.command("remove")
@click.argument("ieee")
@click.pass_obj
def remove_cmd(ctx: CliState, ieee: str) -> None:
    """Ask device IEEE to leave the network and forget it. Needs the running gateway."""
    from adapters.zigbee.network import NetworkError, parse_ieee

    try:
        eui = parse_ieee(ieee, "IEEE")
    except NetworkError as exc:
        raise _net_error(exc) from None
    try:
        _api(ctx, "DELETE", f"/network/devices/{eui}")
    except _NoGateway:
        raise UserError(
            "remove needs the running gateway (the leave goes over the air): start `otagw run`"
        ) from None
    click.echo(f"removed {eui}")

"""The Zigbee adapter's API operations (admin only, under /api/v1/zigbee): network management in coordinator mode.

The same operations as `otagw zigbee ...` (adapters/zigbee/cli.py), which uses these when a gateway runs and owns
the radio. Each handler gets the running `ZigbeeAdapter` and the request parameters (gateway/api/routes_plugins.py).
"""

from __future__ import annotations

from typing import Any

from adapters.zigbee.network import FormRequest, NetworkError, NetworkManager, network_summary, parse_backup
from gateway.plugins import PluginRoute, RouteError


def _manager(adapter: Any, params: dict[str, Any]) -> NetworkManager:
    """The NetworkManager of the radio named by `radio` (several radios), or of the only one."""
    pick = getattr(adapter, "running", None)
    if callable(pick):
        try:
            adapter = pick(params.get("radio"))
        except LookupError as exc:
            raise RouteError(400, str(exc), field="radio") from None
    manager: NetworkManager | None = getattr(adapter, "network", None)
    if manager is None:
        raise RouteError(503, "the zigbee radio is not attached")
    return manager


def _call(status_conflict: int = 409) -> Any:
    def wrap(fn: Any) -> Any:
        async def handler(adapter: Any, params: dict[str, Any]) -> Any:
            try:
                return await fn(_manager(adapter, params), params)
            except NetworkError as exc:
                raise RouteError(status_conflict if exc.conflict else 400, str(exc)) from None

        return handler

    return wrap


@_call()
async def _network(m: NetworkManager, params: dict[str, Any]) -> Any:
    return network_summary(m.app)


@_call()
async def _form(m: NetworkManager, params: dict[str, Any]) -> Any:
    return await m.form(FormRequest.from_params(params))


@_call()
async def _backup(m: NetworkManager, params: dict[str, Any]) -> Any:
    return await m.backup_json()


@_call()
async def _restore(m: NetworkManager, params: dict[str, Any]) -> Any:
    return await m.restore(parse_backup(params.get("backup"), "body.backup"))


@_call()
async def _permit_join(m: NetworkManager, params: dict[str, Any]) -> Any:
    return await m.permit_join(params.get("seconds"))


@_call()
async def _devices(m: NetworkManager, params: dict[str, Any]) -> Any:
    return m.devices()


@_call()
async def _remove(m: NetworkManager, params: dict[str, Any]) -> Any:
    return await m.remove(params.get("ieee"))


ROUTES = [
    PluginRoute(
        "GET",
        "/network",
        "network",
        "The Zigbee network's identity (extended PAN id, PAN id, channel)",
        _network,
    ),
    PluginRoute(
        "POST", "/network/form", "form", "Form a new network (channel, pan_id, extended_pan_id, force)", _form
    ),
    PluginRoute(
        "POST",
        "/network/backup",
        "backup",
        "Back up the network (Open ZigBee Coordinator Backup JSON)",
        _backup,
    ),
    PluginRoute(
        "POST",
        "/network/restore",
        "restore",
        "Restore a network from {backup: <Open Coordinator Backup>}",
        _restore,
    ),
    PluginRoute(
        "POST",
        "/network/permit-join",
        "permit_join",
        "Let devices join for {seconds} (0 closes)",
        _permit_join,
    ),
    PluginRoute("GET", "/network/devices", "devices", "Devices on the Zigbee network", _devices),
    PluginRoute(
        "DELETE", "/network/devices/{ieee}", "remove", "Ask a device to leave and forget it", _remove
    ),
]

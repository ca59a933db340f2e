"""The aiohttp application factory: middlewares, the route table, the dashboard and the app's shared state.

`create_app(services)` is all the composition root (gateway/service.py) and the tests need. `ApiServices`
carries what handlers use: the update core, the image store, the config, the clock, the token and a callback
reporting component health. Handlers reach it through `services(request)`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.api.auth import (
    CREDENTIALS_KEY,
    METRICS_ACCESS_KEY,
    SCOPES_KEY,
    TOKEN_KEY,
    MetricsAccess,
    auth_middleware,
)
from gateway.api.credentials import CredentialStore
from gateway.api.errors import error_middleware
from gateway.api.metrics import RECORDER_KEY, Recorder, http_metrics_middleware, start_recorder
from gateway.api.openapi import RouteTable, build_document
from gateway.api.sse import EventHub
from gateway.clock import Clock, SystemClock
from gateway.config import Config
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


def gateway_version() -> str:
    try:
        return dist_version("otagw")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class ApiServices:
    """Everything the HTTP handlers need; built by the composition root or a test."""

    core: UpdateCore
    store: ImageStore
    config: Config
    token: str
    clock: Clock = field(default_factory=SystemClock)
    health: Callable[[], dict[str, Any]] = field(default=lambda: {})
    # ask one device to query now through its protocol's adapter; returns what was sent (None: not wired)
    notify_device: Callable[[str], Awaitable[str]] | None = None
    hub: EventHub | None = None  # built by create_app when None
    progress_interval: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)
    credentials: CredentialStore | None = (
        None  # scoped device/integration tokens; built by create_app when None
    )
    # API operations adapter plugins contribute (gateway/api/routes_plugins.py), by adapter name
    # (each a gateway.plugins.PluginRoute, duck-typed: the API layer does not import the plugin contract)
    plugin_routes: dict[str, list[Any]] = field(default_factory=dict)
    # adapter name -> (running instance or None, why not): how plugin routes reach their adapter
    adapter_instance: Callable[[str], tuple[Any, str | None]] = field(
        default=lambda name: (None, "not started by this gateway")
    )
    metrics_access: MetricsAccess = field(default_factory=MetricsAccess)  # /metrics without the admin token


SERVICES_KEY: web.AppKey[ApiServices] = web.AppKey("otagw_services", ApiServices)
HUB_KEY: web.AppKey[EventHub] = web.AppKey("otagw_hub", EventHub)
DOC_KEY: web.AppKey[dict[str, Any]] = web.AppKey("otagw_openapi", dict)
TABLE_KEY: web.AppKey[RouteTable] = web.AppKey("otagw_routes", RouteTable)


def services(request: web.Request) -> ApiServices:
    return request.app[SERVICES_KEY]


def route_table() -> RouteTable:
    """Every API operation, from the route modules (imported here so the table is built once per call)."""
    from gateway.api import (
        routes_devices,
        routes_images,
        routes_query,
        routes_rollouts,
        routes_sources,
        routes_system,
        routes_tokens,
    )

    table = RouteTable()
    for module in (
        routes_system,
        routes_images,
        routes_devices,
        routes_rollouts,
        routes_query,
        routes_tokens,
        routes_sources,
    ):
        module.declare(table)
    return table


def create_app(svc: ApiServices) -> web.Application:
    """The complete API + dashboard application for `svc`."""
    app = web.Application(
        middlewares=[http_metrics_middleware(svc.clock.monotonic), error_middleware, auth_middleware],
        client_max_size=1 << 20,
    )
    app[SERVICES_KEY] = svc
    app[RECORDER_KEY] = Recorder()
    start_recorder(app, svc.core)
    app[TOKEN_KEY] = svc.token
    app[METRICS_ACCESS_KEY] = svc.metrics_access
    if svc.credentials is None:
        svc.credentials = CredentialStore(svc.config.data_dir)
    app[CREDENTIALS_KEY] = svc.credentials
    hub = svc.hub or EventHub(
        svc.core.subscribe,
        progress_interval=svc.progress_interval,
        max_clients=svc.config.api.max_event_clients,
    )
    svc.hub = hub
    app[HUB_KEY] = hub
    table = route_table()
    if svc.plugin_routes:
        from gateway.api import routes_plugins

        routes_plugins.declare(table, svc.plugin_routes, svc.adapter_instance)
    table.register(app)
    app[TABLE_KEY] = table
    app[SCOPES_KEY] = {o.operation_id: o.scope for o in table.ops}
    app[DOC_KEY] = build_document(table.ops, title="otagw", version=gateway_version())
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)

    async def _start_hub(app: web.Application) -> None:
        await hub.start()

    async def _stop_hub(app: web.Application) -> None:
        await hub.close()

    app.on_startup.append(_start_hub)
    # on_shutdown runs before aiohttp waits for open handlers: end the event streams there
    app.on_shutdown.append(_stop_hub)
    return app

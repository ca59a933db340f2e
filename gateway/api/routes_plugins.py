"""API operations contributed by adapter plugins (`gateway.plugins.PluginRoute`), served admin-only.

Each route is mounted at `/api/v1/<adapter><path>` (operationId `<adapter>_<name>`, no scope: scoped tokens get
403). The handler gets the running adapter instance from `ApiServices.adapter_instance(name)` — 503 while the
adapter is not running — and the request's parameters: the JSON object body merged over the query string.
A plugin error carrying an HTTP `status` (gateway.plugins.RouteError) or a ValueError becomes the usual JSON error
body. Routes are duck-typed (method, path, name, summary, handler): this layer does not import the plugin contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, MAX_JSON_BODY, Resp, RouteTable, err, load_json_body


async def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = {**request.query, **request.match_info}
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.can_read_body:
        raw = await request.content.read(MAX_JSON_BODY + 1)
        if len(raw) > MAX_JSON_BODY:
            raise ApiError(413, "too_large", f"JSON body larger than {MAX_JSON_BODY} bytes", field="body")
        if raw.strip():
            data = load_json_body(raw)
            if not isinstance(data, dict):
                raise ApiError(400, "invalid_json", "body must be a JSON object", field="body")
            params.update(data)
    return params


def _handler(
    adapter: str, route: Any, instance: Callable[[str], tuple[Any, str | None]]
) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        running, why = instance(adapter)
        if running is None:
            raise ApiError(
                503, "adapter_unavailable", f"the {adapter} adapter is not running: {why or 'disabled'}"
            )
        params = await _params(request)
        try:
            result = await route.handler(running, params)
        except ApiError:
            raise
        except Exception as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 600:
                raise ApiError(status, "rejected", str(exc), field=getattr(exc, "field", None)) from None
            if isinstance(exc, ValueError):
                raise ApiError(400, "invalid", str(exc)) from None
            raise
        return web.Response(text=json.dumps(result), content_type="application/json")

    handle.__doc__ = route.summary
    return handle


def declare(
    table: RouteTable,
    routes: dict[str, list[Any]],
    instance: Callable[[str], tuple[Any, str | None]],
) -> None:
    """Add every plugin's routes to `table`; `instance(name)` -> (running adapter or None, why not)."""
    for adapter, plugin_routes in sorted(routes.items()):
        for route in plugin_routes:
            table.op(
                route.method,
                f"{API_PREFIX}/{adapter}{route.path}",
                summary=route.summary,
                tag=adapter,
                operation_id=f"{adapter}_{route.name}",
                responses={
                    200: Resp("the operation's result (JSON)", content_type="application/json"),
                    400: err("bad parameters"),
                    503: err("the adapter is not running"),
                },
            )(_handler(adapter, route, instance))

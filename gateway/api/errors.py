"""JSON error responses for the HTTP API: one `ApiError` type and the middleware that renders every failure.

Every 4xx/5xx answer has the same body, `{"error": {"code", "message", "field"}}`, where `field` names the
offending request part (a JSON path such as `waves[1].percent`, a query parameter or a path segment) when there
is one. Unexpected exceptions are logged with their traceback and answered as a generic 500: the client never
sees a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A failure the client caused or must know about; rendered as JSON with `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra

    def response(self) -> web.Response:
        return error_response(
            self.status, self.code, self.message, field=self.field, headers=self.headers, **self.extra
        )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps({"error": body}),
        content_type="application/json",
        headers=headers,
    )


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """pydantic `loc` -> "waves[1].percent"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first pydantic error as an ApiError naming its field (all errors listed under `details`)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    details = []
    for err in errors:
        path = field_path(tuple(err["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        details.append({"field": path, "message": err["msg"]})
    first = details[0] if details else {"field": prefix or None, "message": "invalid value"}
    return ApiError(
        422, "invalid_field", f"{first['field']}: {first['message']}", field=first["field"], details=details
    )


_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        return error_response(
            exc.status, _REASONS.get(exc.status, "http_error"), exc.reason, headers=headers or None
        )
    except Exception:  # the last line of defence: log it, never leak it
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the gateway log")

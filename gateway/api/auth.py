"""API authentication: resolving the bearer token and the middleware that checks every request.

Where the token comes from, first match wins: env `OTAGW_API_TOKEN`, config `api.token`, else the file
`<data_dir>/api-token`, generated (owner-only, 0600) on the first run. The log names the file, never the token.

How a request proves it:
- `Authorization: Bearer <token>`: scripts, Prometheus, the CLI.
- the `otagw_session` cookie: the dashboard. `GET /login?token=<token>` (or the login form's POST) checks the
  token, sets the cookie (HttpOnly, SameSite=Strict) and redirects to `/` so the token leaves the address bar.
  The cookie holds HMAC-SHA256(token, "otagw-session"), not the token itself, and dies with the token.
  Unsafe methods authenticated by cookie must also carry `X-OTAGW-CSRF: 1`, a header another origin's page
  cannot add without a CORS pre-flight this server never grants.
- `?token=<token>` on the event stream only (`/api/v1/events`), for EventSource clients that can neither set
  headers nor hold a cookie.

Scoped credentials (gateway/api/credentials.py): devices and integrations present their own token as
`Authorization: Bearer <token>`. It opens only the operations whose scope it holds (403 otherwise), never the
cookie or `?token=`; the handlers then restrict a device-bound token to its own device (`principal(request)`).

Exempt: `/healthz`, `/livez`, the dashboard's static assets (the same files that ship in the package), the login page
and `/publish/` (the published catalogs check their own catalog-read token, see gateway/publish/routes.py).

`/metrics` has its own credential so Prometheus never holds the admin token (config `metrics.auth`):
- `token` (default): `Authorization: Bearer <metrics token>`, the token from env `OTAGW_METRICS_TOKEN` or the file
  `<data_dir>/metrics-token` (generated 0600 on first run, like the API token). The admin token works too.
- `open`: anyone who can reach `api.listen` may scrape; chosen by the user, logged at start.
A scoped token with the `metrics` scope (`otagw token create prometheus --scope metrics`) works too.

Comparisons are constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.api.credentials import CredentialError, CredentialStore
from gateway.api.errors import ApiError, Handler

log = logging.getLogger(__name__)

TOKEN_ENV = "OTAGW_API_TOKEN"
TOKEN_FILE = "api-token"
METRICS_TOKEN_ENV = "OTAGW_METRICS_TOKEN"
METRICS_TOKEN_FILE = "metrics-token"
METRICS_PATH = "/metrics"
COOKIE = "otagw_session"
CSRF_HEADER = "X-OTAGW-CSRF"
QUERY_TOKEN_PATHS = frozenset({"/api/v1/events"})
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/login", "/favicon.ico"})
# /publish/ carries its own catalog-read token in the URL (Z2M and ZHA take only a URL) and is checked by
# gateway/publish/routes.py, which never accepts the admin token there
PUBLIC_PREFIXES = ("/static/", "/publish/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

TOKEN_KEY: web.AppKey[str] = web.AppKey("otagw_api_token", str)
CREDENTIALS_KEY: web.AppKey[CredentialStore] = web.AppKey("otagw_credentials", CredentialStore)
# route name (operationId) -> the scope a scoped credential needs for it; absent/None = admin token only
SCOPES_KEY: web.AppKey[dict[str, str | None]] = web.AppKey("otagw_route_scopes", dict)
# where the middleware leaves the request's Principal (a typed RequestKey on aiohttp >= 3.13, else a string)
PRINCIPAL: Any = (
    web.RequestKey("otagw_principal", object) if hasattr(web, "RequestKey") else "otagw_principal"
)


@dataclass(frozen=True)
class Principal:
    """Who made a request: the admin (every operation) or a scoped credential."""

    name: str
    scopes: frozenset[str] | None = None  # None: the admin token, every scope
    device: str | None = None  # a device-bound credential acts for this device id only

    @property
    def admin(self) -> bool:
        return self.scopes is None

    def check_device(self, device_id: str, field: str = "device") -> None:
        """403 unless this principal may act for `device_id`."""
        if self.device is not None and device_id != self.device:
            raise ApiError(
                403,
                "forbidden",
                f"credential {self.name!r} is bound to device {self.device}, not {device_id}",
                field=field,
            )


ADMIN = Principal("admin")


def principal(request: web.Request) -> Principal:
    """The principal the auth middleware authenticated (the admin for requests it did not see)."""
    found = request.get(PRINCIPAL)
    return found if isinstance(found, Principal) else ADMIN


@dataclass(frozen=True, slots=True)
class MetricsAccess:
    """Who may scrape /metrics besides the admin: anyone (`open`) or the holder of `token`."""

    open: bool = False
    token: str | None = None


METRICS_ACCESS_KEY: web.AppKey[MetricsAccess] = web.AppKey("otagw_metrics_access", MetricsAccess)


class TokenError(Exception):
    """The token file exists but cannot be used (unreadable, empty, or readable by others)."""


def resolve_token(config_token: str | None, data_dir: Path) -> tuple[str, str]:
    """Return (token, where it came from). May create `<data_dir>/api-token` (0600)."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env, f"environment variable {TOKEN_ENV}"
    if config_token:
        return config_token, "config api.token"
    path = data_dir.resolve() / TOKEN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token_file(path), str(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    log.info("generated a new API token", extra={"fields": {"token_file": str(path)}})
    return token, str(path)


def resolve_metrics_token(data_dir: Path) -> tuple[str, str]:
    """The metrics scrape token and where it came from (env, or `<data_dir>/metrics-token`, created 0600)."""
    env = os.environ.get(METRICS_TOKEN_ENV, "").strip()
    if env:
        return env, f"environment variable {METRICS_TOKEN_ENV}"
    path = data_dir.resolve() / METRICS_TOKEN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token_file(path), str(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    log.info("generated a new metrics token", extra={"fields": {"token_file": str(path)}})
    return token, str(path)


def _read_token_file(path: Path) -> str:
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise TokenError(
                f"{path}: token file is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
            )
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{path}: cannot read the API token: {exc}") from None
    if len(token) < 16:
        raise TokenError(f"{path}: API token is empty or shorter than 16 characters")
    return token


def token_matches(expected: str, given: str | None) -> bool:
    if not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def session_value(token: str) -> str:
    """The dashboard cookie's value for `token`."""
    return hmac.new(token.encode("utf-8"), b"otagw-session", "sha256").hexdigest()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def authenticate(request: web.Request, token: str) -> str | None:
    """Which credential authenticated `request` ("bearer", "cookie", "query"), or None."""
    if token_matches(token, _bearer(request)):
        return "bearer"
    if token_matches(session_value(token), request.cookies.get(COOKIE)):
        return "cookie"
    if request.path in QUERY_TOKEN_PATHS and token_matches(token, request.query.get("token")):
        return "query"
    return None


def metrics_allowed(request: web.Request) -> bool:
    """A scrape of /metrics with the metrics credential (or none needed): no admin token involved."""
    if request.path != METRICS_PATH or request.method not in SAFE_METHODS:
        return False
    access = request.app.get(METRICS_ACCESS_KEY)
    if access is None:
        return False
    return access.open or (access.token is not None and token_matches(access.token, _bearer(request)))


def _scoped(request: web.Request) -> Principal | None:
    """The scoped credential presented as the bearer token, checked against the route's scope (403)."""
    store = request.app.get(CREDENTIALS_KEY)
    given = _bearer(request)
    if store is None or given is None:
        return None
    try:
        cred = store.resolve(given)
    except CredentialError as exc:
        log.error("scoped credentials unusable: %s", exc)
        raise ApiError(
            500, "credentials_unusable", "scoped credentials unusable; see the gateway log"
        ) from None
    if cred is None:
        return None
    route = request.match_info.route.name
    need = request.app.get(SCOPES_KEY, {}).get(route or "")
    if need is None or need not in cred.scopes:
        what = f"scope {need!r}" if need else "the admin token"
        raise ApiError(
            403,
            "forbidden",
            f"credential {cred.name!r} (scopes: {', '.join(cred.scopes)}) may not {request.method} "
            f"{request.path}: needs {what}",
            field="Authorization",
        )
    return Principal(cred.name, frozenset(cred.scopes), cred.device)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_public(request.path) or metrics_allowed(request):
        return await handler(request)
    token = request.app[TOKEN_KEY]
    how = authenticate(request, token)
    if how is None and (scoped := _scoped(request)) is not None:
        request[PRINCIPAL] = scoped
        return await handler(request)
    if how is None:
        if request.path == "/" and request.method in SAFE_METHODS:
            # the dashboard without a session: show the login page instead of a JSON 401
            raise web.HTTPSeeOther("/login")
        given = "Authorization" in request.headers or COOKIE in request.cookies or "token" in request.query
        raise ApiError(
            401,
            "unauthorized",
            "invalid API token" if given else "missing API token (Authorization: Bearer <token>)",
            field="Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="otagw"'},
        )
    if how == "cookie" and request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise ApiError(
            403,
            "csrf",
            f"cookie-authenticated {request.method} needs header {CSRF_HEADER}: 1",
            field=CSRF_HEADER,
        )
    return await handler(request)

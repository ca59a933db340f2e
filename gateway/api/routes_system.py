"""System routes: health, metrics, the OpenAPI document, the event stream, and the dashboard + its login.

`/healthz` (readiness: 200 only when the core and every enabled adapter run, else 503 naming each adapter, its
state, reason and next retry) and `/livez` (liveness: the process answers) need no authentication (load balancers,
Docker HEALTHCHECK). The dashboard page
needs a session (cookie from `/login`); its static assets under `/static/` are public package files.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import DOC_KEY, HUB_KEY, STATIC_DIR, gateway_version, services
from gateway.api.auth import COOKIE, session_value, token_matches
from gateway.api.metrics import CONTENT_TYPE, RECORDER_KEY, render, take_snapshot
from gateway.api.openapi import API_PREFIX, Resp, RouteTable, err, reply
from gateway.api.sse import stream


class AdapterHealth(BaseModel):
    state: Literal["disabled", "unavailable", "starting", "running", "failed", "stopping", "stopped"]
    error: str | None = Field(None, description="why the adapter is not running, in one line")
    attempts: int = Field(0, description="failed start attempts since it last ran")
    next_retry_at: float | None = Field(
        None, description="when the gateway tries to start it again (Unix time); null: no retry planned"
    )
    details: dict[str, Any] | None = Field(None, description="adapter-specific health (its plugin's)")


class Health(BaseModel):
    status: Literal["ok", "degraded", "starting", "stopping"] = Field(
        description="ok: core and every enabled adapter run (200); degraded: an enabled adapter is not running "
        "(503, see its error and next_retry_at)"
    )
    version: str
    core: Literal["starting", "running", "stopping", "stopped"]
    adapters: dict[str, AdapterHealth]


class Liveness(BaseModel):
    status: Literal["alive"]
    version: str


_SERVING = ("running", "disabled")


async def healthz(request: web.Request) -> web.Response:
    """Readiness: 200 only when the core and every enabled adapter run; otherwise 503 with each adapter's state,
    reason and next retry. No authentication."""
    info = services(request).health()
    adapters = info.get("adapters", {})
    core = info.get("core", "running")
    if core != "running":
        status = "stopping" if core in ("stopping", "stopped") else "starting"
    elif any(a.get("state") not in _SERVING for a in adapters.values()):
        status = "degraded"
    else:
        status = "ok"
    body = Health(status=status, version=gateway_version(), core=core, adapters=adapters)
    return reply(body, status=200 if status == "ok" else 503)


async def livez(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP (nothing about adapters). No authentication."""
    return reply(Liveness(status="alive", version=gateway_version()))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the gateway's counters.

    Needs the metrics token (config `metrics.auth: token`, the default) or nothing (`metrics.auth: open`); the admin
    token also works."""
    from gateway.api.routes_rollouts import all_rollouts

    svc = services(request)
    adapters = {name: str(a.get("state")) for name, a in svc.health().get("adapters", {}).items()}
    snap = take_snapshot(
        svc.core,
        [r.model_dump() for r in all_rollouts(svc.core)],
        request.app[HUB_KEY].clients,
        adapters,
        gateway_version(),
    )
    sources = svc.extra.get("sources")
    if sources is not None:
        snap.sources = sources.metrics()
    publisher = svc.extra.get("publish")
    if publisher is not None:
        snap.published = publisher.metrics()
    resp = web.Response(body=render(snap, request.app[RECORDER_KEY]))
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


async def openapi(request: web.Request) -> web.Response:
    """This document."""
    return web.Response(text=json.dumps(request.app[DOC_KEY]), content_type="application/json")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: device state changes, transfer progress (coalesced), rollout and image changes.

    EventSource cannot set headers: this route also accepts `?token=<token>` (or the dashboard cookie)."""
    hub = request.app[HUB_KEY]
    return await stream(request, hub, {"seq": hub.seq, "version": gateway_version()})


async def dashboard(request: web.Request) -> web.FileResponse:
    """The dashboard page (needs the session cookie; without it redirects to /login)."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


def _login_page(message: str = "", status: int = 200) -> web.Response:
    html = (STATIC_DIR / "login.html").read_text(encoding="utf-8")
    text = html.replace("<!--MESSAGE-->", f'<p class="error">{message}</p>' if message else "")
    return web.Response(
        text=text, content_type="text/html", status=status, headers={"Cache-Control": "no-store"}
    )


def _logged_in(request: web.Request, token: str) -> web.HTTPSeeOther:
    resp = web.HTTPSeeOther("/")
    resp.set_cookie(
        COOKIE, session_value(token), httponly=True, samesite="Strict", path="/", secure=request.secure
    )
    return resp


async def login_page(request: web.Request) -> web.Response:
    """The login form; `?token=<token>` logs in directly (sets the session cookie, redirects to /)."""
    token = services(request).token
    given = request.query.get("token")
    if given is None:
        return _login_page()
    if token_matches(token, given):
        raise _logged_in(request, token)
    return _login_page("That token is not valid.", status=401)


async def login(request: web.Request) -> web.Response:
    """Form post of the login page (field `token`)."""
    token = services(request).token
    form = await request.post()
    given = form.get("token")
    if isinstance(given, str) and token_matches(token, given.strip()):
        raise _logged_in(request, token)
    return _login_page("That token is not valid.", status=401)


def declare(t: RouteTable) -> None:
    html = Resp("HTML page", content_type="text/html")
    t.op(
        "GET",
        "/healthz",
        summary="Readiness: core and every enabled adapter running",
        tag="system",
        auth=False,
        responses={
            200: Resp("everything enabled runs", Health),
            503: Resp("an enabled adapter or the core is not running", Health),
        },
    )(healthz)
    t.op(
        "GET",
        "/livez",
        summary="Liveness: the process answers",
        tag="system",
        auth=False,
        responses={200: Resp("alive", Liveness)},
    )(livez)
    t.op(
        "GET",
        "/metrics",
        summary="Prometheus metrics",
        tag="system",
        scope="metrics",
        responses={200: Resp("text exposition format", content_type="text/plain")},
    )(metrics)
    t.op(
        "GET",
        f"{API_PREFIX}/openapi.json",
        summary="This OpenAPI document",
        tag="system",
        responses={200: Resp("OpenAPI 3.1 document", content_type="application/json")},
    )(openapi)
    t.op(
        "GET",
        f"{API_PREFIX}/events",
        summary="Live event stream (SSE)",
        tag="system",
        responses={
            200: Resp("text/event-stream", content_type="text/event-stream"),
            503: err("api.max_event_clients streams already open (Retry-After)"),
        },
    )(events)
    t.op(
        "GET",
        "/",
        summary="Dashboard",
        tag="dashboard",
        responses={200: html, 303: Resp("no session: go to /login")},
    )(dashboard)
    t.op(
        "GET",
        "/login",
        summary="Dashboard login",
        tag="dashboard",
        auth=False,
        responses={200: html, 303: Resp("logged in: go to /"), 401: html},
    )(login_page)
    t.op(
        "POST",
        "/login",
        summary="Dashboard login (form post)",
        tag="dashboard",
        auth=False,
        operation_id="login_post",
        raw_body="application/x-www-form-urlencoded",
        responses={303: Resp("logged in: go to /"), 401: html},
    )(login)

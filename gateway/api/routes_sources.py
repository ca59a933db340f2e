"""Firmware source routes (admin): list sources with their status, check one now, fetch one index entry.

The manager is the gateway's (`ApiServices.extra["sources"]`); an app built without one (tests, tools) gets one
wired to its core on first use. A disabled source answers 409 and is never contacted.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, Model, Resp, RouteTable, err, parse_body, reply
from gateway.sources.manager import SourceManager, manager_for_core
from gateway.sources.model import SourceError


class SourceOut(BaseModel):
    name: str
    type: str
    enabled: bool
    url: str | None
    last_check: float | None
    last_success: float | None
    last_error: str | None
    entries: int
    checks: int
    errors: int
    consecutive_failures: int
    not_modified: int
    downloads: int
    rejected: int
    next_check: float | None


class CheckOut(BaseModel):
    source: str
    entries: int
    not_modified: bool
    imported: list[str] = Field(
        description="image ids added to the catalog (available unless the source is trusted)"
    )
    rejected: list[str] = Field(description="downloads refused: source, entry and field")
    errors: list[str]


class FetchBody(Model):
    entry: str = Field(
        min_length=1, max_length=256, description="<source>:<key> or a key unique across sources"
    )


def manager(request: web.Request) -> SourceManager:
    svc = services(request)
    found: Any = svc.extra.get("sources")
    if found is None:
        found = svc.extra["sources"] = manager_for_core(svc.config, svc.store, svc.core, svc.clock)
    assert isinstance(found, SourceManager)
    return found


async def list_sources(request: web.Request) -> web.Response:
    """Every configured source (enabled or not) with its last check and counters."""
    return reply([SourceOut.model_validate(s.to_dict()) for s in manager(request).statuses()])


async def check_source(request: web.Request) -> web.Response:
    """Check one enabled source's index now and download what the fleet can use."""
    m = manager(request)
    name = request.match_info["name"]
    try:
        m.get(name)
        report = await m.check(name)
    except SourceError as exc:
        status = 404 if "no source named" in str(exc) else 409
        raise ApiError(status, "source", str(exc), field="name") from None
    return reply(CheckOut.model_validate(report.to_dict()))


async def fetch_entry(request: web.Request) -> web.Response:
    """Download, verify and import one index entry (from a previous check)."""
    body = await parse_body(request, FetchBody)
    try:
        report = await manager(request).fetch(body.entry)
    except SourceError as exc:
        raise ApiError(
            404 if "no index entry" in str(exc) else 409, "source", str(exc), field="entry"
        ) from None
    return reply(CheckOut.model_validate(report.to_dict()))


def declare(t: RouteTable) -> None:
    p = f"{API_PREFIX}/sources"
    t.op("GET", p, summary="List firmware sources", tag="sources",
         responses={200: Resp("sources", SourceOut, many=True)})(list_sources)  # fmt: skip
    t.op(
        "POST",
        p + "/{name}/check",
        summary="Check a firmware source now",
        tag="sources",
        responses={
            200: Resp("what the check found", CheckOut),
            404: err("no such source"),
            409: err("disabled"),
        },
    )(check_source)
    t.op(
        "POST",
        p + "/fetch",
        summary="Fetch one index entry",
        tag="sources",
        body=FetchBody,
        responses={200: Resp("what was imported", CheckOut), 404: err("no such entry"), 409: err("disabled")},
    )(fetch_entry)

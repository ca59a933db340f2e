"""The neutral version query and status report of reference 003, for IP devices and tools.

`POST /api/v1/query` is "Query Software Packages": the device says who it is and which package ids it has
installed; the answer is the packages available to it (the full 003 manifest, at most one: the image the core
selected under policy and rollouts) and a callback interval (when to ask again). When a package is offered the
answer also carries a transfer `token` and a complete `download_url` (with `?transfer=<token>`, so fetching it as
given counts as the device's transfer: progress, budget, completion); the device downloads with its bearer token
(a scoped one: gateway/api/credentials.py) and reports status with `POST /api/v1/status` ("OTA Status Report": Notified, Downloading, Updating, Successfully
Updated, Failed to Update, with percent and error). Both go through the same `UpdateCoreInterface` calls as
the Matter and Zigbee adapters, so policy, budgets and rollouts apply alike.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.auth import principal
from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, Model, Resp, RouteTable, err, parse_body, reply
from gateway.api.routes_images import PackageManifest, manifest
from gateway.core.interface import (
    Available,
    Busy,
    DeviceInfo,
    DeviceKey,
    NotAvailable,
    ReportedStatus,
    StatusReport,
)


class DeviceKeyIn(Model):
    protocol: Literal["matter", "zigbee"]
    network: str = Field(min_length=1, max_length=128, description="pan:<id> or fabric:<cfid hex>, or 'ip'")
    address: str = Field(min_length=1, max_length=128, description="IEEE address or node id")
    endpoint: int = Field(0, ge=0, le=255)

    def key(self) -> DeviceKey:
        return DeviceKey(self.protocol, self.network, self.address, self.endpoint)


class DeviceIn(DeviceKeyIn):
    vendor_id: int | None = Field(None, ge=0, le=0xFFFF)
    product_id: int | None = Field(None, ge=0, le=0xFFFF)
    vendor_name: str | None = Field(None, max_length=128)
    model: str | None = Field(None, max_length=128)
    hardware_version: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    current_version: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    current_version_string: str | None = Field(None, max_length=64)
    sleepy: bool | None = None
    tags: list[str] = Field(default_factory=list, max_length=32)

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            key=self.key(),
            vendor_id=self.vendor_id,
            product_id=self.product_id,
            vendor_name=self.vendor_name,
            model=self.model,
            hardware_version=self.hardware_version,
            current_version=self.current_version,
            current_version_string=self.current_version_string,
            sleepy=self.sleepy,
            tags=tuple(self.tags),
        )


class QueryIn(Model):
    device: DeviceIn
    installed: list[str] = Field(
        default_factory=list,
        max_length=1024,
        description="003 Package IDs: the software package ids installed on the device",
    )


class QueryOut(BaseModel):
    packages: list[PackageManifest] = Field(description="003 Packages: available for update (0 or 1 here)")
    callback_interval: int = Field(description="003 Callback Interval: seconds until the next query")
    decision: Literal["available", "not_available", "busy"]
    reason: str
    token: str | None = Field(None, description="transfer token (hex) when a package is offered")
    download_url: str | None = None
    delay_s: int = Field(0, description="wait this long before downloading")
    consent_needed: bool = False


class StatusIn(Model):
    device: DeviceKeyIn
    status: ReportedStatus
    percent: int | None = Field(None, ge=0, le=100)
    error: str | None = Field(None, max_length=1024)
    token: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{16,128}$",
        description="the offer's transfer token from /api/v1/query: binds the report to that offer "
        "(403 if the offer belongs to another device, 409 if it is no longer live)",
    )


class StatusOut(BaseModel):
    accepted: bool


async def query(request: web.Request) -> web.Response:
    """003 Query Software Packages: installed package ids in; available packages and a callback interval out."""
    svc = services(request)
    body = await parse_body(request, QueryIn)
    info = body.device.info()
    principal(request).check_device(info.key.device_id, field="device")
    await svc.core.observe(info)
    result = await svc.core.query(info, body.installed)
    cfg = svc.config.policy
    if isinstance(result, Available):
        out = QueryOut(
            packages=[manifest(result.image)],
            callback_interval=cfg.callback_interval_s,
            decision="available",
            reason=result.reason,
            token=result.token.hex(),
            delay_s=result.delay_s,
            # complete: the transfer token makes the download report progress and completion (and free the slot)
            download_url=f"{API_PREFIX}/images/{result.image.image_id}/download?transfer={result.token.hex()}",
            consent_needed=result.consent_needed,
        )
    elif isinstance(result, NotAvailable):
        out = QueryOut(
            packages=[],
            callback_interval=result.callback_interval_s,
            decision="not_available",
            reason=result.reason,
        )
    elif isinstance(result, Busy):
        out = QueryOut(
            packages=[], callback_interval=result.retry_after_s, decision="busy", reason=result.reason
        )
    else:  # pragma: no cover - the interface has exactly three answers
        raise ApiError(500, "internal_error", f"unexpected query result {type(result).__name__}")
    return reply(out)


async def status(request: web.Request) -> web.Response:
    """003 OTA Status Report: Notified, Downloading, Updating, Successfully Updated, Failed to Update."""
    svc = services(request)
    body = await parse_body(request, StatusIn)
    key = body.device.key()
    principal(request).check_device(key.device_id, field="device")
    if body.token is not None:
        token = bytes.fromhex(body.token)
        owner = next((d.device_id for d in svc.core.list_devices() if d.token == token), None)
        if owner is None:
            raise ApiError(409, "unknown_transfer", f"token {body.token} is not a live offer", field="token")
        if owner != key.device_id:
            raise ApiError(
                403, "forbidden", f"the offer {body.token} belongs to another device", field="token"
            )
    await svc.core.status_report(body.device.key(), StatusReport(body.status, body.percent, body.error))
    return reply(StatusOut(accepted=True))


def declare(t: RouteTable) -> None:
    t.op(
        "POST",
        f"{API_PREFIX}/query",
        summary="Query software packages (reference 003)",
        tag="devices",
        body=QueryIn,
        responses={200: Resp("available packages and callback interval", QueryOut)},
        scope="query",
    )(query)
    t.op(
        "POST",
        f"{API_PREFIX}/status",
        summary="OTA status report (reference 003)",
        tag="devices",
        body=StatusIn,
        responses={200: Resp("recorded", StatusOut), 409: err("token is not a live offer")},
        scope="status",
    )(status)

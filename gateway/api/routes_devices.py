"""Device routes: the fleet list with filters, one device with its transition history, the update plan, and
"query now" (the device's adapter asks it to query: Matter AnnounceOTAProvider).

Devices of both protocols are one list (the core's OTA_Device records); the transfer token is never exposed.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.errors import ApiError
from gateway.api.names import display_name, manufacturer_name
from gateway.api.openapi import API_PREFIX, Model, Resp, RouteTable, err, parse_body, parse_query, reply
from gateway.api.routes_rollouts import RolloutOut, rollout_out
from gateway.core.records import DeviceRecord
from gateway.core.rollouts import RolloutError
from gateway.core.states import DeviceState


class DeviceOut(BaseModel):
    device_id: str
    name: str | None = Field(description="the owner's name for the device (PATCH to set)")
    display_name: str = Field(
        description="what to show: owner's name, Matter NodeLabel, maker + model, or a short address"
    )
    manufacturer_name: str | None = Field(
        description="vendor name from the device, else the Zigbee manufacturer code's name"
    )
    pinned_version: str | None = Field(description="owner override: held at this version spec")
    excluded: bool = Field(description="owner override: never offered an update")
    protocol: Literal["matter", "zigbee"]
    network: str
    address: str
    endpoint: int
    state: DeviceState
    state_since: float
    state_reason: str
    resume_state: DeviceState | None
    vendor_id: int | None
    product_id: int | None
    vendor_name: str | None
    model: str | None
    hardware_version: int | None
    current_version: int | None
    current_version_string: str | None
    sleepy: bool | None
    tags: list[str]
    extra: dict[str, Any]
    target_image_id: str | None
    target_version: int | None
    target_version_string: str | None
    target_size: int | None
    bytes_sent: int = Field(
        description="every byte served, repeats included (over-counts, per reference 004)"
    )
    acked_offset: int = Field(description="highest contiguous offset acknowledged: the resume point")
    percent: int | None = Field(description="acked_offset as a percentage of the target image")
    last_progress_at: float | None
    apply_at: float | None
    verify_deadline: float | None
    rollout_id: str | None
    rollout_wave: int | None
    attempts: int
    failures: int
    next_retry_at: float | None
    last_error: str | None
    reported_status: str | None
    reported_percent: int | None
    first_seen: float
    last_seen: float
    last_query: float | None
    present: bool
    failure_kind: str | None = Field(
        None, description="what ended the last failed episode: download, apply, device_reported, not_back, "
        "not_verified, old_version"
    )
    blocked_image_id: str | None = Field(
        None, description="parked: this image is not offered again until POST .../retry (needs attention)"
    )
    blocked_reason: str | None = None
    blocked_at: float | None = None
    last_answer: str | None = Field(None, description="the last query's answer: Available, NotAvailable, Busy")
    last_answer_reason: str | None = None
    power_source: Literal["mains", "battery"] | None = None
    battery_percent: int | None = None
    bytes_downloaded: int | None = Field(
        None, description="contiguous bytes the device has of its target image (full size once finished)"
    )


class HistoryOut(BaseModel):
    at: float
    old_state: str | None
    new_state: str
    reason: str
    image_id: str | None
    version: int | None
    offset: int | None


class DeviceDetail(DeviceOut):
    history: list[HistoryOut]


class DeviceQuery(Model):
    protocol: Literal["matter", "zigbee"] | None = None
    state: list[DeviceState] | None = Field(None, description="repeatable: any of these states")
    network: str | None = Field(None, description="shell pattern, e.g. pan:* or fabric:1a2b*")
    model: str | None = Field(None, description="shell pattern over the model name")
    vendor_id: int | None = None
    product_id: int | None = None
    rollout_id: str | None = None
    present: bool | None = None


class PlanItemOut(BaseModel):
    device_id: str
    state: DeviceState
    current_version: int | None
    current_version_string: str | None
    outcome: Literal["update", "later", "in_progress", "none", "left"] = Field(
        description="update: offered now; later: window, back-off, budget or paused rollout; in_progress; "
        "none: nothing to offer (see reason); left: the device left the network"
    )
    image_id: str | None
    version_string: str | None
    when: float | None = Field(description="epoch seconds; null when unknown or never")
    reason: str


def device_dict(rec: DeviceRecord) -> dict[str, Any]:
    data = rec.to_dict()
    data.pop("token", None)
    data.pop("token_issued_at", None)
    data["display_name"] = display_name(rec)
    data["manufacturer_name"] = manufacturer_name(rec)
    return data


class DeviceOverrides(Model):
    """Owner overrides; only the keys given change (null clears name / pinned_version)."""

    name: str | None = Field(None, max_length=64, description="display name; null or empty clears it")
    pinned_version: str | None = Field(
        None,
        max_length=64,
        description='hold the device at this version spec (e.g. "1.2.*", "0x01020304", ">=5"); null clears',
    )
    excluded: bool | None = Field(None, description="true: never offer this device an update")


class UpdateNow(Model):
    image: str | None = Field(
        None, max_length=64, description="image id; default: the newest image that applies and policy permits"
    )


def _device_id(request: web.Request) -> str:
    device_id = request.match_info["device_id"]
    if services(request).core.get_device(device_id) is None:
        raise ApiError(404, "not_found", f"no device {device_id!r}", field="device_id")
    return device_id


async def patch_device(request: web.Request) -> web.Response:
    """Rename the device, pin it to a version or exclude it from updates (the owner's overrides)."""
    core = services(request).core
    body = await parse_body(request, DeviceOverrides)  # a malformed body is 400/422 whatever the device
    device_id = _device_id(request)
    values: dict[str, Any] = {}
    for key in body.model_fields_set:
        value = getattr(body, key)
        if key in ("name", "pinned_version"):
            value = value.strip() if isinstance(value, str) else None
            if key == "name" and value and any(ord(c) < 32 for c in value):
                raise ApiError(422, "invalid_name", "name contains control characters", field="name")
            values[key] = value or None
        elif key == "excluded":
            if value is None:
                raise ApiError(422, "invalid_override", "excluded must be true or false", field="excluded")
            values[key] = bool(value)
    rec = await core.set_overrides(device_id, **values)
    return reply(device_out(rec))


async def update_now(request: web.Request) -> web.Response:
    """Update this one device now: a single-device rollout (one wave, no soak), checked against the policy.

    409 `policy_refuses` says why not (busy, excluded, pinned, blocked, nothing newer, not applicable).
    """
    svc = services(request)
    core = svc.core
    body = await parse_body(request, UpdateNow)
    device_id = _device_id(request)
    rec = core.get_device(device_id)
    assert rec is not None
    try:
        entry = await core.single_device_target(device_id, body.image)
        r = await core.create_rollout(
            entry.image_id,
            selector={"devices": [device_id]},
            waves=["100%"],
            soak_s=0,
            max_failures=0,
            name=f"update {display_name(rec)}",
        )
        # like any rollout: an approval for its own device only
        await svc.store.approve_for_rollout(entry.image_id, r.selector, r.rollout_id)
        await core.catalog_changed()
    except RolloutError as exc:
        raise ApiError(409, "policy_refuses", str(exc), field="device_id") from None
    out: RolloutOut = rollout_out(core, r)
    return reply(out, status=201)


async def retry_device(request: web.Request) -> web.Response:
    """Offer a failed device its update again now (clears the back-off, and lifts a park: a device back on its
    old version or past policy.max_attempts)."""
    core = services(request).core
    device_id = _device_id(request)
    try:
        rec = await core.retry_now(device_id)
    except RolloutError as exc:
        raise ApiError(409, "cannot_retry", str(exc), field="device_id") from None
    return reply(device_out(rec))


def device_out(rec: DeviceRecord) -> DeviceOut:
    return DeviceOut.model_validate(device_dict(rec))


def matches(rec: DeviceRecord, q: DeviceQuery) -> bool:
    return (
        (q.protocol is None or rec.protocol == q.protocol)
        and (q.state is None or rec.state in q.state)
        and (q.network is None or fnmatch.fnmatchcase(rec.network, q.network))
        and (q.model is None or (rec.model is not None and fnmatch.fnmatchcase(rec.model, q.model)))
        and (q.vendor_id is None or rec.vendor_id == q.vendor_id)
        and (q.product_id is None or rec.product_id == q.product_id)
        and (q.rollout_id is None or rec.rollout_id == q.rollout_id)
        and (q.present is None or rec.present == q.present)
    )


async def list_devices(request: web.Request) -> web.Response:
    """Device records of both protocols, filtered by the query parameters (all must match)."""
    q = parse_query(request, DeviceQuery)
    recs = [r for r in services(request).core.list_devices() if matches(r, q)]
    recs.sort(key=lambda r: (r.protocol, r.device_id))
    return reply([device_out(r) for r in recs])


async def show_device(request: web.Request) -> web.Response:
    """One device record and its state transitions (oldest first)."""
    core = services(request).core
    device_id = request.match_info["device_id"]
    rec = core.get_device(device_id)
    if rec is None:
        raise ApiError(404, "not_found", f"no device {device_id!r}", field="device_id")
    data = device_dict(rec)
    data["history"] = [h.to_dict() for h in await core.history(device_id)]
    return reply(DeviceDetail.model_validate(data))


class NotifyOut(Model):
    device_id: str
    sent: str = Field(description="what the adapter sent the device, e.g. AnnounceOTAProvider")


class DeviceNotReady(RuntimeError):
    """The device's adapter is not running or cannot ask a device to query (answered 409)."""


async def notify_device(request: web.Request) -> web.Response:
    """Ask one device to query for an update now (Matter: AnnounceOTAProvider, UrgentUpdateAvailable)."""
    svc = services(request)
    device_id = request.match_info["device_id"]
    if svc.core.get_device(device_id) is None:
        raise ApiError(404, "not_found", f"no device {device_id!r}", field="device_id")
    if svc.notify_device is None:
        raise ApiError(409, "not_available", "no adapter can notify devices in this gateway")
    try:
        sent = await svc.notify_device(device_id)
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc), field="device_id") from None
    except DeviceNotReady as exc:
        raise ApiError(409, "adapter_not_running", str(exc)) from None
    except Exception as exc:  # the device did not answer: say so, it is not a server bug
        raise ApiError(502, "device_unreachable", f"{device_id}: {exc}") from None
    return reply(NotifyOut(device_id=device_id, sent=sent))


async def plan(request: web.Request) -> web.Response:
    """What the core would offer each device now (policy, catalog and rollouts applied; nothing changes)."""
    return reply([PlanItemOut.model_validate(i.to_dict()) for i in services(request).core.plan()])


def declare(t: RouteTable) -> None:
    p = f"{API_PREFIX}/devices"
    t.op(
        "GET",
        p,
        summary="List devices",
        tag="devices",
        query=DeviceQuery,
        responses={200: Resp("device records", DeviceOut, many=True)},
    )(list_devices)
    t.op(
        "GET",
        p + "/{device_id}",
        summary="Show a device with its history",
        tag="devices",
        responses={200: Resp("the record", DeviceDetail), 404: err("no such device")},
    )(show_device)
    t.op(
        "PATCH",
        p + "/{device_id}",
        summary="Rename, pin or exclude a device",
        tag="devices",
        body=DeviceOverrides,
        responses={200: Resp("the record", DeviceOut), 404: err("no such device")},
    )(patch_device)
    t.op(
        "POST",
        p + "/{device_id}/update",
        summary="Update one device now",
        tag="devices",
        body=UpdateNow,
        responses={
            201: Resp("the single-device rollout", RolloutOut),
            404: err("no such device"),
            409: err("policy refuses, or nothing to update to (the message says why)"),
        },
    )(update_now)
    t.op(
        "POST",
        p + "/{device_id}/retry",
        summary="Retry a failed device now",
        tag="devices",
        responses={
            200: Resp("the record", DeviceOut),
            404: err("no such device"),
            409: err("not failed, or the policy now refuses its target"),
        },
    )(retry_device)
    t.op(
        "POST",
        p + "/{device_id}/notify",
        summary="Ask a device to query for an update now",
        tag="devices",
        responses={
            200: Resp("sent", NotifyOut),
            404: err("no such device"),
            409: err("its adapter is not running"),
            502: err("the device did not answer"),
        },
    )(notify_device)
    t.op(
        "GET",
        f"{API_PREFIX}/plan",
        summary="Update plan",
        tag="devices",
        responses={200: Resp("one item per device", PlanItemOut, many=True)},
    )(plan)

"""Rollout routes: create, list, show (with per-wave counts), pause, resume, abort.

Rollout commands go to the core, which applies them with compare-and-set writes (see gateway/core/rollouts.py),
so a command from the API, the CLI and the gateway's own progress never overwrite each other. A command the
rollout's status does not allow (resume a completed rollout, ...) is answered 409 with the core's reason.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, Model, Resp, RouteTable, err, parse_body, reply
from gateway.api.routes_images import store_error
from gateway.config import PolicySelector
from gateway.core.rollouts import Rollout, RolloutError, RolloutStatus
from gateway.core.service import UpdateCore
from gateway.store.errors import StoreError


class RolloutCreate(Model):
    image: str = Field(min_length=1, max_length=64, description="image id or a unique SHA-256 prefix")
    name: str | None = Field(None, max_length=128)
    selector: PolicySelector = Field(default_factory=PolicySelector, description="which devices it covers")
    waves: list[str | int] = Field(
        min_length=1,
        max_length=64,
        description='cumulative wave sizes: a device count ("1") or a share ("10%"), e.g. ["1", "10%", "100%"]',
    )
    soak_s: float = Field(3600.0, ge=0, description="wait this long after a wave is done before the next")
    max_failures: int | None = Field(None, ge=0, description="halt when a wave has more failures than this")
    max_failure_rate: float | None = Field(
        None, ge=0, le=1, description="halt above this failed/offered share"
    )
    wave_deadline_s: float | None = Field(None, gt=0, description="a wave counts as done after this long")


class WaveOut(BaseModel):
    index: int
    spec: str = Field(description='the wave size as given ("1", "10%")')
    state: Literal["pending", "open", "soaking", "done", "halted", "aborted"]
    members: int
    offered: int
    updated: int
    failed: int
    in_progress: int
    done: int


class RolloutOut(BaseModel):
    rollout_id: str
    name: str
    image_id: str
    protocol: str
    vendor_id: int
    product_id: int
    version: int
    version_string: str
    selector: dict[str, Any]
    selector_text: str
    soak_s: float
    max_failures: int | None
    max_failure_rate: float | None
    wave_deadline_s: float | None
    status: Literal["active", "paused", "halted", "completed", "aborted"]
    status_reason: str
    current_wave: int
    wave_opened_at: float | None
    wave_completed_at: float | None
    created_at: float
    updated_at: float
    waves: list[WaveOut]


def wave_state(r: Rollout, index: int) -> str:
    """Where wave `index` stands, from the rollout's status and current wave."""
    if r.status == RolloutStatus.COMPLETED or index < r.current_wave:
        return "done"
    if index > r.current_wave:
        return "aborted" if r.status == RolloutStatus.ABORTED else "pending"
    if r.status in (RolloutStatus.HALTED, RolloutStatus.ABORTED):
        return "halted" if r.status == RolloutStatus.HALTED else "aborted"
    return "soaking" if r.wave_completed_at is not None else "open"


def rollout_out(core: UpdateCore, r: Rollout) -> RolloutOut:
    data = r.to_dict()
    stats = core.rollout_progress(r.rollout_id)
    data["waves"] = [
        {**st, "index": i, "spec": str(spec), "state": wave_state(r, i)}
        for i, (spec, st) in enumerate(zip(r.waves, stats, strict=True))
    ]
    return RolloutOut.model_validate(data)


def _rollout(core: UpdateCore, rollout_id: str) -> Rollout:
    r = core.get_rollout(rollout_id)
    if r is None:
        raise ApiError(404, "not_found", f"no rollout {rollout_id!r}", field="rollout_id")
    return r


def all_rollouts(core: UpdateCore) -> list[RolloutOut]:
    return [rollout_out(core, r) for r in core.list_rollouts()]


async def list_rollouts(request: web.Request) -> web.Response:
    """Every rollout, oldest first, with per-wave counts."""
    return reply(all_rollouts(services(request).core))


async def create_rollout(request: web.Request) -> web.Response:
    """Start a rollout of one image to the devices its selector covers, in waves."""
    svc = services(request)
    core = svc.core
    body = await parse_body(request, RolloutCreate)
    try:
        entry = await svc.store.get(body.image)
        r = await core.create_rollout(
            entry.image_id,
            selector=body.selector,
            waves=[str(w) for w in body.waves],
            name=body.name,
            soak_s=body.soak_s,
            max_failures=body.max_failures,
            max_failure_rate=body.max_failure_rate,
            wave_deadline_s=body.wave_deadline_s,
        )
        # A rollout is an approval for its own devices: they keep the image after it completes.
        await svc.store.approve_for_rollout(entry.image_id, r.selector, r.rollout_id)
        await core.catalog_changed()
    except StoreError as exc:
        raise store_error(exc, field="image") from None
    except RolloutError as exc:
        msg = str(exc)
        field = next((f for f in ("wave", "selector", "soak", "max_failure") if f in msg), None)
        field = {"wave": "waves", "soak": "soak_s", "max_failure": "max_failures"}.get(field or "", field)
        raise ApiError(422, "invalid_rollout", msg, field=field) from None
    resp = reply(rollout_out(core, r), status=201)
    resp.headers["Location"] = f"{API_PREFIX}/rollouts/{r.rollout_id}"
    return resp


async def show_rollout(request: web.Request) -> web.Response:
    """One rollout with per-wave counts."""
    core = services(request).core
    return reply(rollout_out(core, _rollout(core, request.match_info["rollout_id"])))


async def _command(request: web.Request, verb: str) -> web.Response:
    core = services(request).core
    rollout_id = request.match_info["rollout_id"]
    _rollout(core, rollout_id)  # 404 before 409
    command = {"pause": core.pause_rollout, "resume": core.resume_rollout, "abort": core.abort_rollout}[verb]
    try:
        r = await command(rollout_id)
    except RolloutError as exc:
        raise ApiError(409, "rollout_state", str(exc), field="rollout_id") from None
    if verb == "abort":
        # an aborted rollout stops offering its image: withdraw the approval it gave (never a person's)
        await services(request).store.revoke_approval_of(
            r.image_id, f"rollout {r.rollout_id}", by=f"rollout {r.rollout_id} aborted"
        )
        await core.catalog_changed()
    return reply(rollout_out(core, r))


async def pause_rollout(request: web.Request) -> web.Response:
    """Hold the rollout: no new offers; devices mid-transfer are paused."""
    return await _command(request, "pause")


async def resume_rollout(request: web.Request) -> web.Response:
    """Continue a paused or halted rollout."""
    return await _command(request, "resume")


async def abort_rollout(request: web.Request) -> web.Response:
    """End the rollout for good; devices not yet updated are cancelled."""
    return await _command(request, "abort")


def declare(t: RouteTable) -> None:
    p = f"{API_PREFIX}/rollouts"
    one = Resp("the rollout", RolloutOut)
    t.op(
        "GET",
        p,
        summary="List rollouts",
        tag="rollouts",
        responses={200: Resp("rollouts", RolloutOut, many=True)},
    )(list_rollouts)
    t.op(
        "POST",
        p,
        summary="Create a rollout",
        tag="rollouts",
        body=RolloutCreate,
        responses={201: Resp("created", RolloutOut), 404: err("no such image")},
    )(create_rollout)
    t.op(
        "GET",
        p + "/{rollout_id}",
        summary="Show a rollout",
        tag="rollouts",
        responses={200: one, 404: err("no such rollout")},
    )(show_rollout)
    for verb, fn in (("pause", pause_rollout), ("resume", resume_rollout), ("abort", abort_rollout)):
        t.op(
            "POST",
            p + "/{rollout_id}/" + verb,
            summary=f"{verb.capitalize()} a rollout",
            tag="rollouts",
            responses={200: one, 404: err("no such rollout"), 409: err("not allowed in this status")},
        )(fn)

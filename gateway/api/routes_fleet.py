"""Fleet route: `GET /api/v1/fleet` - the gateways sharing this gateway's PostgreSQL store, the rollout-engine
leader and fleet budget use (the same view as `otagw fleet status`). 404 on a gateway that is not in a fleet."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, Resp, RouteTable, err, reply


class FleetGateway(BaseModel):
    id: str
    site: str
    version: str
    alive: bool = Field(description="its membership lease is current (it heartbeats)")
    devices: int
    transfers: int
    slots: int = Field(description="fleet budget slots it holds")
    heartbeat_at: float = Field(description="last heartbeat (Unix time, database clock)")


class FleetLeader(BaseModel):
    id: str
    epoch: int = Field(description="grows at every change of leader (fencing token)")
    alive: bool


class FleetBudgetUse(BaseModel):
    limit: int
    used: int


class FleetStatus(BaseModel):
    gateways: list[FleetGateway]
    leader: FleetLeader | None
    budgets: dict[str, FleetBudgetUse]


async def fleet(request: web.Request) -> web.Response:
    """Gateways of the fleet (alive, version, devices, transfers), the rollout-engine leader, budget use."""
    from gateway.fleet.status import fleet_status

    presence = services(request).extra.get("fleet")
    if presence is None or presence.pool is None:
        raise ApiError(404, "not_in_fleet", "this gateway is not in a fleet (store.backend is not postgres)")
    return reply(FleetStatus.model_validate(await fleet_status(presence.pool)))


def declare(t: RouteTable) -> None:
    t.op(
        "GET",
        f"{API_PREFIX}/fleet",
        summary="Fleet status",
        tag="fleet",
        responses={200: Resp("the fleet", FleetStatus), 404: err("not in a fleet")},
    )(fleet)

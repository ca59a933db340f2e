"""Home Assistant's install button: one device's update as a single-device rollout, through policy.

The press becomes `create_rollout(image, selector={devices: [that device]}, waves=["1"])`, the same path an
operator's rollout takes, so every rule still applies: policy's version rules (refused before anything is
created), the download window and the transfer budgets (the rollout waits: "deferred"), back-off after failures.
The answer is read back from the core's own dry-run `plan()` for that device, so what Home Assistant shows is
exactly what the core will do. A rollout the core would not serve at all is aborted again at once.

Results: `accepted` (offered now, or already under way), `deferred` (window closed, budget full, back-off: it
starts by itself later), `refused` (installs disabled, unknown/left device, nothing newer, not approved by policy).
"""

from __future__ import annotations

import contextlib
import glob
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.config import PolicyConfig
from gateway.core.plan import PlanItem
from gateway.core.policy import Policy
from gateway.core.records import DeviceRecord
from gateway.core.rollouts import Rollout, RolloutError
from gateway.integrations.mqtt.bridge import InstallResult
from gateway.integrations.mqtt.view import IN_PROGRESS, Catalog, held_back, version_text

log = logging.getLogger("otagw.mqtt")


class CoreClient(Protocol):
    """The part of UpdateCore's public API the MQTT integration uses (reads, events, rollout commands)."""

    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    def list_devices(self, filters: dict[str, Any] | None = None) -> list[DeviceRecord]: ...

    def list_rollouts(self) -> list[Rollout]: ...

    def plan(self) -> list[PlanItem]: ...

    def metrics(self) -> dict[str, dict[str, int]]: ...

    async def create_rollout(
        self,
        image: str,
        *,
        selector: Any = None,
        waves: Sequence[str | int | float] = ...,
        soak_s: float = ...,
        max_failures: int | None = ...,
        max_failure_rate: float | None = ...,
        wave_deadline_s: float | None = ...,
        name: str | None = ...,
    ) -> Rollout: ...

    async def abort_rollout(self, rollout_id: str, reason: str = ...) -> Rollout: ...

    def subscribe(self, queue_size: int | None = None) -> Any: ...


async def request_install(
    core: CoreClient,
    device_id: str,
    catalog: Catalog,
    policy: PolicyConfig | Policy,
    now: float,
    *,
    allowed: bool = True,
) -> InstallResult:
    """Start the update of one device the way Home Assistant asked; never raises for a refusal."""
    pol = policy if isinstance(policy, Policy) else Policy(policy)

    def refused(reason: str) -> InstallResult:
        return InstallResult("refused", reason, now)

    if not allowed:
        return refused("installs from Home Assistant are disabled (mqtt.allow_install: false)")
    rec = core.get_device(device_id)
    if rec is None:
        return refused(f"no device {device_id}")
    if not rec.present:
        return refused("the device left the network")
    if rec.state in IN_PROGRESS:
        return InstallResult(
            "accepted", f"an update is already under way ({rec.state.value}: {rec.state_reason})", now
        )
    entry = catalog.best_for(rec)
    if entry is None:
        return refused("no newer image in the catalog fits this device")
    shown = version_text(rec.protocol, entry.numeric_version, entry.version_string)
    why = held_back(pol, rec, entry)
    if why is not None:
        return refused(f"version {shown} is not approved by policy: {why}")
    try:
        r = await core.create_rollout(
            entry.image_id,
            selector={"protocol": rec.protocol, "devices": [glob.escape(device_id)]},
            waves=["1"],
            soak_s=0,
            max_failures=0,
            name=f"Home Assistant: {shown} to {device_id}",
        )
    except RolloutError as exc:
        return refused(f"cannot start the update: {exc}")
    item = next((p for p in core.plan() if p.device_id == device_id), None)
    if item is None or item.outcome in ("none", "left"):
        reason = item.reason if item is not None else "the device is no longer known"
        with contextlib.suppress(RolloutError):  # already ended: nothing left to undo
            await core.abort_rollout(r.rollout_id, f"refused for Home Assistant: {reason}")
        return refused(reason)
    if item.outcome == "later" or (item.outcome == "update" and item.when is None):
        return InstallResult("deferred", item.reason, now, r.rollout_id)
    return InstallResult("accepted", f"update to {shown} started: {item.reason}", now, r.rollout_id)

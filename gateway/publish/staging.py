"""Which catalog images one consuming controller sees: what policy offers on that controller's network. Pure.

A controller (config `publish.controllers[]`) is a network of its own, named by its `name`. An image is published
to it when all of these hold:

* it is valid and of the controller's protocol (zigbee for z2m/zigpy, matter for matter-server);
* policy offers it on that network, either
  - by approval: approved for every device, or with a device filter that selects the network (the filter
    evaluated for a device of that network with the image's identity: `networks`, `protocol`, `vendor_id`,
    `product_id`), or that selects one of the network's observed devices (filters naming `model`, `devices`,
    `tags`); `policy.auto_approve` (per the rules for that network) for images a person added; or
  - by rollout: an active rollout of the image whose opened waves reach an observed device of that network.
    While a rollout still distributes, the approval it recorded for its own selector is not used here, so the
    waves, not the approval, stage it;
* policy's `block_versions` / `allow_versions` / `pin_version` for that network permit the version.

Of the images that qualify, only the newest per identity (vendor, product, model restriction, hardware range) is
published: zigbee-herdsman takes the first match in the index and python-matter-server one version per VID/PID.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import PolicySelector, PublishController
from gateway.core.policy import Policy, selector_matches, version_permitted
from gateway.core.records import DeviceRecord
from gateway.core.states import DeviceState
from gateway.store.approval import APPROVED, approval_selector, is_upstream
from gateway.store.model import CatalogEntry, ProtocolName

KIND_PROTOCOL: dict[str, ProtocolName] = {"z2m": "zigbee", "zigpy": "zigbee", "matter-server": "matter"}


@dataclass(frozen=True, slots=True)
class Published:
    entry: CatalogEntry
    why: str  # "approved", "approved for networks=[...]", "rollout r1a2", "auto-approve"


def network_device(controller: PublishController, entry: CatalogEntry) -> DeviceRecord:
    """A stand-in device of the controller's network with the image's identity (for network-level filters)."""
    return DeviceRecord(
        device_id=f"{entry.protocol}:{controller.name}:*:0",
        protocol=entry.protocol,
        network=controller.name,
        address="*",
        endpoint=0,
        first_seen=0.0,
        last_seen=0.0,
        state=DeviceState.IDLE,
        vendor_id=entry.vendor_id,
        product_id=entry.product_id,
    )


def _selects(sel: PolicySelector, stand_in: DeviceRecord, devices: Iterable[DeviceRecord]) -> bool:
    return selector_matches(sel, stand_in) or any(d.present and selector_matches(sel, d) for d in devices)


def published_entries(
    controller: PublishController,
    entries: Iterable[CatalogEntry],
    policy: Policy,
    devices: Iterable[DeviceRecord],
    rollout_images: Mapping[str, str],
    covering_rollouts: set[str],
) -> list[Published]:
    """The images `controller` sees now, newest first within each identity (see module docstring)."""
    protocol = KIND_PROTOCOL[controller.kind]
    devs = [d for d in devices if d.network == controller.name]
    best: dict[tuple[object, ...], Published] = {}
    for entry in entries:
        if not entry.valid or entry.protocol != protocol:
            continue
        stand_in = network_device(controller, entry)
        eff = policy.effective(stand_in)
        why: str | None = None
        if entry.image_id in rollout_images:
            why = f"rollout {rollout_images[entry.image_id]}"
        elif entry.approval == APPROVED:
            by = entry.approved_by or ""
            if not (by.startswith("rollout ") and by[len("rollout ") :] in covering_rollouts):
                sel = approval_selector(entry)
                if sel is None:
                    why = "approved"
                elif _selects(sel, stand_in, devs):
                    why = "approved for " + ", ".join(
                        f"{k}={v}" for k, v in sel.model_dump(exclude_none=True).items()
                    )
        elif eff.auto_approve and not is_upstream(entry):
            why = "auto-approve"
        if why is None:
            continue
        ok, _ = version_permitted(eff, entry)
        if not ok and not why.startswith("rollout "):
            continue
        key = (entry.vendor_id, entry.product_id, entry.model_ids, entry.min_hw, entry.max_hw, entry.destination)
        cur = best.get(key)
        if cur is None or (entry.numeric_version, entry.image_id) > (
            cur.entry.numeric_version,
            cur.entry.image_id,
        ):
            best[key] = Published(entry, why)
    return sorted(
        best.values(), key=lambda p: (p.entry.vendor_id, p.entry.product_id, -p.entry.numeric_version)
    )

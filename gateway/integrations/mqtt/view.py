"""What Home Assistant should show of a device record: installed/latest version, progress, and why (pure).

`latest_version` is what the device would get next: the target of an episode under way, else the best image in
the catalog that fits the device (`gateway.store.selection`, the rules the core uses). An image policy holds
back is still shown, with the reason in the release summary, so the user sees it exists and why pressing Install
is refused; an image not approved for the device (gateway/store/approval.py) is shown with "press Install": the
press is the approval (a single-device rollout). Zigbee versions are shown as the 32-bit file version `0x0000ABCD`, the form both the catalog and the
devices' `sw_version` agree on; Matter versions by their version string.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import PolicyConfig
from gateway.core.decide import descriptor
from gateway.core.policy import Policy, selector_matches, version_permitted
from gateway.core.records import DeviceRecord
from gateway.core.states import DeviceState
from gateway.integrations.mqtt.discovery import DeviceView
from gateway.store.approval import offerable
from gateway.store.model import CatalogEntry
from gateway.store.selection import SelectionIndex

S = DeviceState
IN_PROGRESS = frozenset(
    {S.QUERYING, S.DOWNLOADING, S.DOWNLOADED, S.WAITING_TO_APPLY, S.APPLYING, S.VERIFYING}
)
# states at rest: a target left on the record from an ended episode is not "what comes next"
AT_REST = frozenset({S.IDLE, S.UPDATED, S.FAILED, S.CANCELLED})


def version_text(protocol: str, numeric: int | None, text: str | None) -> str | None:
    if numeric is None:
        return text
    if protocol == "zigbee":
        return f"0x{numeric:08X}"
    return text or str(numeric)




@dataclass
class Catalog:
    """The image catalog as selection sees it, refreshed by the integration from the store."""

    entries: dict[str, CatalogEntry]
    index: SelectionIndex

    @classmethod
    def of(cls, entries: Iterable[CatalogEntry]) -> Catalog:
        listed = list(entries)
        return cls({e.image_id: e for e in listed}, SelectionIndex.build(listed))

    def best_for(self, rec: DeviceRecord) -> CatalogEntry | None:
        """The newest applicable image for the device (policy not applied), or None."""
        desc = descriptor(rec)
        return self.index.select(desc) if desc is not None else None


def held_back(policy: Policy, rec: DeviceRecord, entry: CatalogEntry) -> str | None:
    """Why policy refuses `entry` for the device (blocked / not allowed / pinned), or None."""
    eff = policy.effective(rec)
    ok, why = version_permitted(eff, entry)
    return None if ok else f"{why} ({eff.source()})"


def device_view(rec: DeviceRecord, catalog: Catalog, policy_cfg: PolicyConfig | Policy) -> DeviceView:
    policy = policy_cfg if isinstance(policy_cfg, Policy) else Policy(policy_cfg)
    installed = version_text(rec.protocol, rec.current_version, rec.current_version_string)
    entry: CatalogEntry | None = None
    latest = installed
    summary = f"{rec.state.value}: {rec.state_reason}" if rec.state_reason else rec.state.value
    if rec.target_version is not None and rec.state not in AT_REST:
        entry = catalog.entries.get(rec.target_image_id or "")
        latest = version_text(rec.protocol, rec.target_version, rec.target_version_string)
    else:
        entry = catalog.best_for(rec)
        if entry is not None:
            latest = version_text(rec.protocol, entry.numeric_version, entry.version_string)
            why = held_back(policy, rec, entry)
            if why is not None:
                summary = f"held back by policy: {why}"
            elif not offerable(
                entry, lambda sel: selector_matches(sel, rec), auto_approve=policy.effective(rec).auto_approve
            ):
                summary = f"{summary} | not approved: press Install to update this device"
    if rec.current_version is not None and entry is not None and entry.numeric_version == rec.current_version:
        latest = installed
    in_progress = rec.state in IN_PROGRESS or (rec.state == S.PAUSED and rec.resume_state in IN_PROGRESS)
    percent = rec.percent if rec.state in (S.QUERYING, S.DOWNLOADING) else None
    if rec.state in (S.DOWNLOADED, S.WAITING_TO_APPLY, S.APPLYING, S.VERIFYING):
        percent = 100
    if percent is None and in_progress and rec.reported_percent is not None:
        percent = rec.reported_percent
    model = rec.model or (
        f"{rec.vendor_id:04X}:{rec.product_id:04X}"
        if rec.vendor_id is not None and rec.product_id is not None
        else None
    )
    name = f"{rec.model or rec.protocol.capitalize() + ' device'} {rec.address}"
    return DeviceView(
        device_id=rec.device_id,
        protocol=rec.protocol,
        network=rec.network,
        address=rec.address,
        name=name,
        manufacturer=rec.vendor_name or (f"0x{rec.vendor_id:04X}" if rec.vendor_id is not None else None),
        model=model,
        hw_version=str(rec.hardware_version) if rec.hardware_version is not None else None,
        installed_version=installed,
        latest_version=latest,
        in_progress=in_progress,
        update_percentage=percent,
        title=f"{rec.model or rec.protocol.capitalize()} firmware",
        release_summary=summary,
        release_url=entry.release_notes_url if entry is not None else None,
        state=rec.state.value,
        state_since=rec.state_since,
        attributes={
            "device_id": rec.device_id,
            "protocol": rec.protocol,
            "otagw_state": rec.state.value,
            "state_reason": rec.state_reason,
            "target_version": version_text(rec.protocol, rec.target_version, rec.target_version_string),
            "rollout_id": rec.rollout_id,
            "last_error": rec.last_error,
        },
    )

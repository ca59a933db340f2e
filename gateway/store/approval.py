"""Image approval: which catalog entries may be offered to which devices without a rollout. Pure functions.

Every catalog entry is `available` (known, never offered on its own) or `approved` (offered, to every device or
only to the devices an optional `PolicySelector` matches). Approval is a property of the catalog entry, shared by
everything that brings images (the CLI, the API, upstream firmware sources):

* `otagw image approve ID [--device PATTERN ...]`, the API and rollouts approve an entry (a rollout for its own
  selector); `otagw image revoke ID` returns it to `available`.
* `policy.auto_approve: true` (opt-in; the default is false) makes entries a *person* brought (cli, api,
  configured directories and lists) offerable as if approved, evaluated per device so policy rules can switch it.
  It never reaches entries that upstream sources found (`source:<name>`): those are offered only once approved,
  explicitly or because the source is listed in `policy.auto_approve_sources` (then approved at import).
* Catalogs written before approval existed keep their images `approved` (catalog migration 2), so an upgrade
  does not silently stop updates that were flowing.

A pinned version (`pin_version` in a policy rule) is an explicit decision by the administrator and is offered
whatever the entry's approval; rollouts likewise do not consult approval (they are an approval).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal

from gateway.config import PolicySelector
from gateway.store.model import CatalogEntry, DeviceDescriptor
from gateway.store.selection import explain_selection, rank, rejection

__all__ = [
    "APPROVED",
    "AVAILABLE",
    "UPSTREAM_PREFIX",
    "approval_selector",
    "describe_approval",
    "device_descriptor",
    "is_upstream",
    "not_approved_reason",
    "offerable",
    "origin",
    "reach",
    "selector_json",
    "source_name",
]

AVAILABLE: Literal["available"] = "available"
APPROVED: Literal["approved"] = "approved"
UPSTREAM_PREFIX = "source:"  # CatalogEntry.source of images an upstream firmware source brought


def is_upstream(entry: CatalogEntry) -> bool:
    """True for an image found by an upstream firmware source (never auto-approved by `policy.auto_approve`)."""
    return entry.source.startswith(UPSTREAM_PREFIX)


def selector_json(selector: PolicySelector | dict[str, Any] | None) -> str | None:
    """Canonical JSON of an approval's device filter (None: every device)."""
    if selector is None:
        return None
    sel = selector if isinstance(selector, PolicySelector) else PolicySelector.model_validate(selector)
    data = sel.model_dump(exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":")) if data else None


@lru_cache(maxsize=1024)
def _parse(text: str) -> PolicySelector:
    return PolicySelector.model_validate(json.loads(text))


def approval_selector(entry: CatalogEntry) -> PolicySelector | None:
    """The device filter the entry's approval is limited to (None: every device)."""
    return _parse(entry.approved_for) if entry.approved_for else None


def offerable(entry: CatalogEntry, matches: Callable[[PolicySelector], bool], *, auto_approve: bool) -> bool:
    """May `entry` be offered without a rollout to the device `matches` tests selectors against?"""
    if entry.approval == APPROVED:
        sel = approval_selector(entry)
        return sel is None or matches(sel)
    return auto_approve and not is_upstream(entry)


def describe_approval(entry: CatalogEntry) -> str:
    """One line for tables: 'approved', 'approved for model=[TRADFRI*]', 'available'."""
    if entry.approval != APPROVED:
        return AVAILABLE
    sel = approval_selector(entry)
    if sel is None:
        return APPROVED
    return "approved for " + ", ".join(f"{k}={v}" for k, v in sel.model_dump(exclude_none=True).items())


def origin(entry: CatalogEntry) -> str:
    """Where an entry came from, for people: 'from source z2m-koenkk' or '(added via cli)'."""
    if is_upstream(entry):
        return f"from source {source_name(entry)}"
    return f"(added via {entry.source})"


def source_name(entry: CatalogEntry) -> str | None:
    """The upstream source's configured name, or None for an image a person added."""
    return entry.source[len(UPSTREAM_PREFIX) :] if is_upstream(entry) else None


def not_approved_reason(
    candidates: Sequence[CatalogEntry], device: DeviceDescriptor, auto_approve: bool, policy_source: str
) -> str:
    """Why a device gets nothing when none of its candidates is offerable: names the best unapproved update,
    where it came from, its release notes and the command that approves it (shown by `otagw plan` and the API)."""
    applicable = [e for e in candidates if rejection(e, device) is None]
    if not applicable:
        if not auto_approve:
            return f"auto-approve is off ({policy_source}); updates come only through approved images and rollouts"
        return explain_selection(candidates, device)[1]
    best = max(applicable, key=lambda e: (rank(e, device), e.image_id))
    notes = f"; release notes: {best.release_notes_url}" if best.release_notes_url else ""
    return (
        f"update {best.version_string} ({best.numeric_version}) available {origin(best)}, not approved"
        f"{notes}; approve with `otagw image approve {best.image_id}` or start a rollout"
    )


def device_descriptor(rec: Any) -> DeviceDescriptor | None:
    """What selection needs of a core `DeviceRecord` (duck-typed: the store does not import the core)."""
    if rec.vendor_id is None or rec.product_id is None or rec.current_version is None:
        return None
    return DeviceDescriptor(
        protocol=rec.protocol,
        vendor_id=rec.vendor_id,
        product_id=rec.product_id,
        current_version=rec.current_version,
        hardware_version=rec.hardware_version,
        ieee=rec.address if rec.protocol == "zigbee" else None,
        model=rec.model,
    )


def reach(entry: CatalogEntry, devices: Iterable[Any]) -> list[str]:
    """Device ids (of core `DeviceRecord`s) the entry applies to now: identity, ranges and a newer version."""
    out: list[str] = []
    for rec in devices:
        desc = device_descriptor(rec)
        if desc is not None and rejection(entry, desc) is None:
            out.append(rec.device_id)
    return out

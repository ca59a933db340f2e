"""Version selection: which catalog entry (if any) a device should get. Pure functions, no I/O.

Applicability (an entry failing any rule is never chosen):

* both: same protocol; `valid`; `min_applicable <= current_version <= max_applicable` (bounds that are None are
  open; Matter Min/MaxApplicableSoftwareVersion, Zigbee2MQTT minFileVersion/maxFileVersion); newer than the
  current version, or, only with `allow_downgrade`, older (never the same version: that would be a no-op).
* Matter: VendorID and ProductID equal the device's.
* Zigbee: manufacturer code equal, or 0xFFFF in the image (matches any); image type equal, or 0xFFFF;
  hardware version within `min_hw..max_hw` when the device reported one (like zigpy, an image is not refused
  to a device that did not say its hardware version); a device-specific file (upgrade file destination) only for
  the device with that IEEE address; a model restriction (`model_ids`) only for a device reporting one of them.

Among applicable entries the most specific wins, then the highest version: a destination-specific file beats
an exact manufacturer+type match, which beats one wildcard field, which beats two; a model-restricted entry
beats an unrestricted one of the same specificity. Remaining ties go to the lowest image id, so the answer
never depends on the order of the candidates.

`SelectionIndex` buckets entries by (protocol, vendor, product) so that selection among tens of thousands of
entries only looks at the handful that can match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.store.model import CatalogEntry, DeviceDescriptor

__all__ = [
    "WILDCARD",
    "SelectionIndex",
    "explain_selection",
    "normalize_ieee",
    "rank",
    "rejection",
    "select_image",
]

WILDCARD = 0xFFFF  # Zigbee manufacturer code / image type matching any device


def normalize_ieee(text: str) -> str:
    """'00124B0001ABCDEF' / '00:12:4b:...' / '00-12-...' -> '00:12:4b:00:01:ab:cd:ef'."""
    digits = text.strip().lower().replace(":", "").replace("-", "")
    if digits.startswith("0x"):
        digits = digits[2:]
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def rejection(entry: CatalogEntry, device: DeviceDescriptor, *, allow_downgrade: bool = False) -> str | None:
    """Why `entry` cannot go to `device` (None when it is applicable)."""
    if entry.protocol != device.protocol:
        return f"is a {entry.protocol} image"
    if device.protocol == "matter":
        if entry.vendor_id != device.vendor_id or entry.product_id != device.product_id:
            return f"is for VID/PID {entry.vendor_id:04X}/{entry.product_id:04X}"
    else:
        if entry.vendor_id not in (device.vendor_id, WILDCARD):
            return f"is for manufacturer 0x{entry.vendor_id:04X}"
        if entry.product_id not in (device.product_id, WILDCARD):
            return f"is for image type 0x{entry.product_id:04X}"
        if entry.destination is not None and (
            device.ieee is None or normalize_ieee(entry.destination) != normalize_ieee(device.ieee)
        ):
            return f"is specific to device {entry.destination}"
        if device.hardware_version is not None:
            if entry.min_hw is not None and device.hardware_version < entry.min_hw:
                return f"needs hardware version >= {entry.min_hw}"
            if entry.max_hw is not None and device.hardware_version > entry.max_hw:
                return f"needs hardware version <= {entry.max_hw}"
        if entry.model_ids and device.model not in entry.model_ids:
            return f"is restricted to model {', '.join(entry.model_ids)}"
    if not entry.valid:
        return "is marked invalid"
    if entry.min_applicable is not None and device.current_version < entry.min_applicable:
        return f"applies from version {entry.min_applicable}"
    if entry.max_applicable is not None and device.current_version > entry.max_applicable:
        return f"applies up to version {entry.max_applicable}"
    if entry.numeric_version == device.current_version:
        return "is the installed version"
    if entry.numeric_version < device.current_version and not allow_downgrade:
        return "would be a downgrade"
    return None


def rank(entry: CatalogEntry, device: DeviceDescriptor) -> tuple[int, int, int, int]:
    """Sort key of an applicable entry: larger is preferred (specificity first, then version)."""
    if entry.protocol == "matter":
        return (0, 2, 0, entry.numeric_version)
    exact = (entry.vendor_id != WILDCARD) + (entry.product_id != WILDCARD)
    return (int(entry.destination is not None), exact, int(bool(entry.model_ids)), entry.numeric_version)


def _best(entries: Iterable[CatalogEntry], device: DeviceDescriptor) -> CatalogEntry | None:
    best: CatalogEntry | None = None
    best_key: tuple[tuple[int, int, int, int], str] | None = None
    for e in entries:
        # Equal rank: the lowest image id wins, so the order of `entries` never matters.
        key = (rank(e, device), e.image_id)
        if best_key is None or key[0] > best_key[0] or (key[0] == best_key[0] and key[1] < best_key[1]):
            best, best_key = e, key
    return best


def select_image(
    candidates: Iterable[CatalogEntry], device: DeviceDescriptor, *, allow_downgrade: bool = False
) -> CatalogEntry | None:
    """The entry `device` should get, or None."""
    return _best(
        (e for e in candidates if rejection(e, device, allow_downgrade=allow_downgrade) is None), device
    )


def explain_selection(
    candidates: Iterable[CatalogEntry], device: DeviceDescriptor, *, allow_downgrade: bool = False
) -> tuple[CatalogEntry | None, str]:
    """Like `select_image`, plus a one-line reason (why this entry, or why none)."""
    applicable: list[CatalogEntry] = []
    rejected: list[tuple[CatalogEntry, str]] = []
    for e in candidates:
        why = rejection(e, device, allow_downgrade=allow_downgrade)
        if why is None:
            applicable.append(e)
        else:
            rejected.append((e, why))
    best = _best(applicable, device)
    if best is not None:
        direction = "downgrade" if best.numeric_version < device.current_version else "update"
        return best, (
            f"{direction} to {best.version_string} ({best.numeric_version}) from {device.current_version}: "
            f"best of {len(applicable)} applicable of {len(applicable) + len(rejected)} candidates"
        )
    if not rejected:
        ident = (
            f"VID/PID {device.vendor_id:04X}/{device.product_id:04X}"
            if device.protocol == "matter"
            else f"manufacturer 0x{device.vendor_id:04X} image type 0x{device.product_id:04X}"
        )
        return None, f"no {device.protocol} images for {ident}"
    shown = "; ".join(f"{e.image_id} ({e.version_string}) {why}" for e, why in rejected[:3])
    more = f"; and {len(rejected) - 3} more" if len(rejected) > 3 else ""
    return None, f"none of {len(rejected)} candidates applies: {shown}{more}"


@dataclass(frozen=True)
class SelectionIndex:
    """Entries bucketed by (protocol, vendor id, product id) for fast candidate lookup."""

    buckets: dict[tuple[str, int, int], tuple[CatalogEntry, ...]]

    @classmethod
    def build(cls, entries: Iterable[CatalogEntry]) -> SelectionIndex:
        grouped: dict[tuple[str, int, int], list[CatalogEntry]] = defaultdict(list)
        for e in entries:
            grouped[(e.protocol, e.vendor_id, e.product_id)].append(e)
        return cls({k: tuple(v) for k, v in grouped.items()})

    def candidates(self, device: DeviceDescriptor) -> Sequence[CatalogEntry]:
        """Entries whose identity can match the device (Zigbee: wildcard images included)."""
        if device.protocol != "zigbee":
            return self.buckets.get((device.protocol, device.vendor_id, device.product_id), ())
        keys = {
            (device.vendor_id, device.product_id),
            (WILDCARD, device.product_id),
            (device.vendor_id, WILDCARD),
            (WILDCARD, WILDCARD),
        }
        out: list[CatalogEntry] = []
        for v, p in keys:
            out.extend(self.buckets.get(("zigbee", v, p), ()))
        return out

    def select(self, device: DeviceDescriptor, *, allow_downgrade: bool = False) -> CatalogEntry | None:
        return select_image(self.candidates(device), device, allow_downgrade=allow_downgrade)

    def __len__(self) -> int:
        return sum(len(v) for v in self.buckets.values())

"""Human names for devices: the owner's name, Matter NodeLabel / VendorName / ProductName, Zigbee manufacturer names.

Zigbee devices report a manufacturer code; the name comes from data/zigbee_manufacturers.json (its `_source` says
where the codes were checked). The adapter's own vendor name (Basic cluster ManufacturerName, Matter VendorName)
wins when it has one.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gateway.core.records import DeviceRecord

_TABLE = Path(__file__).parent / "data" / "zigbee_manufacturers.json"


@cache
def zigbee_manufacturers() -> dict[int, str]:
    """Manufacturer code -> brand name."""
    data = json.loads(_TABLE.read_text(encoding="utf-8"))
    return {int(code, 16): name for code, name in data["codes"].items()}


def manufacturer_name(rec: DeviceRecord) -> str | None:
    """Who made the device, as a person reads it; None when nothing is known."""
    if rec.vendor_name:
        return rec.vendor_name
    if rec.protocol == "zigbee" and rec.vendor_id is not None:
        return zigbee_manufacturers().get(rec.vendor_id)
    return None


def display_name(rec: DeviceRecord) -> str:
    """The name to show first: the owner's, the node's own label, maker + model, else a short address."""
    if rec.name:
        return rec.name
    label = rec.extra.get("node_label") if isinstance(rec.extra, dict) else None
    if isinstance(label, str) and label.strip():
        return label.strip()
    maker, model = manufacturer_name(rec), rec.model
    if model:
        return f"{maker} {model}" if maker and not model.startswith(maker) else model
    tail = rec.address[-5:] if rec.protocol == "zigbee" else rec.address[-4:]
    return f"{maker or rec.protocol.capitalize()} device …{tail}"

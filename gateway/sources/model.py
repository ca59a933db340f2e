"""What every source type yields: `SourceEntry`, one firmware listed upstream (metadata only), and the errors.

A check turns an upstream index into `SourceEntry` values; nothing is downloaded then. The entry carries what the
index promises about the file (size, checksum, identity, ranges) so that the download can be verified against it
field by field (gateway/sources/verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = ["SourceEntry", "SourceError", "VerificationError"]


@dataclass(frozen=True, slots=True)
class SourceEntry:
    source: str  # configured source name
    key: str  # stable id of the entry within the source (for `otagw sources fetch`)
    protocol: Literal["matter", "zigbee"]
    vendor_id: int  # Zigbee manufacturer code / Matter VendorID
    product_id: int  # Zigbee image type / Matter ProductID
    version: int  # Zigbee file version / Matter SoftwareVersion
    url: str
    version_string: str | None = None
    size: int | None = None
    size_of: Literal["file", "image"] = "file"  # "image": the size of the OTA image inside a vendor container
    container: str | None = None  # "ikea-signed": an IKEA NGIS container zigpy validates block by block
    checksum_type: str | None = None  # hashlib name: sha256, sha512, sha3_256, ...
    checksum: str | None = None  # lower-case hex
    min_applicable: int | None = None
    max_applicable: int | None = None
    min_hw: int | None = None
    max_hw: int | None = None
    model_ids: tuple[str, ...] = field(default_factory=tuple)
    release_notes: str | None = None
    release_notes_url: str | None = None
    valid: bool = True  # DCL softwareVersionValid

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: its deep copy dominated saving a 5,000-entry index
        out = {name: getattr(self, name) for name in _FIELDS}
        out["model_ids"] = list(self.model_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceEntry:
        return cls(**{**data, "model_ids": tuple(data.get("model_ids", ()))})

    def describe(self) -> str:
        ident = (
            f"VID/PID {self.vendor_id:04X}/{self.product_id:04X} version {self.version}"
            if self.protocol == "matter"
            else f"manufacturer 0x{self.vendor_id:04X} image type 0x{self.product_id:04X} version 0x{self.version:08X}"
        )
        return f"{self.source} entry {self.key} ({ident})"


_FIELDS = tuple(f.name for f in fields(SourceEntry))


class SourceError(Exception):
    """A source that cannot be checked or an entry that cannot be fetched; the message names source and URL."""


class VerificationError(SourceError):
    """A downloaded file that does not match its entry: never enters the catalog."""

    def __init__(self, entry: SourceEntry, field_name: str, message: str) -> None:
        super().__init__(f"{entry.describe()}: {field_name}: {message}")
        self.entry = entry
        self.field = field_name

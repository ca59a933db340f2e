"""Typed errors for malformed OTA files: each names the defect and the byte offset where it was found.

Every codec in `gateway.formats` raises only subclasses of `OtaFormatError` for bad input, so callers
(importers, the HTTP API, the CLI) can catch one type and show one precise line to the user.
"""

from __future__ import annotations

__all__ = [
    "BadMagicError",
    "DigestMismatchError",
    "FieldValueError",
    "LengthMismatchError",
    "OtaFormatError",
    "SubElementError",
    "TlvFormatError",
    "TruncatedError",
]


class OtaFormatError(ValueError):
    """An OTA file (or a value meant for one) is malformed.

    `defect` says what is wrong in words; `offset` is the byte offset in the file where the defect was
    found (for builder arguments: where the field would have been written).
    """

    def __init__(self, defect: str, offset: int) -> None:
        super().__init__(defect, offset)
        self.defect = defect
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.defect} at byte {self.offset}"

    def __reduce__(self) -> tuple[type[OtaFormatError], tuple[str, int]]:
        # Keep the (defect, offset) signature when pickled (e.g. across process pools).
        return (type(self), (self.defect, self.offset))


class TruncatedError(OtaFormatError):
    """The data ends before a structure it announces; `offset` is where the data ran out."""


class BadMagicError(OtaFormatError):
    """The file identifier is not one of the known OTA magics."""


class LengthMismatchError(OtaFormatError):
    """Two size fields disagree with each other or with the data (including trailing bytes)."""


class TlvFormatError(OtaFormatError):
    """The Matter TLV header is not well-formed TLV (bad control byte, overrun, bad UTF-8, ...)."""


class DigestMismatchError(OtaFormatError):
    """The payload digest in the header does not match the payload."""


class FieldValueError(OtaFormatError):
    """A header field is missing, has the wrong type, or holds a value outside its allowed range."""


class SubElementError(OtaFormatError):
    """A Zigbee OTA sub-element is truncated or runs past the end of the image."""

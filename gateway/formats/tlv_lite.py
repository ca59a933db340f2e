"""A minimal Matter TLV reader and writer, just enough for the OTA image header (Matter Core § A, § 11.21).

The full Matter TLV codec lives in `adapters/matter/`, which the protocol-neutral core must never import;
this module is a small, strict, self-contained subset: it decodes every TLV element type (so unknown
header fields can be skipped) and writes the few types the OTA header uses. All integers are
little-endian. Errors are `TlvFormatError` carrying the absolute byte offset in the enclosing file
(`base_offset` + position in the TLV bytes).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

from gateway.formats.errors import TlvFormatError

__all__ = [
    "MAX_DEPTH",
    "OtherTag",
    "Tag",
    "TlvElement",
    "TlvType",
    "TlvValue",
    "TlvWriter",
    "decode_one",
]

#: Containers nested deeper than this are rejected (the OTA header is a flat struct; this bounds recursion).
MAX_DEPTH = 8

_END_OF_CONTAINER = 0x18


class TlvType(enum.Enum):
    """TLV element kinds (Matter Core § A.7)."""

    SIGNED = "signed integer"
    UNSIGNED = "unsigned integer"
    BOOL = "boolean"
    FLOAT = "floating point number"
    UTF8 = "UTF-8 string"
    BYTES = "octet string"
    NULL = "null"
    STRUCT = "structure"
    ARRAY = "array"
    LIST = "list"


class OtherTag(NamedTuple):
    """A tag that is neither anonymous nor context-specific: tag control (2..7) and the raw tag bytes' value."""

    control: int
    value: int


#: None for an anonymous tag, an int for a context-specific tag, `OtherTag` for profile/implicit forms.
Tag = int | OtherTag | None

TlvValue = int | bool | float | str | bytes | None | tuple["TlvElement", ...]


@dataclass(frozen=True)
class TlvElement:
    """One decoded element; offsets are absolute (include the caller's `base_offset`)."""

    tag: Tag
    type: TlvType
    value: TlvValue
    offset: int  # of the control byte
    value_offset: int  # of the value bytes (after tag and length fields)
    end: int  # absolute offset one past the element (for containers: past the end-of-container byte)


# Element type (low 5 bits of the control byte) -> (kind, width of the value or of its length field).
_ELEMENT_TYPES: dict[int, tuple[TlvType, int]] = {
    0x00: (TlvType.SIGNED, 1),
    0x01: (TlvType.SIGNED, 2),
    0x02: (TlvType.SIGNED, 4),
    0x03: (TlvType.SIGNED, 8),
    0x04: (TlvType.UNSIGNED, 1),
    0x05: (TlvType.UNSIGNED, 2),
    0x06: (TlvType.UNSIGNED, 4),
    0x07: (TlvType.UNSIGNED, 8),
    0x08: (TlvType.BOOL, 0),
    0x09: (TlvType.BOOL, 0),
    0x0A: (TlvType.FLOAT, 4),
    0x0B: (TlvType.FLOAT, 8),
    0x0C: (TlvType.UTF8, 1),
    0x0D: (TlvType.UTF8, 2),
    0x0E: (TlvType.UTF8, 4),
    0x0F: (TlvType.UTF8, 8),
    0x10: (TlvType.BYTES, 1),
    0x11: (TlvType.BYTES, 2),
    0x12: (TlvType.BYTES, 4),
    0x13: (TlvType.BYTES, 8),
    0x14: (TlvType.NULL, 0),
    0x15: (TlvType.STRUCT, 0),
    0x16: (TlvType.ARRAY, 0),
    0x17: (TlvType.LIST, 0),
}

# Tag control (high 3 bits) -> number of tag bytes.
_TAG_WIDTHS = (0, 1, 2, 4, 2, 4, 6, 8)


class _Reader:
    def __init__(self, data: bytes, base_offset: int) -> None:
        self.data = data
        self.base = base_offset

    def fail(self, defect: str, pos: int) -> TlvFormatError:
        return TlvFormatError(defect, self.base + pos)

    def need(self, pos: int, n: int, what: str) -> None:
        if pos + n > len(self.data):
            raise self.fail(f"TLV {what} runs past the end of the TLV data", pos)

    def make(
        self, tag: Tag, kind: TlvType, value: TlvValue, start: int, value_pos: int, end: int
    ) -> TlvElement:
        return TlvElement(tag, kind, value, self.base + start, self.base + value_pos, self.base + end)

    def uint(self, pos: int, width: int, what: str) -> int:
        self.need(pos, width, what)
        return int.from_bytes(self.data[pos : pos + width], "little")

    def element(self, pos: int, depth: int) -> TlvElement:
        start = pos
        self.need(pos, 1, "control byte")
        control = self.data[pos]
        pos += 1
        element_type = control & 0x1F
        tag_control = control >> 5
        if element_type == _END_OF_CONTAINER:
            raise self.fail("unexpected TLV end-of-container", start)
        if element_type not in _ELEMENT_TYPES:
            raise self.fail(f"reserved TLV element type 0x{element_type:02x}", start)
        kind, width = _ELEMENT_TYPES[element_type]

        tag_width = _TAG_WIDTHS[tag_control]
        raw_tag = self.uint(pos, tag_width, "tag")
        pos += tag_width
        tag: Tag
        if tag_control == 0:
            tag = None
        elif tag_control == 1:
            tag = raw_tag
        else:
            tag = OtherTag(tag_control, raw_tag)

        value: TlvValue
        if kind in (TlvType.SIGNED, TlvType.UNSIGNED):
            self.need(pos, width, kind.value)
            value = int.from_bytes(self.data[pos : pos + width], "little", signed=kind is TlvType.SIGNED)
            return self.make(tag, kind, value, start, pos, pos + width)
        if kind is TlvType.BOOL:
            return self.make(tag, kind, element_type == 0x09, start, pos, pos)
        if kind is TlvType.NULL:
            return self.make(tag, kind, None, start, pos, pos)
        if kind is TlvType.FLOAT:
            self.need(pos, width, kind.value)
            (value,) = struct.unpack_from("<f" if width == 4 else "<d", self.data, pos)
            return self.make(tag, kind, value, start, pos, pos + width)
        if kind in (TlvType.UTF8, TlvType.BYTES):
            length = self.uint(pos, width, f"{kind.value} length")
            pos += width
            self.need(pos, length, kind.value)
            raw = bytes(self.data[pos : pos + length])
            if kind is TlvType.UTF8:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise self.fail(f"invalid UTF-8 in TLV string ({exc.reason})", pos + exc.start) from None
            else:
                value = raw
            return self.make(tag, kind, value, start, pos, pos + length)

        # Containers.
        if depth >= MAX_DEPTH:
            raise self.fail(f"TLV containers nested deeper than {MAX_DEPTH}", start)
        members: list[TlvElement] = []
        value_pos = pos
        while True:
            self.need(pos, 1, f"{kind.value} (no end-of-container)")
            if self.data[pos] == _END_OF_CONTAINER:
                pos += 1
                break
            member = self.element(pos, depth + 1)
            if kind is TlvType.STRUCT and member.tag is None:
                raise self.fail("anonymous TLV element inside a structure", pos)
            if kind is TlvType.ARRAY and member.tag is not None:
                raise self.fail("tagged TLV element inside an array", pos)
            members.append(member)
            pos = member.end - self.base
        return self.make(tag, kind, tuple(members), start, value_pos, pos)


def decode_one(data: bytes, *, base_offset: int = 0) -> TlvElement:
    """Decode exactly one TLV element that spans all of `data`.

    Raises `TlvFormatError` (offset = `base_offset` + position) if the element is malformed, does not
    fit, or is followed by extra bytes.
    """
    reader = _Reader(data, base_offset)
    element = reader.element(0, 0)
    if element.end - base_offset != len(data):
        raise TlvFormatError(
            f"{len(data) - (element.end - base_offset)} extra bytes after the TLV element", element.end
        )
    return element


class TlvWriter:
    """Builds TLV bytes; integers use the shortest width unless `width` is given (as CHIP and matter.js do)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._open: list[TlvType] = []

    def __len__(self) -> int:
        """Bytes written so far (the offset the next element will start at)."""
        return len(self._buf)

    def _control(self, tag: Tag, element_type: int) -> None:
        if tag is None:
            self._buf.append(element_type)
        elif isinstance(tag, OtherTag):
            if not 2 <= tag.control <= 7:
                raise ValueError(f"OtherTag control must be 2..7, got {tag.control}")
            self._buf.append((tag.control << 5) | element_type)
            self._buf += tag.value.to_bytes(_TAG_WIDTHS[tag.control], "little")
        else:
            if not 0 <= tag <= 0xFF:
                raise ValueError(f"context tag must be 0..255, got {tag}")
            self._buf.append(0x20 | element_type)
            self._buf.append(tag)

    @staticmethod
    def _width_code(nbytes: int) -> int:
        return {1: 0, 2: 1, 4: 2, 8: 3}[nbytes]

    def put_uint(self, tag: Tag, value: int, *, width: int | None = None) -> TlvWriter:
        if value < 0 or value >= 1 << 64:
            raise ValueError(f"unsigned TLV integer out of range: {value}")
        if width is None:
            width = next(w for w in (1, 2, 4, 8) if value < 1 << (8 * w))
        self._control(tag, 0x04 + self._width_code(width))
        self._buf += value.to_bytes(width, "little")
        return self

    def put_int(self, tag: Tag, value: int, *, width: int | None = None) -> TlvWriter:
        if width is None:
            width = next(w for w in (1, 2, 4, 8) if -(1 << (8 * w - 1)) <= value < 1 << (8 * w - 1))
        self._control(tag, 0x00 + self._width_code(width))
        self._buf += value.to_bytes(width, "little", signed=True)
        return self

    def put_bool(self, tag: Tag, value: bool) -> TlvWriter:
        self._control(tag, 0x09 if value else 0x08)
        return self

    def put_null(self, tag: Tag) -> TlvWriter:
        self._control(tag, 0x14)
        return self

    def put_float(self, tag: Tag, value: float, *, double: bool = True) -> TlvWriter:
        self._control(tag, 0x0B if double else 0x0A)
        self._buf += struct.pack("<d" if double else "<f", value)
        return self

    def _put_string(self, tag: Tag, base: int, raw: bytes, width: int | None) -> None:
        if width is None:
            width = next(w for w in (1, 2, 4, 8) if len(raw) < 1 << (8 * w))
        self._control(tag, base + self._width_code(width))
        self._buf += len(raw).to_bytes(width, "little")
        self._buf += raw

    def put_utf8(self, tag: Tag, value: str, *, width: int | None = None) -> TlvWriter:
        self._put_string(tag, 0x0C, value.encode("utf-8"), width)
        return self

    def put_bytes(self, tag: Tag, value: bytes, *, width: int | None = None) -> TlvWriter:
        self._put_string(tag, 0x10, bytes(value), width)
        return self

    def start_struct(self, tag: Tag = None) -> TlvWriter:
        self._control(tag, 0x15)
        self._open.append(TlvType.STRUCT)
        return self

    def start_array(self, tag: Tag = None) -> TlvWriter:
        self._control(tag, 0x16)
        self._open.append(TlvType.ARRAY)
        return self

    def start_list(self, tag: Tag = None) -> TlvWriter:
        self._control(tag, 0x17)
        self._open.append(TlvType.LIST)
        return self

    def end_container(self) -> TlvWriter:
        if not self._open:
            raise ValueError("end_container() without an open container")
        self._open.pop()
        self._buf.append(_END_OF_CONTAINER)
        return self

    def to_bytes(self) -> bytes:
        if self._open:
            raise ValueError(f"{len(self._open)} TLV container(s) left open")
        return bytes(self._buf)

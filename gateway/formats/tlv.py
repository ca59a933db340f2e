"""The one Matter TLV codec (Core spec Appendix A), used by the OTA image format (gateway/formats) and the Matter
adapter's protocol messages alike; it lives here because both may import gateway.formats.

Two views over the same wire rules (control byte, tag forms, widths; tables and tag coding shared):
- values: `encode(value)` / `decode(data)` / `decode_element(data, offset)` map Python values (below) to bytes,
  for protocol messages; errors are `TLVError` (a ValueError with the byte offset).
- elements: `decode_one(data, base_offset=...)` returns a `TlvElement` tree with the absolute offset and wire
  type of every element (to name where a file is wrong), and `TlvWriter` writes with explicit widths (to build
  files byte-for-byte like other implementations); errors are `TlvFormatError` (an OtaFormatError with the
  offset in the enclosing file).

Value mapping:
  tags   None = anonymous, int 0..255 = context tag, ProfileTag(vendor_id, profile, tag) = fully qualified,
         CommonProfileTag(tag), ImplicitProfileTag(tag)
  values UInt (unsigned int), int (signed), bool, Float32 (single), float (double), str (UTF-8 string),
         bytes (octet string), None (null), Struct (dict tag->value), Array (list of anonymous values),
         TLVList (list of (tag, value) pairs). A plain dict encodes as Struct and a plain list as Array.

The decoder returns UInt for unsigned integers and plain int for signed ones, Float32 for singles, and raises
TLVError (a ValueError carrying the byte offset) for every malformed input; nothing else escapes it.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.formats.errors import TlvFormatError

__all__ = [
    "MAX_DEPTH",
    "Array",
    "CommonProfileTag",
    "Float32",
    "ImplicitProfileTag",
    "ProfileTag",
    "Struct",
    "TLVError",
    "TLVList",
    "Tag",
    "TlvElement",
    "TlvType",
    "TlvValue",
    "TlvWriter",
    "UInt",
    "decode",
    "decode_element",
    "decode_one",
    "encode",
]

MAX_DEPTH = 32  # containers nested deeper than this are refused (bounded recursion on hostile input)


class TLVError(ValueError):
    """Malformed TLV (decoding) or an unencodable value (encoding); `offset` is the byte offset concerned."""

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(f"{message} (at byte {offset})" if offset >= 0 else message)
        self.offset = offset


class ProfileTag(NamedTuple):
    """Fully qualified tag: vendor id (16 bit), profile number (16 bit), tag number (32 bit)."""

    vendor_id: int
    profile: int
    tag: int


class CommonProfileTag(NamedTuple):
    """Tag in the Matter common profile (tag number up to 32 bit)."""

    tag: int


class ImplicitProfileTag(NamedTuple):
    """Tag in the profile implied by the context (tag number up to 32 bit)."""

    tag: int


Tag = None | int | ProfileTag | CommonProfileTag | ImplicitProfileTag


class UInt(int):
    """An integer encoded as TLV unsigned."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"UInt({int(self)})"


class Float32(float):
    """A float encoded as TLV single precision (plain float is double); its value is rounded to single."""

    __slots__ = ()

    def __new__(cls, value: float = 0.0) -> Float32:
        try:
            rounded = struct.unpack("<f", struct.pack("<f", value))[0]
        except OverflowError:  # finite doubles beyond single range become infinities, as in C
            rounded = math.copysign(math.inf, value)
        return super().__new__(cls, rounded)

    def __repr__(self) -> str:
        return f"Float32({float(self)!r})"


class Struct(dict):  # type: ignore[type-arg]
    """TLV structure: insertion-ordered mapping tag -> value (tags are unique and non-anonymous)."""

    __slots__ = ()


class Array(list):  # type: ignore[type-arg]
    """TLV array: anonymous elements."""

    __slots__ = ()


class TLVList(list):  # type: ignore[type-arg]
    """TLV list: ordered (tag, value) pairs, tags may repeat or be anonymous."""

    __slots__ = ()


# Element types (low 5 bits of the control byte)
_INT = 0x00  # 0x00..0x03 signed, 1/2/4/8 bytes
_UINT = 0x04  # 0x04..0x07
_FALSE = 0x08
_TRUE = 0x09
_F32 = 0x0A
_F64 = 0x0B
_UTF8 = 0x0C  # 0x0C..0x0F, length 1/2/4/8 bytes
_BYTES = 0x10  # 0x10..0x13
_NULL = 0x14
_STRUCT = 0x15
_ARRAY = 0x16
_LIST = 0x17
_END = 0x18

# Tag controls (high 3 bits of the control byte)
_TC_ANON = 0
_TC_CONTEXT = 1
_TC_COMMON2 = 2
_TC_COMMON4 = 3
_TC_IMPLICIT2 = 4
_TC_IMPLICIT4 = 5
_TC_FQ6 = 6
_TC_FQ8 = 7

_TAG_LEN = (0, 1, 2, 4, 2, 4, 6, 8)
_WIDTH = (1, 2, 4, 8)
_INT_FMT_S = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}
_INT_FMT_U = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


# ----------------------------------------------------------------------------------------------- encoding


def _encode_tag(tag: Any, out: bytearray) -> int:
    """Append the tag bytes; return the tag control (0..7)."""
    if tag is None:
        return _TC_ANON
    if isinstance(tag, ProfileTag):
        vid, prof, num = tag
        if not (0 <= vid <= 0xFFFF and 0 <= prof <= 0xFFFF and 0 <= num <= 0xFFFFFFFF):
            raise TLVError(f"fully qualified tag out of range: {tag!r}", len(out))
        if num <= 0xFFFF:
            out += struct.pack("<HHH", vid, prof, num)
            return _TC_FQ6
        out += struct.pack("<HHI", vid, prof, num)
        return _TC_FQ8
    if isinstance(tag, CommonProfileTag | ImplicitProfileTag):
        num = tag.tag
        if not (isinstance(num, int) and 0 <= num <= 0xFFFFFFFF):
            raise TLVError(f"profile tag out of range: {tag!r}", len(out))
        common = isinstance(tag, CommonProfileTag)
        if num <= 0xFFFF:
            out += struct.pack("<H", num)
            return _TC_COMMON2 if common else _TC_IMPLICIT2
        out += struct.pack("<I", num)
        return _TC_COMMON4 if common else _TC_IMPLICIT4
    if isinstance(tag, int) and not isinstance(tag, bool):
        if not 0 <= tag <= 0xFF:
            raise TLVError(f"context tag out of range 0..255: {tag}", len(out))
        out.append(tag)
        return _TC_CONTEXT
    raise TLVError(f"not a TLV tag: {tag!r}", len(out))


def _int_width(value: int, signed: bool) -> int:
    for i, w in enumerate(_WIDTH):
        bits = 8 * w
        if signed:
            if -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
                return i
        elif 0 <= value < (1 << bits):
            return i
    raise TLVError(f"integer out of 64-bit range: {value}")


def _len_width(n: int) -> int:
    return _int_width(n, signed=False)


def _encode(value: Any, tag: Any, out: bytearray, depth: int) -> None:
    start = len(out)
    if depth > MAX_DEPTH and isinstance(value, dict | list | tuple):
        raise TLVError(f"nesting deeper than {MAX_DEPTH}", start)
    out.append(0)  # control byte placeholder
    tc = _encode_tag(tag, out)

    def control(elem: int) -> None:
        out[start] = (tc << 5) | elem

    if value is None:
        control(_NULL)
    elif isinstance(value, bool):
        control(_TRUE if value else _FALSE)
    elif isinstance(value, UInt):
        if value < 0:
            raise TLVError(f"negative UInt: {int(value)}", start)
        i = _int_width(value, signed=False)
        control(_UINT + i)
        out += struct.pack(_INT_FMT_U[_WIDTH[i]], value)
    elif isinstance(value, int):
        i = _int_width(value, signed=True)
        control(_INT + i)
        out += struct.pack(_INT_FMT_S[_WIDTH[i]], value)
    elif isinstance(value, Float32):
        control(_F32)
        out += struct.pack("<f", value)
    elif isinstance(value, float):
        control(_F64)
        out += struct.pack("<d", value)
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TLVError(f"string not encodable as UTF-8: {exc.reason}", start) from None
        i = _len_width(len(raw))
        control(_UTF8 + i)
        out += struct.pack(_INT_FMT_U[_WIDTH[i]], len(raw)) + raw
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        i = _len_width(len(raw))
        control(_BYTES + i)
        out += struct.pack(_INT_FMT_U[_WIDTH[i]], len(raw)) + raw
    elif isinstance(value, dict):
        control(_STRUCT)
        for k, v in value.items():
            if k is None:
                raise TLVError("structure member with anonymous tag", len(out))
            _encode(v, k, out, depth + 1)
        out.append(_END)
    elif isinstance(value, TLVList):
        control(_LIST)
        for item in value:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TLVError(f"TLVList items must be (tag, value) pairs, got {item!r}", len(out))
            _encode(item[1], item[0], out, depth + 1)
        out.append(_END)
    elif isinstance(value, list | tuple):
        control(_ARRAY)
        for item in value:
            _encode(item, None, out, depth + 1)
        out.append(_END)
    else:
        raise TLVError(f"cannot encode {type(value).__name__} as TLV", start)


def encode(value: Any, tag: Tag = None) -> bytes:
    """Encode one element (with `tag`, anonymous by default) using minimal widths."""
    out = bytearray()
    _encode(value, tag, out, 1)
    return bytes(out)


# ----------------------------------------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("data", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.end = len(data)

    def take(self, offset: int, n: int, what: str) -> int:
        """Check that n bytes exist at offset; return offset + n."""
        if offset + n > self.end:
            raise TLVError(f"truncated {what}: need {n} bytes, have {self.end - offset}", offset)
        return offset + n


def _decode_tag(r: _Reader, tc: int, off: int) -> tuple[Any, int]:
    n = _TAG_LEN[tc]
    end = r.take(off, n, "tag")
    d = r.data
    if tc == _TC_ANON:
        return None, end
    if tc == _TC_CONTEXT:
        return d[off], end
    if tc in (_TC_COMMON2, _TC_COMMON4):
        return CommonProfileTag(int.from_bytes(d[off:end], "little")), end
    if tc in (_TC_IMPLICIT2, _TC_IMPLICIT4):
        return ImplicitProfileTag(int.from_bytes(d[off:end], "little")), end
    vid, prof = struct.unpack_from("<HH", d, off)
    return ProfileTag(vid, prof, int.from_bytes(d[off + 4 : end], "little")), end


def _decode(r: _Reader, off: int, depth: int) -> tuple[Any, Any, int]:
    """Decode the element at off; return (tag, value, next offset). End-of-container is an error here."""
    start = off
    off = r.take(off, 1, "control byte")
    ctl = r.data[start]
    tc, et = ctl >> 5, ctl & 0x1F
    if et > _END:
        raise TLVError(f"reserved element type 0x{et:02x}", start)
    if et == _END:
        raise TLVError("unexpected end-of-container", start)
    tag, off = _decode_tag(r, tc, off)
    d = r.data
    if et < _FALSE:
        w = _WIDTH[et & 3]
        end = r.take(off, w, "integer")
        signed = et < _UINT
        num = int.from_bytes(d[off:end], "little", signed=signed)
        return tag, (num if signed else UInt(num)), end
    if et in (_FALSE, _TRUE):
        return tag, et == _TRUE, off
    if et == _F32:
        end = r.take(off, 4, "float32")
        return tag, Float32(struct.unpack_from("<f", d, off)[0]), end
    if et == _F64:
        end = r.take(off, 8, "float64")
        return tag, struct.unpack_from("<d", d, off)[0], end
    if et < _NULL:  # strings
        w = _WIDTH[et & 3]
        lend = r.take(off, w, "string length")
        n = int.from_bytes(d[off:lend], "little")
        end = r.take(lend, n, "string")
        raw = bytes(d[lend:end])
        if et < _BYTES:
            try:
                return tag, raw.decode("utf-8"), end
            except UnicodeDecodeError as exc:
                raise TLVError(f"invalid UTF-8 in string: {exc.reason}", lend + exc.start) from None
        return tag, raw, end
    if et == _NULL:
        return tag, None, off
    # containers
    if depth >= MAX_DEPTH:
        raise TLVError(f"nesting deeper than {MAX_DEPTH}", start)
    container: Any = Struct() if et == _STRUCT else Array() if et == _ARRAY else TLVList()
    while True:
        if off >= r.end:
            raise TLVError("truncated container: missing end-of-container", off)
        if d[off] == _END:  # end-of-container must be anonymous: control byte exactly 0x18
            return tag, container, off + 1
        elem_off = off
        ctag, cval, off = _decode(r, off, depth + 1)
        if et == _STRUCT:
            if ctag is None:
                raise TLVError("anonymous element inside a structure", elem_off)
            if ctag in container:
                raise TLVError(f"duplicate tag {ctag!r} in structure", elem_off)
            container[ctag] = cval
        elif et == _ARRAY:
            if ctag is not None:
                raise TLVError(f"tagged element {ctag!r} inside an array", elem_off)
            container.append(cval)
        else:
            container.append((ctag, cval))


def decode_element(data: bytes, offset: int = 0) -> tuple[Any, Any, int]:
    """Decode one element at `offset`; return (tag, value, offset after the element)."""
    if not 0 <= offset <= len(data):
        raise TLVError("offset outside data", offset)
    return _decode(_Reader(bytes(data) if not isinstance(data, bytes) else data), offset, 0)


def decode(data: bytes) -> Any:
    """Decode exactly one top-level element (its tag is discarded); trailing bytes are an error."""
    _tag, value, end = decode_element(data, 0)
    if end != len(data):
        raise TLVError(f"{len(data) - end} trailing bytes after the element", end)
    return value


# ------------------------------------------------------------------------------------- the element view


class TlvType(enum.Enum):
    """Wire kinds of elements (Matter Core § A.7)."""

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


def _kind(element_type: int) -> tuple[TlvType, int]:
    """(kind, width of the value or of its length field) of a non-reserved element type below _END."""
    if element_type < _UINT:
        return TlvType.SIGNED, _WIDTH[element_type & 3]
    if element_type < _FALSE:
        return TlvType.UNSIGNED, _WIDTH[element_type & 3]
    if element_type <= _TRUE:
        return TlvType.BOOL, 0
    if element_type <= _F64:
        return TlvType.FLOAT, 4 if element_type == _F32 else 8
    if element_type < _BYTES:
        return TlvType.UTF8, _WIDTH[element_type & 3]
    if element_type < _NULL:
        return TlvType.BYTES, _WIDTH[element_type & 3]
    return {_NULL: TlvType.NULL, _STRUCT: TlvType.STRUCT, _ARRAY: TlvType.ARRAY}.get(
        element_type, TlvType.LIST
    ), 0


class _ElementReader:
    def __init__(self, data: bytes, base_offset: int) -> None:
        self.data = data
        self.base = base_offset
        self.values = _Reader(data)  # the value view's reader: tags are parsed by the same code

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
        element_type, tag_control = control & 0x1F, control >> 5
        if element_type == _END:
            raise self.fail("unexpected TLV end-of-container", start)
        if element_type > _END:
            raise self.fail(f"reserved TLV element type 0x{element_type:02x}", start)
        kind, width = _kind(element_type)
        tag_width = _TAG_LEN[tag_control]
        self.need(pos, tag_width, "tag")
        tag, pos = _decode_tag(self.values, tag_control, pos)

        value: TlvValue
        if kind in (TlvType.SIGNED, TlvType.UNSIGNED):
            self.need(pos, width, kind.value)
            value = int.from_bytes(self.data[pos : pos + width], "little", signed=kind is TlvType.SIGNED)
            return self.make(tag, kind, value, start, pos, pos + width)
        if kind is TlvType.BOOL:
            return self.make(tag, kind, element_type == _TRUE, start, pos, pos)
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
            if self.data[pos] == _END:
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
    """Decode exactly one TLV element that spans all of `data`, as an element tree with offsets.

    Raises `TlvFormatError` (offset = `base_offset` + position) if the element is malformed, does not
    fit, or is followed by extra bytes.
    """
    element = _ElementReader(data, base_offset).element(0, 0)
    if element.end - base_offset != len(data):
        raise TlvFormatError(
            f"{len(data) - (element.end - base_offset)} extra bytes after the TLV element", element.end
        )
    return element


class TlvWriter:
    """Builds TLV bytes element by element; integers and lengths use the shortest width unless `width` is given
    (as CHIP and matter.js do). Tags are those of the value view (None, context int, profile tags)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._open: list[TlvType] = []

    def __len__(self) -> int:
        """Bytes written so far (the offset the next element will start at)."""
        return len(self._buf)

    def _control(self, tag: Tag, element_type: int) -> None:
        start = len(self._buf)
        self._buf.append(0)
        try:
            tag_control = _encode_tag(tag, self._buf)
        except TLVError as exc:
            del self._buf[start:]
            raise ValueError(str(exc)) from None
        self._buf[start] = (tag_control << 5) | element_type

    @staticmethod
    def _width_code(nbytes: int) -> int:
        return _WIDTH.index(nbytes)

    def put_uint(self, tag: Tag, value: int, *, width: int | None = None) -> TlvWriter:
        if value < 0 or value >= 1 << 64:
            raise ValueError(f"unsigned TLV integer out of range: {value}")
        if width is None:
            width = _WIDTH[_int_width(value, signed=False)]
        self._control(tag, _UINT + self._width_code(width))
        self._buf += value.to_bytes(width, "little")
        return self

    def put_int(self, tag: Tag, value: int, *, width: int | None = None) -> TlvWriter:
        if width is None:
            width = _WIDTH[_int_width(value, signed=True)]
        self._control(tag, _INT + self._width_code(width))
        self._buf += value.to_bytes(width, "little", signed=True)
        return self

    def put_bool(self, tag: Tag, value: bool) -> TlvWriter:
        self._control(tag, _TRUE if value else _FALSE)
        return self

    def put_null(self, tag: Tag) -> TlvWriter:
        self._control(tag, _NULL)
        return self

    def put_float(self, tag: Tag, value: float, *, double: bool = True) -> TlvWriter:
        self._control(tag, _F64 if double else _F32)
        self._buf += struct.pack("<d" if double else "<f", value)
        return self

    def _put_string(self, tag: Tag, base: int, raw: bytes, width: int | None) -> None:
        if width is None:
            width = _WIDTH[_len_width(len(raw))]
        self._control(tag, base + self._width_code(width))
        self._buf += len(raw).to_bytes(width, "little")
        self._buf += raw

    def put_utf8(self, tag: Tag, value: str, *, width: int | None = None) -> TlvWriter:
        self._put_string(tag, _UTF8, value.encode("utf-8"), width)
        return self

    def put_bytes(self, tag: Tag, value: bytes, *, width: int | None = None) -> TlvWriter:
        self._put_string(tag, _BYTES, bytes(value), width)
        return self

    def _start(self, tag: Tag, element_type: int, kind: TlvType) -> TlvWriter:
        self._control(tag, element_type)
        self._open.append(kind)
        return self

    def start_struct(self, tag: Tag = None) -> TlvWriter:
        return self._start(tag, _STRUCT, TlvType.STRUCT)

    def start_array(self, tag: Tag = None) -> TlvWriter:
        return self._start(tag, _ARRAY, TlvType.ARRAY)

    def start_list(self, tag: Tag = None) -> TlvWriter:
        return self._start(tag, _LIST, TlvType.LIST)

    def end_container(self) -> TlvWriter:
        if not self._open:
            raise ValueError("end_container() without an open container")
        self._open.pop()
        self._buf.append(_END)
        return self

    def to_bytes(self) -> bytes:
        if self._open:
            raise ValueError(f"{len(self._open)} TLV container(s) left open")
        return bytes(self._buf)

"""Interaction Model message codecs (Matter Core spec ch. 8 / 10.6): dataclasses <-> TLV payload bytes.

Covers the messages a server node exchanges: StatusResponse 0x01, ReadRequest 0x02, SubscribeRequest 0x03,
ReportData 0x05, WriteRequest 0x06, WriteResponse 0x07, InvokeRequest 0x08, InvokeResponse 0x09,
TimedRequest 0x0A, and their information blocks (AttributePathIB, CommandPathIB, CommandDataIB, StatusIB,
AttributeReportIB, DataVersionFilterIB...). Path IBs are TLV lists, everything else structures; every message
carries InteractionModelRevision under context tag 0xFF.

Decoders raise `IMDecodeError` (with a path naming the offending field) for every malformed input and nothing else.
Field values inside CommandFields / attribute Data stay plain TLV values (`gateway.formats.tlv`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from gateway.formats.tlv import Array, Struct, TLVError, TLVList, UInt, decode, encode

__all__ = [
    "IM_PROTOCOL_ID",
    "IM_REVISION",
    "AttributeData",
    "AttributePath",
    "AttributeReport",
    "AttributeStatus",
    "ClusterPath",
    "CommandData",
    "CommandPath",
    "CommandStatus",
    "DataVersionFilter",
    "IMDecodeError",
    "InvokeRequest",
    "InvokeResponse",
    "Opcode",
    "Outgoing",
    "ReadRequest",
    "ReportData",
    "Status",
    "StatusIB",
    "StatusResponse",
    "SubscribeRequest",
    "TimedRequest",
    "WriteRequest",
    "WriteResponse",
    "decode_message",
]

IM_PROTOCOL_ID = 0x0001
IM_REVISION = 12  # Matter 1.4 (8.1.1 Revision History)
_REV_TAG = 0xFF


class Outgoing(NamedTuple):
    """One message for the exchange to send: protocol id (32-bit form), opcode, payload."""

    protocol_id: int
    opcode: int
    payload: bytes


class IMDecodeError(ValueError):
    """Malformed IM message: `where` names the field path (e.g. 'InvokeRequest.InvokeRequests[0].CommandPath')."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class Opcode(enum.IntEnum):
    STATUS_RESPONSE = 0x01
    READ_REQUEST = 0x02
    SUBSCRIBE_REQUEST = 0x03
    SUBSCRIBE_RESPONSE = 0x04
    REPORT_DATA = 0x05
    WRITE_REQUEST = 0x06
    WRITE_RESPONSE = 0x07
    INVOKE_REQUEST = 0x08
    INVOKE_RESPONSE = 0x09
    TIMED_REQUEST = 0x0A


class Status(enum.IntEnum):
    """Interaction Model status codes (spec 8.10.1)."""

    SUCCESS = 0x00
    FAILURE = 0x01
    INVALID_SUBSCRIPTION = 0x7D
    UNSUPPORTED_ACCESS = 0x7E
    UNSUPPORTED_ENDPOINT = 0x7F
    INVALID_ACTION = 0x80
    UNSUPPORTED_COMMAND = 0x81
    INVALID_COMMAND = 0x85
    UNSUPPORTED_ATTRIBUTE = 0x86
    CONSTRAINT_ERROR = 0x87
    UNSUPPORTED_WRITE = 0x88
    RESOURCE_EXHAUSTED = 0x89
    NOT_FOUND = 0x8B
    UNREPORTABLE_ATTRIBUTE = 0x8C
    INVALID_DATA_TYPE = 0x8D
    UNSUPPORTED_READ = 0x8F
    DATA_VERSION_MISMATCH = 0x92
    TIMEOUT = 0x94
    BUSY = 0x9C
    ACCESS_RESTRICTED = 0x9D
    UNSUPPORTED_CLUSTER = 0xC3
    NO_UPSTREAM_SUBSCRIPTION = 0xC5
    NEEDS_TIMED_INTERACTION = 0xC6
    UNSUPPORTED_EVENT = 0xC7
    PATHS_EXHAUSTED = 0xC8
    TIMED_REQUEST_MISMATCH = 0xC9
    FAILSAFE_REQUIRED = 0xCA
    INVALID_IN_STATE = 0xCB
    NO_COMMAND_RESPONSE = 0xCC
    DYNAMIC_CONSTRAINT_ERROR = 0xCF
    ALREADY_EXISTS = 0xD0
    INVALID_TRANSPORT_TYPE = 0xD1


# ------------------------------------------------------------------------------------------ field helpers


def _u(v: int | None) -> UInt | None:
    return None if v is None else UInt(v)


class _Fields:
    """Typed access to a decoded Struct / TLVList with IMDecodeError naming the field path."""

    def __init__(self, value: Any, where: str, *, as_list: bool = False) -> None:
        self.where = where
        if as_list:
            if not isinstance(value, TLVList):
                raise IMDecodeError(f"expected a TLV list, got {type(value).__name__}", where)
            items: dict[Any, Any] = {}
            for tag, v in value:
                if tag in items:
                    raise IMDecodeError(f"duplicate tag {tag!r}", where)
                items[tag] = v
            self.items = items
        else:
            if not isinstance(value, Struct):
                raise IMDecodeError(f"expected a structure, got {type(value).__name__}", where)
            self.items = dict(value)

    def has(self, tag: int) -> bool:
        return tag in self.items

    def raw(self, tag: int, name: str, required: bool = False) -> Any:
        if tag not in self.items:
            if required:
                raise IMDecodeError(f"missing {name} (tag {tag})", self.where)
            return None
        return self.items[tag]

    def uint(
        self, tag: int, name: str, bits: int, required: bool = False, nullable: bool = False
    ) -> int | None:
        v = self.raw(tag, name, required)
        if v is None:
            if tag in self.items and not nullable:
                raise IMDecodeError(f"{name} must not be null", self.where)
            return None
        if not isinstance(v, UInt):
            raise IMDecodeError(f"{name} must be an unsigned integer, got {type(v).__name__}", self.where)
        if v >= 1 << bits:
            raise IMDecodeError(f"{name} {int(v)} exceeds {bits} bits", self.where)
        return int(v)

    def boolean(self, tag: int, name: str, default: bool = False) -> bool:
        v = self.raw(tag, name)
        if v is None:
            if tag in self.items:
                raise IMDecodeError(f"{name} must not be null", self.where)
            return default
        if not isinstance(v, bool):
            raise IMDecodeError(f"{name} must be a boolean", self.where)
        return v

    def array(self, tag: int, name: str, required: bool = False) -> list[Any] | None:
        v = self.raw(tag, name, required)
        if v is None:
            if tag in self.items:
                raise IMDecodeError(f"{name} must not be null", self.where)
            return None
        if not isinstance(v, Array):
            raise IMDecodeError(f"{name} must be an array", self.where)
        return list(v)

    def revision(self) -> int | None:
        return self.uint(_REV_TAG, "InteractionModelRevision", 8)


def _decode_top(data: bytes, what: str) -> _Fields:
    try:
        value = decode(data)
    except TLVError as exc:
        raise IMDecodeError(f"bad TLV: {exc}", what) from None
    return _Fields(value, what)


def _encode_top(items: dict[int, Any]) -> bytes:
    s = Struct({k: v for k, v in items.items() if v is not None})
    s[_REV_TAG] = UInt(IM_REVISION)
    return encode(s)


# ------------------------------------------------------------------------------------------ IBs


@dataclass(frozen=True, slots=True)
class StatusIB:
    status: int
    cluster_status: int | None = None

    def to_tlv(self) -> Struct:
        s = Struct({0: UInt(self.status)})
        if self.cluster_status is not None:
            s[1] = UInt(self.cluster_status)
        return s

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> StatusIB:
        f = _Fields(v, where)
        status = f.uint(0, "Status", 16, required=True)
        assert status is not None
        return cls(status, f.uint(1, "ClusterStatus", 16))


@dataclass(frozen=True, slots=True)
class AttributePath:
    """AttributePathIB; None in endpoint/cluster/attribute is a wildcard."""

    endpoint: int | None = None
    cluster: int | None = None
    attribute: int | None = None
    node: int | None = None
    list_index: int | None = None
    has_list_index: bool = False  # ListIndex present (null = append)
    enable_tag_compression: bool | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.endpoint is None or self.cluster is None or self.attribute is None

    def to_tlv(self) -> TLVList:
        items: list[tuple[int, Any]] = []
        if self.enable_tag_compression is not None:
            items.append((0, self.enable_tag_compression))
        for tag, v in ((1, self.node), (2, self.endpoint), (3, self.cluster), (4, self.attribute)):
            if v is not None:
                items.append((tag, UInt(v)))
        if self.has_list_index:
            items.append((5, _u(self.list_index)))
        return TLVList(items)

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> AttributePath:
        f = _Fields(v, where, as_list=True)
        li_present = f.has(5)
        return cls(
            endpoint=f.uint(2, "Endpoint", 16),
            cluster=f.uint(3, "Cluster", 32),
            attribute=f.uint(4, "Attribute", 32),
            node=f.uint(1, "Node", 64),
            list_index=f.uint(5, "ListIndex", 16, nullable=True),
            has_list_index=li_present,
            enable_tag_compression=f.boolean(0, "EnableTagCompression") if f.has(0) else None,
        )


@dataclass(frozen=True, slots=True)
class ClusterPath:
    endpoint: int | None = None
    cluster: int | None = None
    node: int | None = None

    def to_tlv(self) -> TLVList:
        return TLVList(
            [
                (t, UInt(v))
                for t, v in ((0, self.node), (1, self.endpoint), (2, self.cluster))
                if v is not None
            ]
        )

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> ClusterPath:
        f = _Fields(v, where, as_list=True)
        return cls(f.uint(1, "Endpoint", 16), f.uint(2, "Cluster", 32), f.uint(0, "Node", 64))


@dataclass(frozen=True, slots=True)
class DataVersionFilter:
    path: ClusterPath
    data_version: int

    def to_tlv(self) -> Struct:
        return Struct({0: self.path.to_tlv(), 1: UInt(self.data_version)})

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> DataVersionFilter:
        f = _Fields(v, where)
        version = f.uint(1, "DataVersion", 32, required=True)
        assert version is not None
        return cls(ClusterPath.from_tlv(f.raw(0, "Path", required=True), where + ".Path"), version)


@dataclass(frozen=True, slots=True)
class CommandPath:
    """CommandPathIB; endpoint None only in group invokes (a wildcard for a unicast invoke is an error)."""

    endpoint: int | None
    cluster: int
    command: int

    def to_tlv(self) -> TLVList:
        items: list[tuple[int, Any]] = []
        if self.endpoint is not None:
            items.append((0, UInt(self.endpoint)))
        items += [(1, UInt(self.cluster)), (2, UInt(self.command))]
        return TLVList(items)

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> CommandPath:
        f = _Fields(v, where, as_list=True)
        cluster = f.uint(1, "Cluster", 32, required=True)
        command = f.uint(2, "Command", 32, required=True)
        assert cluster is not None and command is not None
        return cls(f.uint(0, "Endpoint", 16), cluster, command)


@dataclass(frozen=True, slots=True)
class CommandData:
    """CommandDataIB: a command request or a command response carrying fields."""

    path: CommandPath
    fields: Struct | None = None
    ref: int | None = None

    def to_tlv(self) -> Struct:
        s = Struct({0: self.path.to_tlv()})
        if self.fields is not None:
            s[1] = self.fields
        if self.ref is not None:
            s[2] = UInt(self.ref)
        return s

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> CommandData:
        f = _Fields(v, where)
        path = CommandPath.from_tlv(f.raw(0, "CommandPath", required=True), where + ".CommandPath")
        fields = f.raw(1, "CommandFields")
        if f.has(1) and not isinstance(fields, Struct):
            raise IMDecodeError("CommandFields must be a structure", where)
        return cls(path, fields, f.uint(2, "CommandRef", 16))


@dataclass(frozen=True, slots=True)
class CommandStatus:
    """CommandStatusIB: the status of one command."""

    path: CommandPath
    status: StatusIB
    ref: int | None = None

    def to_tlv(self) -> Struct:
        s = Struct({0: self.path.to_tlv(), 1: self.status.to_tlv()})
        if self.ref is not None:
            s[2] = UInt(self.ref)
        return s

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> CommandStatus:
        f = _Fields(v, where)
        return cls(
            CommandPath.from_tlv(f.raw(0, "CommandPath", required=True), where + ".CommandPath"),
            StatusIB.from_tlv(f.raw(1, "Status", required=True), where + ".Status"),
            f.uint(2, "CommandRef", 16),
        )


@dataclass(frozen=True, slots=True)
class AttributeData:
    """AttributeDataIB: one attribute value (also the element of a WriteRequest)."""

    path: AttributePath
    data: Any
    data_version: int | None = None

    def to_tlv(self) -> Struct:
        s = Struct()
        if self.data_version is not None:
            s[0] = UInt(self.data_version)
        s[1] = self.path.to_tlv()
        s[2] = self.data
        return s

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> AttributeData:
        f = _Fields(v, where)
        path = AttributePath.from_tlv(f.raw(1, "Path", required=True), where + ".Path")
        if not f.has(2):
            raise IMDecodeError("missing Data (tag 2)", where)
        return cls(path, f.items[2], f.uint(0, "DataVersion", 32))


@dataclass(frozen=True, slots=True)
class AttributeStatus:
    path: AttributePath
    status: StatusIB

    def to_tlv(self) -> Struct:
        return Struct({0: self.path.to_tlv(), 1: self.status.to_tlv()})

    @classmethod
    def from_tlv(cls, v: Any, where: str) -> AttributeStatus:
        f = _Fields(v, where)
        return cls(
            AttributePath.from_tlv(f.raw(0, "Path", required=True), where + ".Path"),
            StatusIB.from_tlv(f.raw(1, "Status", required=True), where + ".Status"),
        )


AttributeReport = AttributeData | AttributeStatus


def attribute_report_tlv(r: AttributeReport) -> Struct:
    """AttributeReportIB: {0: AttributeStatusIB} or {1: AttributeDataIB}."""
    return Struct({0: r.to_tlv()}) if isinstance(r, AttributeStatus) else Struct({1: r.to_tlv()})


def _attribute_report_from_tlv(v: Any, where: str) -> AttributeReport:
    f = _Fields(v, where)
    if f.has(0) == f.has(1):
        raise IMDecodeError("AttributeReportIB needs exactly one of AttributeStatus / AttributeData", where)
    if f.has(0):
        return AttributeStatus.from_tlv(f.items[0], where + ".AttributeStatus")
    return AttributeData.from_tlv(f.items[1], where + ".AttributeData")


# ------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class StatusResponse:
    status: int

    OPCODE: ClassVar[Opcode] = Opcode.STATUS_RESPONSE

    def encode(self) -> bytes:
        return _encode_top({0: UInt(self.status)})

    @classmethod
    def decode(cls, data: bytes) -> StatusResponse:
        f = _decode_top(data, "StatusResponse")
        f.revision()
        status = f.uint(0, "Status", 16, required=True)
        assert status is not None
        return cls(status)


@dataclass(frozen=True, slots=True)
class TimedRequest:
    timeout_ms: int

    OPCODE: ClassVar[Opcode] = Opcode.TIMED_REQUEST

    def encode(self) -> bytes:
        return _encode_top({0: UInt(self.timeout_ms)})

    @classmethod
    def decode(cls, data: bytes) -> TimedRequest:
        f = _decode_top(data, "TimedRequest")
        f.revision()
        t = f.uint(0, "Timeout", 16, required=True)
        assert t is not None
        return cls(t)


@dataclass(frozen=True, slots=True)
class InvokeRequest:
    invoke_requests: list[CommandData]
    suppress_response: bool = False
    timed_request: bool = False

    OPCODE: ClassVar[Opcode] = Opcode.INVOKE_REQUEST

    def encode(self) -> bytes:
        return _encode_top(
            {
                0: self.suppress_response,
                1: self.timed_request,
                2: Array(c.to_tlv() for c in self.invoke_requests),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> InvokeRequest:
        w = "InvokeRequest"
        f = _decode_top(data, w)
        f.revision()
        items = f.array(2, "InvokeRequests", required=True) or []
        return cls(
            [CommandData.from_tlv(v, f"{w}.InvokeRequests[{i}]") for i, v in enumerate(items)],
            f.boolean(0, "SuppressResponse"),
            f.boolean(1, "TimedRequest"),
        )


InvokeResponseItem = CommandData | CommandStatus


@dataclass(frozen=True, slots=True)
class InvokeResponse:
    invoke_responses: list[InvokeResponseItem]
    suppress_response: bool = False
    more_chunked: bool = False

    OPCODE: ClassVar[Opcode] = Opcode.INVOKE_RESPONSE

    def encode(self) -> bytes:
        items = Array(
            Struct({0: r.to_tlv()}) if isinstance(r, CommandData) else Struct({1: r.to_tlv()})
            for r in self.invoke_responses
        )
        return _encode_top({0: self.suppress_response, 1: items, 2: True if self.more_chunked else None})

    @classmethod
    def decode(cls, data: bytes) -> InvokeResponse:
        w = "InvokeResponse"
        f = _decode_top(data, w)
        f.revision()
        out: list[InvokeResponseItem] = []
        for i, v in enumerate(f.array(1, "InvokeResponses", required=True) or []):
            where = f"{w}.InvokeResponses[{i}]"
            g = _Fields(v, where)
            if g.has(0) == g.has(1):
                raise IMDecodeError("InvokeResponseIB needs exactly one of Command / Status", where)
            out.append(
                CommandData.from_tlv(g.items[0], where + ".Command")
                if g.has(0)
                else CommandStatus.from_tlv(g.items[1], where + ".Status")
            )
        return cls(out, f.boolean(0, "SuppressResponse"), f.boolean(2, "MoreChunkedMessages"))


def _paths(f: _Fields, tag: int, name: str, where: str) -> list[AttributePath]:
    return [AttributePath.from_tlv(v, f"{where}.{name}[{i}]") for i, v in enumerate(f.array(tag, name) or [])]


def _filters(f: _Fields, tag: int, where: str) -> list[DataVersionFilter]:
    return [
        DataVersionFilter.from_tlv(v, f"{where}.DataVersionFilters[{i}]")
        for i, v in enumerate(f.array(tag, "DataVersionFilters") or [])
    ]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    attribute_requests: list[AttributePath] = field(default_factory=list)
    fabric_filtered: bool = True
    data_version_filters: list[DataVersionFilter] = field(default_factory=list)
    event_requests: list[Any] = field(default_factory=list)  # EventPathIBs, kept raw (the node has no events)

    OPCODE: ClassVar[Opcode] = Opcode.READ_REQUEST

    def encode(self) -> bytes:
        return _encode_top(
            {
                0: Array(p.to_tlv() for p in self.attribute_requests) if self.attribute_requests else None,
                1: Array(self.event_requests) if self.event_requests else None,
                3: self.fabric_filtered,
                4: Array(d.to_tlv() for d in self.data_version_filters)
                if self.data_version_filters
                else None,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ReadRequest:
        w = "ReadRequest"
        f = _decode_top(data, w)
        f.revision()
        # FabricFiltered is mandatory on the wire; a peer that omits it gets the safer filtered read
        return cls(
            _paths(f, 0, "AttributeRequests", w),
            f.boolean(3, "FabricFiltered", True),
            _filters(f, 4, w),
            f.array(1, "EventRequests") or [],
        )


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    min_interval_floor_s: int
    max_interval_ceiling_s: int
    attribute_requests: list[AttributePath] = field(default_factory=list)
    fabric_filtered: bool = True
    keep_subscriptions: bool = False
    data_version_filters: list[DataVersionFilter] = field(default_factory=list)

    OPCODE: ClassVar[Opcode] = Opcode.SUBSCRIBE_REQUEST

    def encode(self) -> bytes:
        return _encode_top(
            {
                0: self.keep_subscriptions,
                1: UInt(self.min_interval_floor_s),
                2: UInt(self.max_interval_ceiling_s),
                3: Array(p.to_tlv() for p in self.attribute_requests) if self.attribute_requests else None,
                7: self.fabric_filtered,
                8: Array(d.to_tlv() for d in self.data_version_filters)
                if self.data_version_filters
                else None,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> SubscribeRequest:
        w = "SubscribeRequest"
        f = _decode_top(data, w)
        f.revision()
        lo = f.uint(1, "MinIntervalFloor", 16, required=True)
        hi = f.uint(2, "MaxIntervalCeiling", 16, required=True)
        assert lo is not None and hi is not None
        return cls(
            lo,
            hi,
            _paths(f, 3, "AttributeRequests", w),
            f.boolean(7, "FabricFiltered", True),
            f.boolean(0, "KeepSubscriptions"),
            _filters(f, 8, w),
        )


@dataclass(frozen=True, slots=True)
class ReportData:
    attribute_reports: list[AttributeReport] = field(default_factory=list)
    more_chunked: bool = False
    suppress_response: bool = False
    subscription_id: int | None = None

    OPCODE: ClassVar[Opcode] = Opcode.REPORT_DATA

    def encode(self) -> bytes:
        return _encode_top(
            {
                0: _u(self.subscription_id),
                1: Array(attribute_report_tlv(r) for r in self.attribute_reports)
                if self.attribute_reports
                else None,
                3: True if self.more_chunked else None,
                4: True if self.suppress_response else None,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ReportData:
        w = "ReportData"
        f = _decode_top(data, w)
        f.revision()
        reports = [
            _attribute_report_from_tlv(v, f"{w}.AttributeReports[{i}]")
            for i, v in enumerate(f.array(1, "AttributeReports") or [])
        ]
        return cls(
            reports,
            f.boolean(3, "MoreChunkedMessages"),
            f.boolean(4, "SuppressResponse"),
            f.uint(0, "SubscriptionId", 32),
        )


@dataclass(frozen=True, slots=True)
class WriteRequest:
    write_requests: list[AttributeData]
    suppress_response: bool = False
    timed_request: bool = False
    more_chunked: bool = False

    OPCODE: ClassVar[Opcode] = Opcode.WRITE_REQUEST

    def encode(self) -> bytes:
        return _encode_top(
            {
                0: self.suppress_response,
                1: self.timed_request,
                2: Array(d.to_tlv() for d in self.write_requests),
                3: True if self.more_chunked else None,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> WriteRequest:
        w = "WriteRequest"
        f = _decode_top(data, w)
        f.revision()
        items = f.array(2, "WriteRequests", required=True) or []
        return cls(
            [AttributeData.from_tlv(v, f"{w}.WriteRequests[{i}]") for i, v in enumerate(items)],
            f.boolean(0, "SuppressResponse"),
            f.boolean(1, "TimedRequest"),
            f.boolean(3, "MoreChunkedMessages"),
        )


@dataclass(frozen=True, slots=True)
class WriteResponse:
    write_responses: list[AttributeStatus]

    OPCODE: ClassVar[Opcode] = Opcode.WRITE_RESPONSE

    def encode(self) -> bytes:
        return _encode_top({0: Array(s.to_tlv() for s in self.write_responses)})

    @classmethod
    def decode(cls, data: bytes) -> WriteResponse:
        w = "WriteResponse"
        f = _decode_top(data, w)
        f.revision()
        items = f.array(0, "WriteResponses", required=True) or []
        return cls([AttributeStatus.from_tlv(v, f"{w}.WriteResponses[{i}]") for i, v in enumerate(items)])


IMMessage = (
    StatusResponse
    | ReadRequest
    | SubscribeRequest
    | ReportData
    | WriteRequest
    | WriteResponse
    | InvokeRequest
    | InvokeResponse
    | TimedRequest
)

_BY_OPCODE: dict[int, Any] = {
    cls.OPCODE: cls
    for cls in (
        StatusResponse,
        ReadRequest,
        SubscribeRequest,
        ReportData,
        WriteRequest,
        WriteResponse,
        InvokeRequest,
        InvokeResponse,
        TimedRequest,
    )
}


def decode_message(opcode: int, payload: bytes) -> IMMessage:
    """Decode an IM payload for `opcode`; unknown opcodes and malformed bodies raise IMDecodeError."""
    cls = _BY_OPCODE.get(opcode)
    if cls is None:
        raise IMDecodeError(f"unsupported IM opcode 0x{opcode:02x}")
    return cls.decode(payload)  # type: ignore[no-any-return]


def outgoing(msg: IMMessage) -> Outgoing:
    """Wrap an IM message for sending."""
    return Outgoing(IM_PROTOCOL_ID, int(msg.OPCODE), msg.encode())

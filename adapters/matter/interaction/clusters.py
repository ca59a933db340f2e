"""The provider node's own clusters on endpoint 0: Descriptor, Basic Information, OTA Software Update Provider.

- Descriptor (0x001D): DeviceTypeList (Root Node 0x0016 + OTA Provider 0x0014), ServerList, ClientList, PartsList,
  all derived from the registry at read time.
- Basic Information (0x0028): identity and versions from a `BasicInfo`.
- OTA Software Update Provider (0x0029): a shell whose QueryImage / ApplyUpdateRequest / NotifyUpdateApplied
  logic is an injected `OtaProviderDelegate`; this module owns the exact field codecs of the five commands
  (tags per reference 000 / Matter Core 11.20.6) and maps codec failures to INVALID_COMMAND / CONSTRAINT_ERROR.

`build_provider_node(info, delegate, acl)` wires all three into a `Registry`.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.matter.interaction.acl import AccessControl, Privilege
from adapters.matter.interaction.registry import (
    Attribute,
    ClusterServer,
    Command,
    ConstraintError,
    FieldError,
    InvokeContext,
    ReadContext,
    Registry,
)
from gateway.formats.tlv import Array, Struct, UInt

__all__ = [
    "BASIC_INFORMATION_CLUSTER",
    "DESCRIPTOR_CLUSTER",
    "DEVICE_TYPE_OTA_PROVIDER",
    "DEVICE_TYPE_ROOT_NODE",
    "OTA_PROVIDER_CLUSTER",
    "OTA_REQUESTOR_CLUSTER",
    "ApplyUpdateAction",
    "ApplyUpdateRequest",
    "ApplyUpdateResponse",
    "BasicInfo",
    "DownloadProtocol",
    "NotifyUpdateApplied",
    "OtaCommand",
    "OtaProviderDelegate",
    "OtaProviderServer",
    "OtaStatus",
    "QueryImage",
    "QueryImageResponse",
    "basic_information_cluster",
    "build_provider_node",
    "descriptor_cluster",
    "ota_provider_cluster",
]

DESCRIPTOR_CLUSTER = 0x001D
BASIC_INFORMATION_CLUSTER = 0x0028
OTA_PROVIDER_CLUSTER = 0x0029
OTA_REQUESTOR_CLUSTER = 0x002A
DEVICE_TYPE_ROOT_NODE = 0x0016
DEVICE_TYPE_OTA_PROVIDER = 0x0014


class OtaCommand(enum.IntEnum):
    QUERY_IMAGE = 0x00
    QUERY_IMAGE_RESPONSE = 0x01
    APPLY_UPDATE_REQUEST = 0x02
    APPLY_UPDATE_RESPONSE = 0x03
    NOTIFY_UPDATE_APPLIED = 0x04


class OtaStatus(enum.IntEnum):
    UPDATE_AVAILABLE = 0
    BUSY = 1
    NOT_AVAILABLE = 2
    DOWNLOAD_PROTOCOL_NOT_SUPPORTED = 3


class DownloadProtocol(enum.IntEnum):
    BDX_SYNCHRONOUS = 0
    BDX_ASYNCHRONOUS = 1
    HTTPS = 2
    VENDOR_SPECIFIC = 3


class ApplyUpdateAction(enum.IntEnum):
    PROCEED = 0
    AWAIT_NEXT_ACTION = 1
    DISCONTINUE = 2


# ------------------------------------------------------------------------------------------ field readers


class _F:
    """Typed reads of CommandFields; FieldError (INVALID_COMMAND) on a missing or mistyped field."""

    def __init__(self, fields: Struct, command: str) -> None:
        self.f = fields
        self.cmd = command

    def _get(self, tag: int, name: str, required: bool) -> Any:
        if tag not in self.f:
            if required:
                raise FieldError(f"{self.cmd}: missing {name} (tag {tag})")
            return None
        v = self.f[tag]
        if v is None:
            raise FieldError(f"{self.cmd}: {name} must not be null")
        return v

    def uint(self, tag: int, name: str, bits: int, required: bool = True) -> int | None:
        v = self._get(tag, name, required)
        if v is None:
            return None
        if not isinstance(v, UInt) or v >= 1 << bits:
            raise FieldError(f"{self.cmd}: {name} must be a {bits}-bit unsigned integer, got {v!r}")
        return int(v)

    def octets(
        self, tag: int, name: str, required: bool = True, min_len: int = 0, max_len: int = 1 << 32
    ) -> bytes | None:
        v = self._get(tag, name, required)
        if v is None:
            return None
        if not isinstance(v, bytes):
            raise FieldError(f"{self.cmd}: {name} must be an octet string")
        if not min_len <= len(v) <= max_len:
            raise ConstraintError(f"{self.cmd}: {name} length {len(v)} outside {min_len}..{max_len}")
        return v

    def string(
        self, tag: int, name: str, required: bool = True, min_len: int = 0, max_len: int = 1 << 32
    ) -> str | None:
        v = self._get(tag, name, required)
        if v is None:
            return None
        if not isinstance(v, str):
            raise FieldError(f"{self.cmd}: {name} must be a UTF-8 string")
        if not min_len <= len(v.encode()) <= max_len:
            raise ConstraintError(f"{self.cmd}: {name} length outside {min_len}..{max_len}")
        return v

    def boolean(self, tag: int, name: str, required: bool = False) -> bool | None:
        v = self._get(tag, name, required)
        if v is not None and not isinstance(v, bool):
            raise FieldError(f"{self.cmd}: {name} must be a boolean")
        return v


def _put(s: Struct, tag: int, value: Any) -> None:
    if value is not None:
        s[tag] = UInt(value) if isinstance(value, int) and not isinstance(value, bool) else value


# ------------------------------------------------------------------------------------------ 0x0029 commands


@dataclass(frozen=True, slots=True)
class QueryImage:
    vendor_id: int
    product_id: int
    software_version: int
    protocols_supported: tuple[int, ...]
    hardware_version: int | None = None
    location: str | None = None
    requestor_can_consent: bool = False
    metadata_for_provider: bytes | None = None

    def to_fields(self) -> Struct:
        s = Struct(
            {
                0: UInt(self.vendor_id),
                1: UInt(self.product_id),
                2: UInt(self.software_version),
                3: Array(UInt(p) for p in self.protocols_supported),
            }
        )
        _put(s, 4, self.hardware_version)
        _put(s, 5, self.location)
        _put(s, 6, self.requestor_can_consent)
        _put(s, 7, self.metadata_for_provider)
        return s

    @classmethod
    def from_fields(cls, fields: Struct) -> QueryImage:
        f = _F(fields, "QueryImage")
        protos = f._get(3, "ProtocolsSupported", True)
        if not isinstance(protos, Array) or not all(isinstance(p, UInt) and p <= 0xFF for p in protos):
            raise FieldError("QueryImage: ProtocolsSupported must be a list of 8-bit enums")
        if not 1 <= len(protos) <= 8:
            raise ConstraintError(f"QueryImage: {len(protos)} ProtocolsSupported entries (1..8 allowed)")
        return cls(
            vendor_id=f.uint(0, "VendorID", 16) or 0,
            product_id=f.uint(1, "ProductID", 16) or 0,
            software_version=f.uint(2, "SoftwareVersion", 32) or 0,
            protocols_supported=tuple(int(p) for p in protos),
            hardware_version=f.uint(4, "HardwareVersion", 16, required=False),
            location=f.string(5, "Location", required=False, min_len=2, max_len=2),
            requestor_can_consent=bool(f.boolean(6, "RequestorCanConsent")),
            metadata_for_provider=f.octets(7, "MetadataForProvider", required=False, max_len=512),
        )


@dataclass(frozen=True, slots=True)
class QueryImageResponse:
    status: OtaStatus
    delayed_action_time: int | None = None
    image_uri: str | None = None
    software_version: int | None = None
    software_version_string: str | None = None
    update_token: bytes | None = None
    user_consent_needed: bool | None = None
    metadata_for_requestor: bytes | None = None

    def __post_init__(self) -> None:
        if self.status == OtaStatus.UPDATE_AVAILABLE and None in (
            self.image_uri,
            self.software_version,
            self.software_version_string,
            self.update_token,
        ):
            raise ValueError(
                "UpdateAvailable needs ImageURI, SoftwareVersion, SoftwareVersionString and UpdateToken"
            )
        if self.update_token is not None and not 8 <= len(self.update_token) <= 32:
            raise ValueError("UpdateToken must be 8..32 bytes")

    def to_fields(self) -> Struct:
        s = Struct({0: UInt(self.status)})
        _put(s, 1, self.delayed_action_time)
        _put(s, 2, self.image_uri)
        _put(s, 3, self.software_version)
        _put(s, 4, self.software_version_string)
        _put(s, 5, self.update_token)
        _put(s, 6, self.user_consent_needed)
        _put(s, 7, self.metadata_for_requestor)
        return s

    @classmethod
    def from_fields(cls, fields: Struct) -> QueryImageResponse:
        f = _F(fields, "QueryImageResponse")
        return cls(
            OtaStatus(f.uint(0, "Status", 8) or 0),
            f.uint(1, "DelayedActionTime", 32, False),
            f.string(2, "ImageURI", False, max_len=256),
            f.uint(3, "SoftwareVersion", 32, False),
            f.string(4, "SoftwareVersionString", False, 1, 64),
            f.octets(5, "UpdateToken", False, 8, 32),
            f.boolean(6, "UserConsentNeeded"),
            f.octets(7, "MetadataForRequestor", False, max_len=512),
        )


@dataclass(frozen=True, slots=True)
class ApplyUpdateRequest:
    update_token: bytes
    new_version: int

    def to_fields(self) -> Struct:
        return Struct({0: self.update_token, 1: UInt(self.new_version)})

    @classmethod
    def from_fields(cls, fields: Struct) -> ApplyUpdateRequest:
        f = _F(fields, "ApplyUpdateRequest")
        token = f.octets(0, "UpdateToken", min_len=8, max_len=32)
        version = f.uint(1, "NewVersion", 32)
        assert token is not None and version is not None
        return cls(token, version)


@dataclass(frozen=True, slots=True)
class ApplyUpdateResponse:
    action: ApplyUpdateAction
    delayed_action_time: int = 0

    def to_fields(self) -> Struct:
        return Struct({0: UInt(self.action), 1: UInt(self.delayed_action_time)})

    @classmethod
    def from_fields(cls, fields: Struct) -> ApplyUpdateResponse:
        f = _F(fields, "ApplyUpdateResponse")
        return cls(ApplyUpdateAction(f.uint(0, "Action", 8) or 0), f.uint(1, "DelayedActionTime", 32) or 0)


@dataclass(frozen=True, slots=True)
class NotifyUpdateApplied:
    update_token: bytes
    software_version: int

    def to_fields(self) -> Struct:
        return Struct({0: self.update_token, 1: UInt(self.software_version)})

    @classmethod
    def from_fields(cls, fields: Struct) -> NotifyUpdateApplied:
        f = _F(fields, "NotifyUpdateApplied")
        token = f.octets(0, "UpdateToken", min_len=8, max_len=32)
        version = f.uint(1, "SoftwareVersion", 32)
        assert token is not None and version is not None
        return cls(token, version)


class OtaProviderDelegate(Protocol):
    """The provider logic behind cluster 0x0029 (each method may be sync or async).

    Raise `registry.StatusError` (or a subclass) to answer with a plain status instead of a response.
    """

    def query_image(
        self, ctx: InvokeContext, req: QueryImage
    ) -> QueryImageResponse | Awaitable[QueryImageResponse]: ...

    def apply_update_request(
        self, ctx: InvokeContext, req: ApplyUpdateRequest
    ) -> ApplyUpdateResponse | Awaitable[ApplyUpdateResponse]: ...

    def notify_update_applied(
        self, ctx: InvokeContext, req: NotifyUpdateApplied
    ) -> Awaitable[None] | None: ...


async def _maybe_await(v: Any) -> Any:
    return await v if inspect.isawaitable(v) else v


class OtaProviderServer(ClusterServer):
    """Cluster 0x0029; `delegate` can be reassigned at any time (e.g. a test swapping providers)."""

    def __init__(self, delegate: OtaProviderDelegate) -> None:
        super().__init__(OTA_PROVIDER_CLUSTER, revision=1)
        self.delegate = delegate


def ota_provider_cluster(delegate: OtaProviderDelegate) -> OtaProviderServer:
    """Cluster 0x0029 whose commands decode their fields, call `server.delegate`, and encode the response."""
    server = OtaProviderServer(delegate)

    async def query_image(ctx: InvokeContext, fields: Struct) -> tuple[int, Struct]:
        req = QueryImage.from_fields(fields)
        resp: QueryImageResponse = await _maybe_await(server.delegate.query_image(ctx, req))
        return OtaCommand.QUERY_IMAGE_RESPONSE, resp.to_fields()

    async def apply_update(ctx: InvokeContext, fields: Struct) -> tuple[int, Struct]:
        req = ApplyUpdateRequest.from_fields(fields)
        resp: ApplyUpdateResponse = await _maybe_await(server.delegate.apply_update_request(ctx, req))
        return OtaCommand.APPLY_UPDATE_RESPONSE, resp.to_fields()

    async def notify_applied(ctx: InvokeContext, fields: Struct) -> None:
        req = NotifyUpdateApplied.from_fields(fields)
        await _maybe_await(server.delegate.notify_update_applied(ctx, req))

    server.commands = {
        OtaCommand.QUERY_IMAGE: Command(
            OtaCommand.QUERY_IMAGE, query_image, Privilege.OPERATE, OtaCommand.QUERY_IMAGE_RESPONSE
        ),
        OtaCommand.APPLY_UPDATE_REQUEST: Command(
            OtaCommand.APPLY_UPDATE_REQUEST, apply_update, Privilege.OPERATE, OtaCommand.APPLY_UPDATE_RESPONSE
        ),
        OtaCommand.NOTIFY_UPDATE_APPLIED: Command(
            OtaCommand.NOTIFY_UPDATE_APPLIED, notify_applied, Privilege.OPERATE
        ),
    }
    return server


# ------------------------------------------------------------------------------------------ identity clusters


@dataclass
class BasicInfo:
    """Basic Information attribute values (spec 11.1)."""

    vendor_name: str = "otagw"
    vendor_id: int = 0xFFF1
    product_name: str = "otagw OTA provider"
    product_id: int = 0x8001
    node_label: str = ""
    location: str = "XX"
    hardware_version: int = 0
    hardware_version_string: str = "0"
    software_version: int = 1
    software_version_string: str = "0.1.0"
    unique_id: str = "otagw-provider"
    data_model_revision: int = 18  # Matter 1.4
    specification_version: int = 0x01040000
    max_paths_per_invoke: int = 1
    case_sessions_per_fabric: int = 3
    subscriptions_per_fabric: int = 3
    extra: dict[int, Any] = field(default_factory=dict)  # further attribute id -> TLV value


def basic_information_cluster(info: BasicInfo) -> ClusterServer:
    def attr(aid: int, get: Any) -> Attribute:
        return Attribute(aid, lambda _ctx: get())

    attrs = [
        attr(0x00, lambda: UInt(info.data_model_revision)),
        attr(0x01, lambda: info.vendor_name),
        attr(0x02, lambda: UInt(info.vendor_id)),
        attr(0x03, lambda: info.product_name),
        attr(0x04, lambda: UInt(info.product_id)),
        attr(0x05, lambda: info.node_label),
        attr(0x06, lambda: info.location),
        attr(0x07, lambda: UInt(info.hardware_version)),
        attr(0x08, lambda: info.hardware_version_string),
        attr(0x09, lambda: UInt(info.software_version)),
        attr(0x0A, lambda: info.software_version_string),
        attr(0x12, lambda: info.unique_id),
        attr(
            0x13,
            lambda: Struct({0: UInt(info.case_sessions_per_fabric), 1: UInt(info.subscriptions_per_fabric)}),
        ),
        attr(0x15, lambda: UInt(info.specification_version)),
        attr(0x16, lambda: UInt(info.max_paths_per_invoke)),
    ]
    for aid, value in info.extra.items():
        attrs.append(attr(aid, lambda v=value: v))
    return ClusterServer(BASIC_INFORMATION_CLUSTER, revision=4, attributes=attrs)


def descriptor_cluster(registry: Registry, endpoint_id: int) -> ClusterServer:
    def ep() -> Any:
        return registry.endpoints[endpoint_id]

    def device_types(_ctx: ReadContext) -> Array:
        return Array(Struct({0: UInt(d), 1: UInt(r)}) for d, r in ep().device_types)

    def parts(_ctx: ReadContext) -> Array:
        # the root endpoint lists every other endpoint (full-family pattern); others list none
        return Array(UInt(e) for e in sorted(registry.endpoints) if endpoint_id == 0 and e != 0)

    return ClusterServer(
        DESCRIPTOR_CLUSTER,
        revision=2,
        attributes=[
            Attribute(0x0000, device_types),
            Attribute(0x0001, lambda _c: Array(UInt(c) for c in sorted(ep().clusters))),
            Attribute(0x0002, lambda _c: Array(UInt(c) for c in sorted(ep().client_clusters))),
            Attribute(0x0003, parts),
        ],
    )


def build_provider_node(
    info: BasicInfo | None = None,
    *,
    delegate: OtaProviderDelegate,
    acl: AccessControl | None = None,
    root_node_revision: int = 3,
) -> tuple[Registry, OtaProviderServer]:
    """A registry with endpoint 0 = Root Node + OTA Provider; returns it and the 0x0029 cluster server."""
    registry = Registry(acl)
    registry.add_endpoint(
        0,
        [(DEVICE_TYPE_ROOT_NODE, root_node_revision), (DEVICE_TYPE_OTA_PROVIDER, 1)],
        client_clusters=[OTA_REQUESTOR_CLUSTER],
    )
    registry.add_cluster(0, descriptor_cluster(registry, 0))
    registry.add_cluster(0, basic_information_cluster(info or BasicInfo()))
    ota = ota_provider_cluster(delegate)
    registry.add_cluster(0, ota)
    return registry, ota

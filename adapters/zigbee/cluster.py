"""Take over the server side of every device's OTA Upgrade cluster (0x0019) in a running zigpy application.

zigpy routes a device's OTA requests to the `Ota` client-cluster object of that device's endpoint, whose
`handle_cluster_request` answers Query Next Image with NO_IMAGE_AVAILABLE and Image Block with ABORT. We
replace that method on each such cluster *instance* (zigpy's object graph, attribute cache and database
listeners stay untouched) with one that hands the request to otagw, so exactly one answer leaves the gateway.

Hooking happens when devices join, initialise or are loaded, and again lazily from the application's
`handle_message` event, which zigpy emits for every packet *before* it dispatches it to the device — so even a
device whose object was swapped (quirks, re-interview) is hooked before its OTA frame reaches the cluster.
The same event lets us see OTA frames zigpy's codec cannot parse (zigpy drops them silently): they are logged
with what is wrong and answered with a Default Response MALFORMED_COMMAND, as ZCL requires. zigpy decodes each
frame right after that event, synchronously; decoding it a second time here would double the codec work per
block, so the frame is only noted, and checked with zigpy's codec (`describe_malformed`) one loop step later
only if it never reached a cluster handler — exactly the frames zigpy dropped (or did not dispatch).

When `device.ota_in_progress` is set (someone runs zigpy's own `device.update_firmware()`), requests go to
zigpy's handler instead, so the two servers never answer the same frame.

zigpy 2.4 ends every interview (`Device._initialize`) with an unconditional unicast Image Notify (jitter 100)
through `ota.image_notify(...)`, which makes every joining device query at once; otagw's core decides who is
notified and when (budgets, rollouts, windows). A hooked cluster therefore gets an instance-level
`image_notify` that sends nothing; otagw itself sends Image Notify through `client_command`. The cluster is
hooked before that call: the interview's preceding read of `current_file_version` is answered through
`handle_message`, which hooks the device.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from typing import Any

import zigpy.types as t
from zigpy.application import ControllerApplication
from zigpy.device import Device
from zigpy.zcl import foundation
from zigpy.zcl.clusters.general import Ota

LOGGER = logging.getLogger(__name__)

OTA_CLUSTER_ID = Ota.cluster_id

RequestHandler = Callable[[Ota, foundation.ZCLHeader, Any], None]
MalformedHandler = Callable[[Device, int, bytes, str], None]
DeviceEvent = Callable[[Device], None]


class _Frame:
    """An OTA frame seen in `handle_message`, waiting to learn whether zigpy dispatched it."""

    __slots__ = ("device", "dispatched", "endpoint", "message")

    def __init__(self, device: Device, endpoint: int, message: bytes) -> None:
        self.device = device
        self.endpoint = endpoint
        self.message = message
        self.dispatched = False


def _takeover_handle_cluster_request(
    self: Ota, hdr: foundation.ZCLHeader, args: Any, *, dst_addressing: t.AddrMode | None = None
) -> None:
    """Installed as the bound `handle_cluster_request` of a hooked Ota cluster instance."""
    takeover: OtaTakeover | None = getattr(self, "_otagw_takeover", None)
    if takeover is not None and takeover._current is not None:
        takeover._current.dispatched = True  # zigpy decoded it: not malformed
    handler: RequestHandler | None = getattr(self, "_otagw_handler", None)
    if handler is None or self.endpoint.device.ota_in_progress:
        Ota.handle_cluster_request(self, hdr, args, dst_addressing=dst_addressing)
        return
    handler(self, hdr, args)


async def _suppressed_image_notify(self: Ota, *args: Any, **kwargs: Any) -> None:
    """Installed as `image_notify` of a hooked cluster: zigpy's own Image Notify (after an interview, after its
    own update) is not sent; the core decides which devices are notified."""
    LOGGER.debug("zigpy's Image Notify to %s suppressed (otagw notifies)", self.endpoint.device.ieee)


def describe_malformed(cluster: Ota, data: bytes) -> tuple[foundation.ZCLHeader | None, str | None]:
    """Parse `data` with zigpy's codec as an OTA frame; return (header, problem) — problem None when fine."""
    try:
        hdr, rest = foundation.ZCLHeader.deserialize(data)
    except Exception as exc:  # codec raises ValueError/KeyError/struct errors alike
        return None, f"ZCL header unreadable ({len(data)} bytes): {exc}"
    if not hdr.frame_control.is_cluster or hdr.direction != foundation.Direction.Client_to_Server:
        return hdr, None
    command = cluster.server_commands.get(hdr.command_id)
    if command is None:
        return hdr, None  # unknown command: reaches the handler as raw bytes -> UNSUP_CLUSTER_COMMAND
    try:
        command.schema.deserialize(rest)
    except Exception as exc:
        need = ", ".join(f"{f.name}:{getattr(f.type, '__name__', f.type)}" for f in command.schema.fields)
        return hdr, (
            f"{command.name} (0x{hdr.command_id:02x}) payload of {len(rest)} bytes does not decode "
            f"({exc}); expected fields {need}"
        )
    return hdr, None


class OtaTakeover:
    """Keeps every OTA client cluster of `app` hooked to `on_request`; forwards device lifecycle events."""

    def __init__(
        self,
        app: ControllerApplication,
        on_request: RequestHandler,
        on_malformed: MalformedHandler,
        on_device_initialized: DeviceEvent | None = None,
        on_device_left: DeviceEvent | None = None,
        on_device_joined: DeviceEvent | None = None,
    ) -> None:
        self._app = app
        self._on_request = on_request
        self._on_malformed = on_malformed
        self._on_initialized = on_device_initialized
        self._on_left = on_device_left
        self._on_joined = on_device_joined
        self._listener_id: int | None = None
        self._hooked: list[Ota] = []
        self._current: _Frame | None = None  # the OTA frame zigpy is dispatching right now

    # ----------------------------------------------------------------- install / remove
    def install(self) -> None:
        self._listener_id = self._app.add_listener(self)
        for device in list(self._app.devices.values()):
            self.ensure(device)

    def remove(self) -> None:
        if self._listener_id is not None:
            self._app.remove_listener(self)
            self._listener_id = None
        for cluster in self._hooked:
            cluster.__dict__.pop("handle_cluster_request", None)
            cluster.__dict__.pop("_otagw_handler", None)
            cluster.__dict__.pop("image_notify", None)
            cluster.__dict__.pop("_otagw_takeover", None)
            cluster.__dict__.pop("_otagw_key", None)  # the adapter's caches
            cluster.__dict__.pop("_otagw_plain_ibr", None)
        self._hooked.clear()

    def ensure(self, device: Any) -> list[Ota]:
        """Hook the OTA client clusters of `device` (idempotent); returns them."""
        found: list[Ota] = []
        for ep_id, ep in getattr(device, "endpoints", {}).items():
            if ep_id == 0:
                continue
            cluster = getattr(ep, "out_clusters", {}).get(OTA_CLUSTER_ID)
            if cluster is None:
                continue
            if cluster.__dict__.get("_otagw_handler") is not self._on_request:
                cluster._otagw_handler = self._on_request
                cluster._otagw_takeover = self
                cluster.handle_cluster_request = types.MethodType(_takeover_handle_cluster_request, cluster)
                cluster.image_notify = types.MethodType(_suppressed_image_notify, cluster)
                self._hooked.append(cluster)
            found.append(cluster)
        return found

    # ----------------------------------------------------------------- zigpy application events
    def handle_message(
        self, device: Device, profile: int, cluster: int, src_ep: int, dst_ep: int, message: bytes
    ) -> None:
        self.ensure(device)
        if cluster != OTA_CLUSTER_ID:
            return
        ep = device.endpoints.get(src_ep)
        ota = getattr(ep, "out_clusters", {}).get(OTA_CLUSTER_ID) if ep is not None else None
        if ota is None:
            LOGGER.warning(
                "OTA frame from %s endpoint %s, which has no OTA client cluster: %s",
                device.ieee,
                src_ep,
                message.hex(" "),
            )
            return
        # zigpy dispatches the frame right after this event returns; check it once that is over
        frame = _Frame(device, src_ep, message)
        self._current = frame
        asyncio.get_running_loop().call_soon(self._check_frame, frame, ota)

    def _check_frame(self, frame: _Frame, ota: Ota) -> None:
        """A frame zigpy did not hand to the OTA cluster: say what is wrong with it, if anything."""
        if self._current is frame:
            self._current = None
        if frame.dispatched or self._listener_id is None:
            return
        hdr, problem = describe_malformed(ota, frame.message)
        if problem is None:
            return  # well-formed but not dispatched (duplicate, uninitialised device, general command)
        self._on_malformed(frame.device, frame.endpoint, frame.message, problem)
        if hdr is not None:
            ota.send_default_rsp(hdr, foundation.Status.MALFORMED_COMMAND)

    def device_joined(self, device: Device) -> None:
        self.ensure(device)
        if self._on_joined is not None:
            self._on_joined(device)

    def raw_device_initialized(self, device: Device) -> None:
        self.ensure(device)

    def device_initialized(self, device: Device) -> None:
        self.ensure(device)
        if self._on_initialized is not None:
            self._on_initialized(device)

    def device_left(self, device: Device) -> None:
        if self._on_left is not None:
            self._on_left(device)

    def device_removed(self, device: Device) -> None:
        if self._on_left is not None:
            self._on_left(device)

"""Fabric-admin ops for M2's chip SDK controller worker (`ControllerRunner(..., ops_module=__name__)`).

Runs *inside* the worker process (the chip SDK is imported lazily, per op). Every op takes the worker's
`WorkerState` and a JSON args dict and returns JSON-able data:

  parse_code      {code}                                  -> {passcode, discriminator, long_discriminator, vendor_id..}
  commission      {code, node_id, ip?, port?, timeout_s?} -> {node_id}   (QR "MT:..." or manual pairing code; on the
                                                              network by mDNS, or at `ip` [`port`, 5540] directly)
  node_info       {node_id, timeout_ms?, fresh_session?}  -> BasicInformation + OTA requestor attributes (by name;
                                                              fresh_session: a new CASE session, after a reboot)
                                                              + "power": Power Source clusters on any endpoint
                                                              ({endpoint, FeatureMap, BatPercentRemaining, ..})
  set_provider    {node_id, provider_node_id, endpoint?}  -> DefaultOTAProviders after the write (our fabric's entry
                                                              replaced, other fabrics' entries untouched)
  announce        {node_id, provider_node_id, vendor_id, reason?, endpoint?}  -> AnnounceOTAProvider sent
  subscribe       {node_id, min_s?, max_s?}               -> subscription to UpdateState, UpdateStateProgress,
                                                              SoftwareVersion(+String) and the StateTransition,
                                                              VersionApplied, DownloadError events
  poll_events     {}                                      -> buffered reports since the last poll (then cleared):
                                                              {"node_id", "kind": "attribute"|"event"|"error", ...}
  unsubscribe     {node_id}
  remove_node     {node_id}                               -> RemoveFabric on the node (decommission)
  open_window     {node_id, timeout_s?, discriminator?}   -> {passcode, manual_code, qr_code} (enhanced window)

Subscription callbacks only append to a buffer (bounded, oldest dropped); the parent drains it with poll_events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from adapters.matter.fabric.controller import WorkerState, _jsonable

__all__ = ["OPS"]

MAX_BUFFERED = 10_000

_BASIC = (
    "VendorID",
    "VendorName",
    "ProductID",
    "ProductName",
    "NodeLabel",
    "HardwareVersion",
    "HardwareVersionString",
    "SoftwareVersion",
    "SoftwareVersionString",
    "SerialNumber",
    "UniqueID",
)
_REQUESTOR = ("DefaultOTAProviders", "UpdatePossible", "UpdateState", "UpdateStateProgress")
# Power Source (0x002F): FeatureMap says wired (bit 0) / battery (bit 1); BatPercentRemaining in half-percent (nullable)
_POWER = ("FeatureMap", "Status", "Order", "BatPercentRemaining", "BatChargeLevel")


class _AdminState:
    def __init__(self) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_BUFFERED)
        self.subscriptions: dict[int, Any] = {}
        self.dropped = 0


def _admin(st: WorkerState) -> _AdminState:
    a = getattr(st, "_otagw_admin", None)
    if a is None:
        a = _AdminState()
        st._otagw_admin = a  # type: ignore[attr-defined]
        original = st.shutdown

        def shutdown() -> None:  # subscriptions first, then M2's controller/stack shutdown
            for sub in list(a.subscriptions.values()):
                with contextlib.suppress(Exception):
                    sub.Shutdown()
            a.subscriptions.clear()
            original()

        st.shutdown = shutdown  # type: ignore[method-assign]
    return a


def _parse(code: str) -> dict[str, Any]:
    from chip.setup_payload import SetupPayload

    code = code.strip()
    p = SetupPayload()
    if code.upper().startswith("MT:"):
        p.ParseQrCode(code)
        kind = "qr"
    else:
        p.ParseManualPairingCode(code.replace("-", "").replace(" ", ""))
        kind = "manual"
    at = p.attributes
    out: dict[str, Any] = {"kind": kind, "passcode": int(at["SetUpPINCode"])}
    # attribute names as the SDK's visitor reports them
    long_d = at.get("Long discriminator", at.get("Discriminator"))
    short_d = at.get("Short discriminator", at.get("ShortDiscriminator"))
    if long_d is not None:
        out["discriminator"], out["long_discriminator"] = int(long_d), True
    elif short_d is not None:
        out["discriminator"], out["long_discriminator"] = int(short_d), False
    else:
        raise ValueError(f"setup code {code!r}: no discriminator in it")
    for k, name in (("VendorID", "vendor_id"), ("ProductID", "product_id")):
        if int(at.get(k, 0) or 0):
            out[name] = int(at[k])
    return out


async def _op_parse_code(st: WorkerState, a: dict[str, Any]) -> Any:
    return _parse(str(a["code"]))


async def _op_commission(st: WorkerState, a: dict[str, Any]) -> Any:
    from chip.discovery import FilterType

    ctrl = st.require_controller()
    node_id = int(a["node_id"])
    info = _parse(str(a["code"]))
    timeout_ms = int(float(a.get("timeout_s", 60)) * 1000)
    if a.get("ip"):
        # PASE to ip:port, then commissioning over that session (CommissionIP has no port: 5540 only)
        await ctrl.EstablishPASESessionIP(str(a["ip"]), info["passcode"], node_id, int(a.get("port") or 5540))
        got = await ctrl.Commission(node_id)
    else:
        ftype = (
            FilterType.LONG_DISCRIMINATOR
            if info.get("long_discriminator")
            else FilterType.SHORT_DISCRIMINATOR
        )
        got = await ctrl.CommissionOnNetwork(
            node_id,
            info["passcode"],
            filterType=ftype,
            filter=info["discriminator"],
            discoveryTimeoutMsec=timeout_ms,
        )
    return {"node_id": int(got or node_id)}


def _attrs_by_name(result: Any, endpoint: int, cluster: Any) -> dict[str, Any]:
    data = result.get(endpoint, {}).get(cluster, {}) if hasattr(result, "get") else {}
    out: dict[str, Any] = {}
    for attr_type, value in data.items():
        name = getattr(attr_type, "__name__", str(attr_type))
        if isinstance(value, Exception) or type(value).__name__ == "ValueDecodeFailure":
            continue
        out[name] = _jsonable(value)
    return out


async def _op_node_info(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters

    ctrl = st.require_controller()
    node_id = int(a["node_id"])
    if a.get("fresh_session"):
        # a read-back after a reboot: the old CASE session died with the device's process, and reading on it
        # only ends in a timeout; start from a new session instead
        ctrl.ExpireSessions(node_id)
    if a.get("timeout_ms"):  # bound the CASE set-up (a rebooting node must not stall the worker for long)
        await ctrl.GetConnectedDevice(node_id, allowPASE=False, timeoutMs=int(a["timeout_ms"]))
    basic, req = Clusters.BasicInformation, Clusters.OtaSoftwareUpdateRequestor
    paths = [(0, getattr(basic.Attributes, n)) for n in _BASIC] + [
        (0, getattr(req.Attributes, n)) for n in _REQUESTOR
    ]
    power = Clusters.PowerSource
    # wildcard endpoint, same read: a node without the cluster just returns no data for these paths (no extra
    # round trip, nothing that can block the BasicInformation answer)
    paths += [getattr(power.Attributes, n) for n in _POWER]
    res = await ctrl.ReadAttribute(node_id, paths)
    out = {
        "node_id": node_id,
        "basic": _attrs_by_name(res, 0, basic),
        "requestor": _attrs_by_name(res, 0, req),
        "power": [
            {"endpoint": int(ep), **attrs}
            for ep in (sorted(res) if hasattr(res, "keys") else [])
            if (attrs := _attrs_by_name(res, ep, power))
        ],
    }
    out["has_requestor"] = bool(out["requestor"])
    return out


async def _op_set_provider(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters

    ctrl = st.require_controller()
    node_id, provider = int(a["node_id"]), int(a["provider_node_id"])
    endpoint = int(a.get("endpoint", 0))
    req = Clusters.OtaSoftwareUpdateRequestor
    # fabric-filtered read: only our fabric's entries come back, and a write replaces only our fabric's entries
    creds = Clusters.OperationalCredentials
    res = await ctrl.ReadAttribute(
        node_id, [(0, req.Attributes.DefaultOTAProviders), (0, creds.Attributes.CurrentFabricIndex)]
    )
    current = list(res.get(0, {}).get(req, {}).get(req.Attributes.DefaultOTAProviders, []) or [])
    # our index on this node (not 1 when another admin commissioned it first: multi-admin)
    fabric_index = int(res.get(0, {}).get(creds, {}).get(creds.Attributes.CurrentFabricIndex, 1) or 1)
    new = [req.Structs.ProviderLocation(providerNodeID=provider, endpoint=endpoint, fabricIndex=fabric_index)]
    if not (len(current) == 1 and current[0].providerNodeID == provider and current[0].endpoint == endpoint):
        results = await ctrl.WriteAttribute(node_id, [(0, req.Attributes.DefaultOTAProviders(new))])
        for r in results:
            status = getattr(r, "Status", None)
            if status is not None and int(status) != 0:
                raise RuntimeError(
                    f"writing DefaultOTAProviders on node 0x{node_id:X} failed: status {status!r}"
                )
    res = await ctrl.ReadAttribute(node_id, [(0, req.Attributes.DefaultOTAProviders)])
    return _jsonable(res.get(0, {}).get(req, {}).get(req.Attributes.DefaultOTAProviders, []))


async def _op_announce(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters

    ctrl = st.require_controller()
    cmd = Clusters.OtaSoftwareUpdateRequestor.Commands.AnnounceOTAProvider(
        providerNodeID=int(a["provider_node_id"]),
        vendorID=int(a["vendor_id"]),
        announcementReason=int(a.get("reason", 1)),
        metadataForNode=None,
        endpoint=int(a.get("endpoint", 0)),
    )
    await ctrl.SendCommand(int(a["node_id"]), 0, cmd, interactionTimeoutMs=int(a.get("timeout_ms", 20000)))
    return True


async def _op_open_window(st: WorkerState, a: dict[str, Any]) -> Any:
    """Enhanced commissioning window (new random passcode) on a node of ours: how a device is shared with
    another admin (another controller, or otagw itself when an ecosystem opens the window)."""
    ctrl = st.require_controller()
    params = await ctrl.OpenCommissioningWindow(
        nodeid=int(a["node_id"]),
        timeout=int(a.get("timeout_s", 300)),
        iteration=int(a.get("iteration", 1000)),
        discriminator=int(a.get("discriminator", 3000)),
        option=1,  # kTokenWithRandomPIN
    )
    return {
        "passcode": int(params.setupPinCode),
        "manual_code": str(params.setupManualCode),
        "qr_code": str(params.setupQRCode),
    }


async def _op_subscribe(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters

    ctrl = st.require_controller()
    adm = _admin(st)
    node_id = int(a["node_id"])
    old = adm.subscriptions.pop(node_id, None)
    if old is not None:
        with contextlib.suppress(Exception):
            old.Shutdown()
    req, basic = Clusters.OtaSoftwareUpdateRequestor, Clusters.BasicInformation
    attrs = [
        (0, req.Attributes.UpdateState),
        (0, req.Attributes.UpdateStateProgress),
        (0, basic.Attributes.SoftwareVersion),
        (0, basic.Attributes.SoftwareVersionString),
    ]
    events = [
        (0, req.Events.StateTransition, 1),
        (0, req.Events.VersionApplied, 1),
        (0, req.Events.DownloadError, 1),
    ]
    sub = await ctrl.Read(
        node_id,
        attributes=attrs,
        events=events,
        reportInterval=(int(a.get("min_s", 0)), int(a.get("max_s", 60))),
        keepSubscriptions=True,
        autoResubscribe=True,
    )

    def push(item: dict[str, Any]) -> None:
        if len(adm.events) == adm.events.maxlen:
            adm.dropped += 1
        item["node_id"] = node_id
        item["at"] = time.time()
        adm.events.append(item)

    def on_attr(path: Any, transaction: Any) -> None:
        try:
            value = transaction.GetAttribute(path)
        except Exception as exc:  # a decode problem is reported, not raised into the SDK
            value = f"unreadable: {exc}"
        push(
            {
                "kind": "attribute",
                "cluster": getattr(path.ClusterType, "__name__", str(path.ClusterId)),
                "attribute": path.AttributeName,
                "value": _jsonable(value),
            }
        )

    def on_event(ev: Any, transaction: Any) -> None:
        data = getattr(ev, "Data", None)
        push(
            {
                "kind": "event",
                "event": type(data).__name__ if data is not None else str(ev.Header.EventId),
                "event_number": getattr(ev.Header, "EventNumber", None),
                "data": _jsonable(data),
            }
        )

    def on_error(err: int, transaction: Any) -> None:
        push({"kind": "error", "error": int(err)})

    sub.SetAttributeUpdateCallback(on_attr)
    sub.SetEventUpdateCallback(on_event)
    sub.SetErrorCallback(on_error)
    adm.subscriptions[node_id] = sub
    # the priming report's values: emit them once so the parent sees the current state
    for _ep, clusters in (sub.GetAttributes() or {}).items():
        for cluster, values in clusters.items():
            for attr_type, value in values.items():
                push(
                    {
                        "kind": "attribute",
                        "cluster": getattr(cluster, "__name__", str(cluster)),
                        "attribute": getattr(attr_type, "__name__", str(attr_type)),
                        "value": _jsonable(value),
                    }
                )
    return {"node_id": node_id, "subscribed": True}


async def _op_poll_events(st: WorkerState, a: dict[str, Any]) -> Any:
    adm = _admin(st)
    await asyncio.sleep(0)  # let queued SDK callbacks run first
    out = list(adm.events)
    adm.events.clear()
    dropped, adm.dropped = adm.dropped, 0
    return {"events": out, "dropped": dropped}


async def _op_unsubscribe(st: WorkerState, a: dict[str, Any]) -> Any:
    sub = _admin(st).subscriptions.pop(int(a["node_id"]), None)
    if sub is not None:
        sub.Shutdown()
    return sub is not None


async def _op_remove_node(st: WorkerState, a: dict[str, Any]) -> Any:
    ctrl = st.require_controller()
    node_id = int(a["node_id"])
    await _op_unsubscribe(st, a)
    await ctrl.UnpairDevice(node_id)
    return True


OPS: dict[str, Any] = {
    "parse_code": _op_parse_code,
    "commission": _op_commission,
    "node_info": _op_node_info,
    "set_provider": _op_set_provider,
    "announce": _op_announce,
    "subscribe": _op_subscribe,
    "poll_events": _op_poll_events,
    "unsubscribe": _op_unsubscribe,
    "remove_node": _op_remove_node,
    "open_window": _op_open_window,
}

"""The Matter adapter the service starts: fabric admin + the Python OTA Provider node + the admin loop.

`MatterAdapter(matter_config, core, clock, data_dir)` (its `MatterConfig` section, like the Zigbee adapter); `await start()` / `await stop()`. Start-up, in order:
  1. preconditions: IPv6 sockets, the chip SDK controller worker (SDK importable, a /data per datadir.py); otherwise
     `AdapterStartError` with the reason (the gateway serves without Matter);
  2. the fabric (`FabricAdmin`, storage in `<data_dir>/matter/`, owner-only): created on first start, loaded later;
     the provider node's NOC is minted on it by the same controller (M2's identity.py) and kept in credentials/;
  3. the provider node (M1's ProviderNode) with M3's IM server over the cluster registry: Descriptor, Basic
     Information, OTA Provider 0x0029 backed by `MatterOtaProvider` (provider.py); BDX served by the provider;
     ACL: Administer for the admin node, Operate on 0x0029 for every CASE subject of our fabric;
  4. the admin loop: every commissioned node (nodes.json) is read (BasicInformation -> `core.observe`), its
     DefaultOTAProviders pointed at us, and subscribed (UpdateState/Progress, SoftwareVersion, StateTransition,
     VersionApplied, DownloadError -> `core.status_report` / `core.report_version`); AnnounceOTAProvider goes to
     nodes a rollout wave opened for (`core.devices_to_notify`) and to nodes the plan says should update now;
  5. a control socket `<data_dir>/matter/admin.sock` (0600) through which `otagw matter commission/nodes` reach
     the running gateway (the fabric storage has a single writer).
`netns=` (tests) runs the controller worker in that network namespace; the node binds where start() runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adapters.matter.fabric.admin import FabricAdmin, matter_dir
from adapters.matter.fabric.controller import ControllerError, runner_unavailable_reason
from adapters.matter.interaction.acl import AccessControl
from adapters.matter.interaction.clusters import BasicInfo, build_provider_node
from adapters.matter.interaction.server import IMServer
from adapters.matter.node import ProviderNode
from adapters.matter.provider import MatterOtaProvider, ProviderFabric, matter_device_key
from gateway.clock import Clock
from gateway.config import MatterConfig
from gateway.core.interface import DeviceInfo, DeviceKey, ReportedStatus, StatusReport, UpdateCoreInterface

__all__ = ["AdapterStartError", "MatterAdapter"]

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often subscription reports are drained from the worker
ANNOUNCE_REPEAT_S = 3600.0  # re-announce the same image to a silent node after this long
RETRY_S = 60.0  # a node that could not be reached is retried after this long
POWER_REFRESH_S = 600.0  # a battery node's charge is read again this often (a read wakes a sleepy device)
VERIFY_BACKOFF_S = (
    2.0,
    2.0,
    2.0,
    3.0,
    3.0,
    5.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)  # read-backs after an install: often at first (a reboot takes seconds), then rarer
VERIFY_TIMEOUT_MS = 5000
ANNOUNCE_URGENT = 2  # AnnouncementReasonEnum.UrgentUpdateAvailable: query now, not after a long random wait
VERIFY_PARALLEL = 16  # read-backs in flight at once (each is one CASE session + read in the worker)
SUBSCRIBE_MAX_S = (
    10  # max interval: a rebooted node's lost subscription is noticed (and re-made) within ~this
)

# UpdateStateEnum (Matter 11.20.7.4.x)
_IDLE, _QUERYING, _DELAYED_ON_QUERY, _DOWNLOADING, _APPLYING, _DELAYED_ON_APPLY, _ROLLING_BACK = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
)
_FAILURE, _TIMEOUT = 2, 3  # ChangeReasonEnum
_STATE_NAMES = {
    0: "Unknown",
    1: "Idle",
    2: "Querying",
    3: "DelayedOnQuery",
    4: "Downloading",
    5: "Applying",
    6: "DelayedOnApply",
    7: "RollingBack",
    8: "DelayedOnUserConsent",
}
_REASON_NAMES = {0: "Unknown", 1: "Success", 2: "Failure", 3: "TimeOut", 4: "DelayByProvider"}


def _named(names: dict[int, str], value: Any) -> str:
    return names.get(value, str(value)) if isinstance(value, int) else str(value)


# record states in which a requestor-reported failure ends the episode (then the policy's retry back-off)
_IN_FLIGHT = frozenset({"querying", "downloading", "downloaded", "waiting_to_apply", "applying", "verifying"})


class AdapterStartError(Exception):
    """The Matter adapter could not start; the message says why (the gateway serves without Matter)."""


def ipv6_unavailable_reason() -> str | None:
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::", 0))
    except OSError as exc:
        return f"cannot open an IPv6 UDP socket: {exc.strerror or exc}"
    return None


POWER_FEATURE_WIRED, POWER_FEATURE_BATTERY = 0x1, 0x2  # Power Source FeatureMap bits (WIRED, BAT)


def power_from(sources: list[dict[str, Any]]) -> tuple[str | None, int | None]:
    """(power_source, battery_percent) from the node's Power Source clusters (node_info's "power": one dict per
    endpoint). No cluster: (None, None), never guessed. A wired source wins (a device on mains does not die
    mid-flash even with a backup battery); otherwise a battery source gives "battery" and the lowest charge
    (BatPercentRemaining is in half-percent and nullable: null means unknown, not empty)."""
    features = [int(s["FeatureMap"]) for s in sources if isinstance(s.get("FeatureMap"), int)]
    if any(f & POWER_FEATURE_WIRED for f in features):
        return "mains", None
    batteries = [s for s in sources if int(s.get("FeatureMap") or 0) & POWER_FEATURE_BATTERY]
    if not batteries:
        return None, None
    halves = [
        s["BatPercentRemaining"]
        for s in batteries
        if isinstance(s.get("BatPercentRemaining"), int) and not isinstance(s["BatPercentRemaining"], bool)
    ]
    return "battery", (min(200, min(halves)) // 2 if halves else None)


class MatterAdapter:
    """See the module docstring."""

    def __init__(
        self,
        config: MatterConfig,
        core: UpdateCoreInterface,
        clock: Clock,
        data_dir: str | os.PathLike[str],
        *,
        netns: str | None = None,
        control_socket: bool = True,
        busy_retry_s: int = 120,
    ) -> None:
        self.cfg = config
        self.busy_retry_s = busy_retry_s
        self.core = core
        self.clock = clock
        self.dir = matter_dir(data_dir)
        self.netns = netns
        self.control_socket = control_socket
        self.admin: FabricAdmin | None = None
        self.provider: MatterOtaProvider | None = None
        self.node: ProviderNode | None = None
        self.fabric: ProviderFabric | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.AbstractServer | None = None
        self._adopted: set[int] = set()
        self._retry_at: dict[int, float] = {}
        self._announced: dict[str, tuple[str | None, float]] = {}
        self._versions: dict[int, tuple[int | None, str | None]] = {}
        self._states: dict[int, int] = {}
        self._verify_at: dict[int, tuple[float, int]] = {}
        self._battery_nodes: set[int] = set()  # nodes whose Power Source says battery (charge re-read)
        self._power_read_at: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()  # nothing half-started stays behind (worker, lock, sockets)
            raise

    async def _start(self) -> None:
        for reason in (ipv6_unavailable_reason(), runner_unavailable_reason()):
            if reason:
                raise AdapterStartError(f"matter: {reason}")
        self.admin = FabricAdmin(self.dir, self.cfg, netns=self.netns)
        try:
            info = await self.admin.start()
            creds = await self.admin.ensure_identity()
        except ControllerError as exc:
            raise AdapterStartError(f"matter: fabric admin: {exc}") from None
        except Exception as exc:  # credentials problems (modes, mismatch) are user-fixable: say which
            raise AdapterStartError(f"matter: provider identity: {exc}") from None
        self.fabric = ProviderFabric.from_credentials(creds)
        self.provider = MatterOtaProvider(
            self.core,
            [self.fabric],
            clock=self.clock,
            config=self.cfg,
            verify=self._verify,
            busy_retry_s=self.busy_retry_s,
        )
        acl = AccessControl.default([creds.fabric_index], {creds.fabric_index: [self.cfg.controller_node_id]})
        registry, _ = build_provider_node(
            BasicInfo(
                vendor_id=self.cfg.vendor_id,
                product_name="otagw OTA provider",
                unique_id=f"otagw-{creds.node_id:016X}",
            ),
            delegate=self.provider,
            acl=acl,
        )
        self.node = ProviderNode(
            [creds],
            im_factory=IMServer(registry, now=self.clock.monotonic),
            bdx_factory=self.provider.bdx_factory,
            port=self.cfg.port,
            interfaces=self.cfg.interfaces or None,
            clock=self.clock,
        )
        try:
            await self.node.start()
        except OSError as exc:
            raise AdapterStartError(
                f"matter: cannot open UDP port {self.cfg.port}: {exc.strerror or exc}"
            ) from None
        if self.control_socket:
            await self._start_control()
        self._tasks = [asyncio.create_task(self._admin_loop(), name="matter-admin")]
        log.info(
            "matter adapter: provider node 0x%016X on fabric 0x%016X (cfid %016x), %d node(s) known",
            creds.node_id,
            creds.fabric_id,
            int(info["compressed_fabric_id"]),
            len(self.admin.nodes),
        )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "admin.sock").unlink()
        if self.node is not None:
            await self.node.stop()
            self.node = None
        if self.provider is not None:
            await self.provider.close()
        if self.admin is not None:
            await self.admin.close()
            self.admin = None

    # ------------------------------------------------------------------------------------------ nodes
    def key(self, node_id: int) -> DeviceKey:
        assert self.fabric is not None
        return matter_device_key(self.fabric.compressed_fabric_id, node_id)

    async def commission(
        self,
        code: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        node_id: int | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Commission a device onto our fabric and adopt it (observe, provider, subscription)."""
        assert self.admin is not None
        entry = await self.admin.commission(code, ip=ip, port=port, node_id=node_id, timeout_s=timeout_s)
        await self.adopt(entry.node_id)
        return asdict(self.admin.nodes[entry.node_id])

    async def adopt(self, node_id: int) -> None:
        """Read the node, feed the core, point it at our provider, subscribe to its OTA state."""
        assert self.admin is not None
        info = await self.admin.node_info(node_id)
        b = info.get("basic", {})
        await self.core.observe(self._device_info(node_id, info))
        self._versions[node_id] = (b.get("SoftwareVersion"), b.get("SoftwareVersionString"))
        if info.get("has_requestor"):
            await self.admin.set_provider(node_id)
            await self.admin.subscribe(node_id, min_s=0, max_s=SUBSCRIBE_MAX_S)
        self._adopted.add(node_id)
        self._retry_at.pop(node_id, None)

    def _device_info(self, node_id: int, info: dict[str, Any]) -> DeviceInfo:
        """The core's DeviceInfo from one node_info read (BasicInformation + Power Source)."""
        b = info.get("basic", {})
        power_source, battery = power_from(info.get("power", []))
        self._power_read_at[node_id] = self.clock.monotonic()
        if power_source == "battery":
            self._battery_nodes.add(node_id)
        else:
            self._battery_nodes.discard(node_id)
        return DeviceInfo(
            self.key(node_id),
            vendor_id=b.get("VendorID"),
            product_id=b.get("ProductID"),
            vendor_name=b.get("VendorName"),
            model=b.get("ProductName"),
            hardware_version=b.get("HardwareVersion"),
            current_version=b.get("SoftwareVersion"),
            current_version_string=b.get("SoftwareVersionString"),
            sleepy=False,
            power_source=power_source,
            battery_percent=battery,
            # NodeLabel: the name the owner gave the node in its commissioner (shown by the dashboard)
            extra={
                k: b[a]
                for a, k in (("SerialNumber", "serial_number"), ("NodeLabel", "node_label"))
                if b.get(a)
            },
        )

    async def refresh_power(self, node_id: int) -> None:
        """Read the node again and give the core its current battery charge (a deferred low-battery device is
        offered its update once the charge is back above the policy's minimum)."""
        assert self.admin is not None
        info = await self.admin.node_info(node_id, timeout_ms=VERIFY_TIMEOUT_MS)
        await self.core.observe(self._device_info(node_id, info))

    async def _refresh_batteries(self, now: float) -> None:
        """Battery nodes whose charge was read more than POWER_REFRESH_S ago: read it again (bounded cadence:
        a read wakes a sleepy device)."""
        for nid in sorted(self._battery_nodes & self._adopted):
            if now - self._power_read_at.get(nid, 0.0) < POWER_REFRESH_S:
                continue
            try:
                await self.refresh_power(nid)
            except ControllerError as exc:
                self._power_read_at[nid] = now  # unreachable: try again at the next interval, not every loop
                log.info("matter adapter: node 0x%016X battery not readable (%s)", nid, exc)

    async def query_now(self, node_id: int) -> None:
        """Make one node query now (`otagw matter announce`, the API's notify): AnnounceOTAProvider with
        UrgentUpdateAvailable, whatever the plan says (the device's QueryImage then gets the policy's answer)."""
        assert self.admin is not None
        if node_id not in self.admin.nodes:
            raise LookupError(f"node 0x{node_id:016X} is not commissioned on the gateway's fabric")
        await self.announce(node_id, reason=ANNOUNCE_URGENT)
        mark = getattr(self.core, "mark_notified", None)
        if mark is not None:
            await mark(self.key(node_id), "AnnounceOTAProvider (query now) sent")

    async def notify_device(self, device_id: str) -> str:
        """The gateway's protocol-neutral "query now" for one device record of ours; returns what was sent."""
        assert self.admin is not None
        for nid in self.admin.nodes:
            if self.key(nid).device_id == device_id:
                await self.query_now(nid)
                return "AnnounceOTAProvider"
        raise LookupError(f"device {device_id!r} is not a node on the gateway's fabric")

    async def announce(self, node_id: int, reason: int = 1) -> None:
        assert self.admin is not None
        await self.admin.announce(node_id, reason=reason)
        log.info("matter adapter: AnnounceOTAProvider sent to node 0x%016X", node_id)

    async def _verify(
        self, key: DeviceKey, timeout_ms: int | None = VERIFY_TIMEOUT_MS, *, after_reboot: bool = False
    ) -> None:
        """Read SoftwareVersion back (after NotifyUpdateApplied / VersionApplied / an apply): the core's proof.
        `after_reboot`: on a new CASE session (the old one died with the device's process)."""
        assert self.admin is not None
        node_id = int(key.address, 16)
        if after_reboot:
            info = await self.admin.node_info(node_id, timeout_ms=timeout_ms, fresh_session=True)
        else:
            info = await self.admin.node_info(node_id, timeout_ms=timeout_ms)
        b = info.get("basic", {})
        if b.get("SoftwareVersion") is not None:
            await self.core.report_version(key, int(b["SoftwareVersion"]), b.get("SoftwareVersionString"))

    # ------------------------------------------------------------------------------------------ admin loop
    async def _admin_loop(self) -> None:
        assert self.admin is not None
        next_announce = 0.0
        while True:
            try:
                now = self.clock.monotonic()
                for nid in list(self.admin.nodes):
                    if nid not in self._adopted and now >= self._retry_at.get(nid, 0.0):
                        try:
                            await self.adopt(nid)
                        except ControllerError as exc:
                            self._retry_at[nid] = now + RETRY_S
                            log.info(
                                "matter adapter: node 0x%016X not reachable (%s); retry in %.0f s",
                                nid,
                                exc,
                                RETRY_S,
                            )
                for ev in await self.admin.poll_events():
                    await self._on_report(ev)
                await self._verify_installs(now)
                if self.cfg.announce and now >= next_announce:
                    next_announce = now + self.cfg.announce_check_s
                    await self._announce_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("matter adapter: admin loop iteration failed")
            await self.clock.sleep(POLL_S)

    async def _verify_installs(self, now: float) -> None:
        """Nodes told to install: read SoftwareVersion back (backing off) until the core settles the episode.
        Subscriptions notice a rebooted node only after their liveness timeout, and NotifyUpdateApplied is
        optional, so this read is what verifies an update in time."""
        wall = self.clock.now()
        due: list[tuple[int, int]] = []
        for nid in list(self._adopted):
            rec = self.core.get_device(self.key(nid).device_id)
            if (
                rec is None
                or rec.state not in ("applying", "verifying")
                or (rec.apply_at is not None and wall < rec.apply_at)
            ):
                self._verify_at.pop(nid, None)
                continue
            at, attempt = self._verify_at.setdefault(nid, (now + VERIFY_BACKOFF_S[0], 0))
            if now >= at:
                due.append((nid, attempt))
        if not due:
            return
        # in parallel, bounded: a fleet rebooting together is verified within seconds, not one timeout apart
        limit = asyncio.Semaphore(VERIFY_PARALLEL)

        async def read_back(nid: int, attempt: int) -> None:
            async with limit:
                try:
                    await self._verify(self.key(nid), timeout_ms=VERIFY_TIMEOUT_MS, after_reboot=True)
                except ControllerError as exc:
                    log.info("matter adapter: node 0x%016X not readable yet (%s)", nid, exc)
            attempt += 1
            self._verify_at[nid] = (now + VERIFY_BACKOFF_S[min(attempt, len(VERIFY_BACKOFF_S) - 1)], attempt)

        await asyncio.gather(*(read_back(nid, attempt) for nid, attempt in due))

    async def _announce_due(self) -> None:
        assert self.fabric is not None
        await self._refresh_batteries(self.clock.monotonic())
        mine = {self.key(n).device_id: n for n in self._adopted}
        due: dict[str, str | None] = {}
        for key in self.core.devices_to_notify():
            if key.device_id in mine:
                due[key.device_id] = "rollout"
        for item in self.core.plan():
            if item.device_id in mine and item.outcome == "update":
                due.setdefault(item.device_id, item.image_id)
        now = self.clock.monotonic()
        for dev, image in due.items():
            last = self._announced.get(dev)
            if last is not None and last[0] == image and now - last[1] < ANNOUNCE_REPEAT_S:
                continue
            try:
                await self.announce(mine[dev])
            except ControllerError as exc:
                log.info("matter adapter: announce to %s failed: %s", dev, exc)
                continue
            self._announced[dev] = (image, now)
            await self.core.mark_notified(self.key(mine[dev]), "AnnounceOTAProvider sent")

    async def _on_report(self, ev: dict[str, Any]) -> None:
        node_id = int(ev["node_id"])
        key = self.key(node_id)
        kind = ev.get("kind")
        if kind == "attribute":
            name, value = ev.get("attribute"), ev.get("value")
            if name in ("SoftwareVersion", "SoftwareVersionString"):
                version, vstr = self._versions.get(node_id, (None, None))
                if name == "SoftwareVersion" and isinstance(value, int):
                    version = value
                elif name == "SoftwareVersionString" and isinstance(value, str):
                    vstr = value
                if (version, vstr) != self._versions.get(node_id) and version is not None:
                    self._versions[node_id] = (version, vstr)
                    await self.core.report_version(key, version, vstr)
            elif name == "UpdateState" and isinstance(value, int):
                self._states[node_id] = value
                if value == _DOWNLOADING:
                    await self.core.status_report(key, StatusReport(ReportedStatus.DOWNLOADING))
                elif value == _APPLYING:
                    await self.core.status_report(key, StatusReport(ReportedStatus.UPDATING))
            elif (
                name == "UpdateStateProgress"
                and isinstance(value, int)
                and self._states.get(node_id) == _DOWNLOADING
            ):
                await self.core.status_report(key, StatusReport(ReportedStatus.DOWNLOADING, percent=value))
        elif kind == "event":
            data = ev.get("data") or {}
            name = ev.get("event")
            if name == "VersionApplied":
                log.info(
                    "matter adapter: node 0x%016X reports version %s applied",
                    node_id,
                    data.get("softwareVersion"),
                )
                await self.core.status_report(key, StatusReport(ReportedStatus.SUCCESSFULLY_UPDATED, 100))
                with contextlib.suppress(ControllerError):
                    await self._verify(key)
            elif name == "DownloadError":
                why = (
                    f"download error at {data.get('bytesDownloaded')} bytes"
                    f" ({data.get('progressPercent')}%, platform code {data.get('platformCode')})"
                )
                log.info("matter adapter: node 0x%016X %s", node_id, why)
                await self._requestor_failed(key, why)
            elif name == "StateTransition":
                prev, new, reason = data.get("previousState"), data.get("newState"), data.get("reason")
                if new == _ROLLING_BACK or (
                    new == _IDLE and reason in (_FAILURE, _TIMEOUT) and prev not in (None, _IDLE)
                ):
                    await self._requestor_failed(
                        key,
                        f"requestor went {_named(_STATE_NAMES, prev)} -> {_named(_STATE_NAMES, new)}"
                        f" ({_named(_REASON_NAMES, reason)})",
                    )
        elif kind == "error":
            log.info(
                "matter adapter: subscription to node 0x%016X: error %s (the SDK resubscribes)",
                node_id,
                ev.get("error"),
            )

    async def _requestor_failed(self, key: DeviceKey, why: str) -> None:
        """A failure the requestor reports ends the episode (FAILED with the reason; the policy's back-off then
        decides the retry). Once per episode: DownloadError and the StateTransition that follows name one failure,
        and the first (the more precise) keeps its words."""
        get = getattr(self.core, "get_device", None)
        rec = get(key.device_id) if get is not None else None
        if rec is not None and rec.state.value not in _IN_FLIGHT:
            return
        await self.core.status_report(key, StatusReport(ReportedStatus.FAILED_TO_UPDATE, error=why))

    # ------------------------------------------------------------------------------------------ control socket
    async def _start_control(self) -> None:
        path = self.dir / "admin.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            req = json.loads(line or b"{}")
            op = req.get("op")
            if op == "commission":
                result: Any = await self.commission(
                    str(req["code"]),
                    ip=req.get("ip"),
                    port=req.get("port"),
                    node_id=req.get("node_id"),
                    timeout_s=float(req.get("timeout_s", 60)),
                )
            elif op == "announce":
                await self.query_now(int(req["node_id"]))
                result = True
            elif op == "refresh":
                assert self.admin is not None
                for nid in list(self.admin.nodes):
                    with contextlib.suppress(ControllerError):
                        await self.admin.node_info(nid)
                result = True
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": True, "result": result}
        except Exception as exc:
            reply = {"ok": False, "error": str(exc) or type(exc).__name__}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()


def control_socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return matter_dir(data_dir) / "admin.sock"

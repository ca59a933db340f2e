"""The OTA Provider cluster's logic (0x0029): QueryImage / ApplyUpdateRequest / NotifyUpdateApplied on the core,
the BDX designator <-> UpdateToken mapping, and BDX progress fed back into the core (sans-I/O apart from awaits).

`MatterOtaProvider(core, fabrics, clock=..., config=MatterConfig)` is the `OtaProviderDelegate` M3's cluster
shell calls (`adapters.matter.interaction.clusters`) and, through `bdx_factory`, the handler factory of the node's
BDX protocol (one `BdxSender` per exchange, wrapped so its block progress reaches `core.progress`).

QueryImage
  - The requestor is identified by its CASE session (fabric index + node id), never by command fields:
    DeviceKey("matter", "fabric:<compressed fabric id, 16 hex>", "<node id, 16 HEX>", 0) (`matter_device_key`).
  - ProtocolsSupported without BDX synchronous (0) -> DownloadProtocolNotSupported (the device is still observed).
  - Otherwise `core.query(DeviceInfo(vid, pid, version, hardware version, extra: location, consent...))`:
    Available -> UpdateAvailable with ImageURI `bdx://<our node id, 16 HEX>/<designator>`, the image header's
    SoftwareVersion(+String), the core's UpdateToken, DelayedActionTime, UserConsentNeeded (only when the requestor
    can consent), MetadataForRequestor; Busy -> Busy + DelayedActionTime; NotAvailable -> NotAvailable.
  - VID/PID and applicable-version range are re-checked against the offered image whatever the core said (an
    offer failing them is withdrawn through `core.download_failed` and answered NotAvailable).
ApplyUpdateRequest -> `core.apply_request` -> Proceed / AwaitNextAction / Discontinue + DelayedActionTime. An unknown
  or ended token gets Discontinue (as the core and matter.js's provider do), never an error status.
NotifyUpdateApplied -> `core.update_applied(key, UpdateToken)` (refused unless the token is the requestor's current
  offer; then nothing else happens) = status SUCCESSFULLY_UPDATED, then verification: the injected `verify(key)`
  reads SoftwareVersion back (fabric admin); without one the notified version is reported. Never required: the
  core verifies devices that stay silent through the admin's reads/subscriptions.
BDX: a designator is derived (hashed) from the UpdateToken and resolves only for the requestor the token was
  issued to (same fabric + node id), to the core's shared `ImageReader` for that token; after a gateway restart
  a requestor resuming with its old designator is re-attached through the core's persisted token; a block counts as
  progress when the requestor acknowledges it (the next query/ack), so `core.progress` sees acknowledged offsets.
  An UnknownToken from the core aborts the transfer; a core `Wait` paces it (short waits) or aborts it (long).
  A BDX failure (timeout, requestor abort) is not an update failure: the token stays live, the requestor's
  next QueryImage gets the same token back and downloads again (the core's stale-transfer timer is the deadline).
Test mode (`matter.test_mode`, `matter.test_mode_devices`): the reference provider's knobs (reference 002).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.matter.bdx.messages import BdxStatus
from adapters.matter.bdx.sender import BdxSender, ImageReaderLike, Outgoing, TransferSlots
from adapters.matter.interaction.clusters import (
    ApplyUpdateAction,
    ApplyUpdateRequest,
    ApplyUpdateResponse,
    DownloadProtocol,
    NotifyUpdateApplied,
    OtaStatus,
    QueryImage,
    QueryImageResponse,
)
from adapters.matter.interaction.messages import Status
from adapters.matter.interaction.registry import InvokeContext, StatusError
from gateway.clock import Clock
from gateway.config import MatterConfig, MatterTestMode
from gateway.core.interface import (
    ApplyAction,
    Available,
    Busy,
    DeviceInfo,
    DeviceKey,
    NotAvailable,
    UnknownToken,
    UpdateCoreInterface,
    Wait,
)
from gateway.store.model import CatalogEntry

__all__ = [
    "IGNORE_HOLD_S",
    "MAX_PACING_WAIT_S",
    "MatterOtaProvider",
    "ProviderFabric",
    "Transfer",
    "fabric_network",
    "matter_device_key",
]

log = logging.getLogger(__name__)

MAX_PACING_WAIT_S = 10.0  # a core Wait up to this long delays the next block; longer ones end the transfer
IGNORE_HOLD_S = (
    120.0  # test mode "ignore": the command is held unanswered this long, then dropped with FAILURE
)
MAX_STRING = 64  # SoftwareVersionString: 1..64 bytes


def fabric_network(compressed_fabric_id: int) -> str:
    """DeviceKey.network of a Matter fabric."""
    return f"fabric:{compressed_fabric_id:016x}"


def designator_for(token: bytes) -> str:
    """The BDX file designator of a transfer, derived from its UpdateToken (which the core persists), so a
    restarted gateway recognises a requestor resuming with the designator it was given before the restart.
    A hash, so the designator does not reveal the token."""
    return "otagw-" + hashlib.sha256(b"otagw-bdx-designator\0" + bytes(token)).hexdigest()[:24]


def matter_device_key(compressed_fabric_id: int, node_id: int) -> DeviceKey:
    """The core's key for a Matter node (endpoint 0: the requestor lives on the root endpoint)."""
    return DeviceKey("matter", fabric_network(compressed_fabric_id), f"{node_id:016X}", 0)


@dataclass(frozen=True, slots=True)
class ProviderFabric:
    """One fabric our provider node is on: its index in our fabric table, our node id there, its CFID."""

    fabric_index: int
    node_id: int
    compressed_fabric_id: int

    @classmethod
    def from_credentials(cls, creds: Any) -> ProviderFabric:
        """From M2's OperationalCredentials."""
        return cls(int(creds.fabric_index), int(creds.node_id), int(creds.compressed_fabric_id_int))


@dataclass
class Transfer:
    """One offered image, keyed by UpdateToken (one live token per requestor)."""

    token: bytes
    designator: str
    key: DeviceKey
    fabric_index: int
    peer_node_id: int
    image: CatalogEntry
    exchanges: int = 0  # BDX exchanges opened for it (a restart opens another)
    bytes_acked: int = 0
    completed: bool = False
    last_error: str | None = None
    interrupt: str | None = None  # set by interrupt(): the next BDX message of this transfer gets an abort


@dataclass
class _TestState:
    """Per requestor, per command ("QueryImage", "ApplyUpdateRequest"): commands seen and commands held back."""

    seen: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    acked: list[tuple[int, int]] = field(default_factory=list)
    complete: bool = False
    failure: tuple[BdxStatus, str] | None = None


class MatterOtaProvider:
    """See the module docstring. Implements `clusters.OtaProviderDelegate`; `bdx_factory` serves BDX."""

    def __init__(
        self,
        core: UpdateCoreInterface,
        fabrics: Iterable[ProviderFabric],
        *,
        clock: Clock,
        config: MatterConfig | None = None,
        verify: Callable[[DeviceKey], Awaitable[None]] | None = None,
        ignore_hold_s: float = IGNORE_HOLD_S,
        busy_retry_s: int = 120,
    ) -> None:
        self.core = core
        self.busy_retry_s = (
            busy_retry_s  # policy.busy_retry_s, handed over by the plugin (not read from the core)
        )
        self.clock = clock
        self.config = config or MatterConfig()
        self.fabrics: dict[int, ProviderFabric] = {f.fabric_index: f for f in fabrics}
        self.verify = verify
        self.ignore_hold_s = ignore_hold_s
        self.slots = TransferSlots(self.config.max_transfers)
        self.transfers: dict[bytes, Transfer] = {}  # token -> transfer
        self._by_designator: dict[str, Transfer] = {}
        self._by_device: dict[str, bytes] = {}  # device id -> its live token
        self._test: dict[str, _TestState] = {}
        self._held: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------------------------------ identity
    def add_fabric(self, fabric: ProviderFabric) -> None:
        self.fabrics[fabric.fabric_index] = fabric

    def _requestor(self, ctx: InvokeContext | Any) -> tuple[ProviderFabric, int]:
        """(our fabric entry, requestor node id) from the authenticated session; StatusError if not CASE."""
        session = getattr(ctx, "session", ctx)
        fi = getattr(session, "fabric_index", None)
        node = getattr(session, "peer_node_id", None)
        if fi is None and hasattr(ctx, "subject") and ctx.subject is not None:
            fi, node = ctx.subject.fabric_index, ctx.subject.subject
        fab = self.fabrics.get(int(fi)) if fi is not None else None
        if fab is None or node is None:
            raise StatusError("requestor is not on one of our fabrics", status=Status.UNSUPPORTED_ACCESS)
        return fab, int(node)

    def key_for(self, fabric_index: int, node_id: int) -> DeviceKey:
        return matter_device_key(self.fabrics[fabric_index].compressed_fabric_id, node_id)

    # ------------------------------------------------------------------------------------------ test mode
    def _knobs(self, node_id: int) -> MatterTestMode | None:
        return self.config.test_mode_for(node_id)

    def _tstate(self, key: DeviceKey) -> _TestState:
        return self._test.setdefault(key.device_id, _TestState())

    async def _hold(self, what: str) -> None:
        """Leave a command unanswered (test mode ignore): the requestor times out as with a lost response."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.add(fut)
        sleeper = asyncio.ensure_future(self.clock.sleep(self.ignore_hold_s))
        try:
            await asyncio.wait({fut, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            self._held.discard(fut)
        raise StatusError(f"test mode: {what} ignored", status=Status.FAILURE)

    @property
    def held_commands(self) -> int:
        return len(self._held)

    async def _test_mode_gate(
        self, key: DeviceKey, node_id: int, command: str, ignore_limit: str
    ) -> tuple[Any, bool]:
        """Provider test mode (reference 002) for one QueryImage / ApplyUpdateRequest: hold the first N of them
        unanswered (the knob named `ignore_limit`), count the command, and say whether its response is shaped by
        the knobs (every response, or only the first with `first_only`). Returns (knobs or None, shaped)."""
        knobs = self._knobs(node_id)
        ts = self._tstate(key)
        if knobs is not None and ts.ignored.get(command, 0) < getattr(knobs, ignore_limit):
            ts.ignored[command] = ts.ignored.get(command, 0) + 1
            log.info(
                "matter provider: test mode ignores %s %d/%d from %s",
                command,
                ts.ignored[command],
                getattr(knobs, ignore_limit),
                key.device_id,
            )
            await self._hold(command)
        first = ts.seen.get(command, 0) == 0
        ts.seen[command] = ts.seen.get(command, 0) + 1
        return knobs, knobs is not None and (first or not knobs.first_only)

    # ------------------------------------------------------------------------------------------ QueryImage
    async def query_image(self, ctx: InvokeContext, req: QueryImage) -> QueryImageResponse:
        fab, node_id = self._requestor(ctx)
        key = matter_device_key(fab.compressed_fabric_id, node_id)
        knobs, shaped = await self._test_mode_gate(key, node_id, "QueryImage", "ignore_query_image")

        extra: dict[str, object] = {
            "requestor_can_consent": req.requestor_can_consent,
            "protocols_supported": list(req.protocols_supported),
        }
        if req.location is not None:
            extra["location"] = req.location
        if req.metadata_for_provider is not None:
            extra["metadata_for_provider"] = req.metadata_for_provider.hex()
        device = DeviceInfo(
            key,
            vendor_id=req.vendor_id,
            product_id=req.product_id,
            hardware_version=req.hardware_version,
            current_version=req.software_version,
            sleepy=None,
            extra=extra,
        )

        if DownloadProtocol.BDX_SYNCHRONOUS not in req.protocols_supported:
            await self.core.observe(device)
            log.info(
                "matter provider: %s supports no BDX synchronous (protocols %s)",
                key.device_id,
                list(req.protocols_supported),
            )
            return QueryImageResponse(OtaStatus.DOWNLOAD_PROTOCOL_NOT_SUPPORTED)

        delay_knob = knobs.delayed_query_action_time_s if shaped and knobs is not None else None
        if shaped and knobs is not None:
            forced = self._forced_query(knobs)
            if forced is not None:
                await self.core.observe(device)
                status, why = forced
                log.info("matter provider: test mode answers %s to %s (%s)", status.name, key.device_id, why)
                if status == OtaStatus.BUSY:
                    return QueryImageResponse(
                        status,
                        delayed_action_time=delay_knob if delay_knob is not None else self.core_busy_retry(),
                    )
                return QueryImageResponse(status)

        result = await self.core.query(device)
        if isinstance(result, Busy):
            return QueryImageResponse(
                OtaStatus.BUSY,
                delayed_action_time=_u32(delay_knob if delay_knob is not None else result.retry_after_s),
            )
        if isinstance(result, NotAvailable):
            log.info("matter provider: nothing for %s: %s", key.device_id, result.reason)
            return QueryImageResponse(OtaStatus.NOT_AVAILABLE)
        assert isinstance(result, Available)
        problem = _applicability(result.image, req)
        if problem:
            log.warning(
                "matter provider: core offered %s to %s but %s; withdrawn",
                result.image.image_id,
                key.device_id,
                problem,
            )
            await self.core.download_failed(result.token, f"provider check: {problem}")
            return QueryImageResponse(OtaStatus.NOT_AVAILABLE)
        transfer = self._register(result.token, key, fab, node_id, result.image)
        consent = bool(
            req.requestor_can_consent
            and (result.consent_needed or (shaped and knobs is not None and knobs.user_consent_needed))
        )
        delay = delay_knob if delay_knob is not None else result.delay_s
        log.info(
            "matter provider: offering %s (%s) to %s as %s",
            result.image.version_string,
            result.image.numeric_version,
            key.device_id,
            transfer.designator,
        )
        return QueryImageResponse(
            OtaStatus.UPDATE_AVAILABLE,
            delayed_action_time=_u32(delay),
            image_uri=f"bdx://{fab.node_id:016X}/{transfer.designator}",
            software_version=result.image.numeric_version,
            software_version_string=_version_string(result.image),
            update_token=result.token,
            user_consent_needed=True if consent else None,
            metadata_for_requestor=result.metadata,
        )

    def core_busy_retry(self) -> int:
        return self.busy_retry_s

    @staticmethod
    def _forced_query(knobs: MatterTestMode) -> tuple[OtaStatus, str] | None:
        if knobs.query_status == "busy":
            return OtaStatus.BUSY, "query_status busy"
        if knobs.query_status == "not_available":
            return OtaStatus.NOT_AVAILABLE, "query_status not_available"
        if knobs.query_status == "update_available":
            return None  # the normal path (the core still decides which image)
        if knobs.user_consent_state == "denied":
            return OtaStatus.NOT_AVAILABLE, "user consent denied"
        if knobs.user_consent_state == "deferred":
            return OtaStatus.BUSY, "user consent deferred"
        return None

    def _register(
        self, token: bytes, key: DeviceKey, fab: ProviderFabric, node_id: int, image: CatalogEntry
    ) -> Transfer:
        token = bytes(token)
        t = self.transfers.get(token)
        if t is not None and t.image.image_id == image.image_id and t.key == key:
            return t
        old = self._by_device.pop(key.device_id, None)
        if old is not None and old != token:
            gone = self.transfers.pop(old, None)
            if gone is not None:
                self._by_designator.pop(gone.designator, None)
        t = Transfer(token, designator_for(token), key, fab.fabric_index, node_id, image)
        self.transfers[token] = t
        self._by_designator[t.designator] = t
        self._by_device[key.device_id] = token
        return t

    # ------------------------------------------------------------------------------------------ apply / notify
    async def apply_update_request(self, ctx: InvokeContext, req: ApplyUpdateRequest) -> ApplyUpdateResponse:
        fab, node_id = self._requestor(ctx)
        key = matter_device_key(fab.compressed_fabric_id, node_id)
        knobs, shaped = await self._test_mode_gate(key, node_id, "ApplyUpdateRequest", "ignore_apply_update")
        extra_delay = knobs.delayed_apply_action_time_s if shaped and knobs is not None else None

        t = self.transfers.get(bytes(req.update_token))
        if t is not None and t.key != key:
            # a token is bound to the requestor it was issued to
            log.warning("matter provider: %s presented the token of %s", key.device_id, t.key.device_id)
            return ApplyUpdateResponse(ApplyUpdateAction.DISCONTINUE, self.core_busy_retry())
        if shaped and knobs is not None and knobs.apply_action in ("await_next_action", "discontinue"):
            action = (
                ApplyUpdateAction.AWAIT_NEXT_ACTION
                if knobs.apply_action == "await_next_action"
                else ApplyUpdateAction.DISCONTINUE
            )
            delay = extra_delay if extra_delay is not None else self.core_busy_retry()
            log.info("matter provider: test mode answers %s to %s", action.name, key.device_id)
            return ApplyUpdateResponse(action, _u32(delay))
        decision = await self.core.apply_request(bytes(req.update_token), req.new_version)
        delay = decision.delay_s if extra_delay is None else extra_delay
        log.info(
            "matter provider: apply %s for %s: %s (%s)",
            req.new_version,
            key.device_id,
            decision.action.name,
            decision.reason,
        )
        return ApplyUpdateResponse(_apply_action(decision.action), _u32(delay))

    async def notify_update_applied(self, ctx: InvokeContext, req: NotifyUpdateApplied) -> None:
        fab, node_id = self._requestor(ctx)
        key = matter_device_key(fab.compressed_fabric_id, node_id)
        log.info("matter provider: %s notifies version %d applied", key.device_id, req.software_version)
        try:
            # the core checks that the UpdateToken is this requestor's current offer before recording it
            await self.core.update_applied(key, req.update_token)
        except UnknownToken as exc:
            log.warning("matter provider: NotifyUpdateApplied of %s refused: %s", key.device_id, exc)
            return
        if self.verify is not None:
            # the device's word is not proof: read SoftwareVersion back (in the background: the requestor must
            # not wait for our read of it)
            self._spawn(self._verify(key, req.software_version))
        else:
            await self.core.report_version(key, req.software_version)

    async def _verify(self, key: DeviceKey, claimed: int) -> None:
        assert self.verify is not None
        try:
            await self.verify(key)
        except Exception as exc:  # the admin could not read it now; its subscription/refresh will
            log.info(
                "matter provider: version read-back of %s failed (%s); claimed %d",
                key.device_id,
                exc,
                claimed,
            )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------------ BDX
    def bdx_factory(self, session: Any) -> ProviderBdxExchange:
        """Handler factory for protocol 0x0002 (node.py / transport.exchange handler protocol)."""
        return ProviderBdxExchange(self, session)

    def resolve(self, designator: bytes, session: Any) -> tuple[Transfer, ImageReaderLike] | None:
        """Designator -> (transfer, reader) for this session's requestor only; None otherwise."""
        try:
            name = designator.decode("ascii")
        except UnicodeDecodeError:
            return None
        t = self._by_designator.get(name) or self._reattach(name, session)
        if t is None:
            return None
        if (
            getattr(session, "fabric_index", None) != t.fabric_index
            or getattr(session, "peer_node_id", None) != t.peer_node_id
        ):
            log.warning(
                "matter provider: designator of %s requested by node %s on fabric %s",
                t.key.device_id,
                getattr(session, "peer_node_id", None),
                getattr(session, "fabric_index", None),
            )
            return None
        try:
            reader = self.core.open_image(t.token)
        except UnknownToken as exc:
            log.info("matter provider: designator %s no longer live: %s", name, exc)
            return None
        return t, reader

    def _reattach(self, designator: str, session: Any) -> Transfer | None:
        """After a gateway restart the in-memory table is empty: a requestor resuming its download presents the
        designator it was given before. Accept it only if the core still has a live transfer for exactly this
        requestor whose token derives to that designator."""
        fab = self.fabrics.get(getattr(session, "fabric_index", -1))
        node_id = getattr(session, "peer_node_id", None)
        if fab is None or node_id is None:
            return None
        key = matter_device_key(fab.compressed_fabric_id, int(node_id))
        info = self.core.active_transfer(key)
        if info is None or designator_for(info.token) != designator:
            return None
        log.info("matter provider: %s resumes transfer %s after a restart", key.device_id, designator)
        return self._register(info.token, key, fab, int(node_id), info.image)

    def interrupt(self, token: bytes, reason: str = "interrupted by the gateway") -> bool:
        """End the transfer's BDX exchange(s) at their next message (operator action, shutdown, tests). The token
        stays live: the requestor's next QueryImage gets it back and downloads again."""
        t = self.transfers.get(bytes(token))
        if t is None or t.completed:
            return False
        t.interrupt = reason
        return True

    async def close(self) -> None:
        for fut in list(self._held):
            if not fut.done():
                fut.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ProviderBdxExchange:
    """One BDX exchange: M3's BdxSender plus the core bookkeeping (exchange handler protocol)."""

    def __init__(self, provider: MatterOtaProvider, session: Any) -> None:
        self.provider = provider
        self.session = session
        self.transfer: Transfer | None = None
        self._pending = _Pending()
        self._unacked: tuple[int, int] | None = None
        cfg = provider.config
        self.sender = BdxSender(
            self._resolve,
            now=provider.clock.monotonic,
            max_block_size=cfg.bdx_block_size,
            slots=provider.slots,
            on_progress=self._on_block,
            on_complete=self._on_complete,
            on_failed=self._on_failed,
        )

    # handler protocol
    @property
    def done(self) -> bool:
        return self.sender.done

    @property
    def deadline(self) -> float | None:
        return self.sender.deadline

    def poll(self) -> Awaitable[list[Outgoing]]:
        return self._settle(self.sender.poll())

    def receive(self, opcode: int, payload: bytes, protocol_id: int) -> Awaitable[list[Outgoing]]:
        return self._settle(self.sender.receive(opcode, payload, protocol_id))

    # sender callbacks (synchronous; the core is consulted in _settle)
    def _resolve(self, designator: bytes) -> ImageReaderLike | None:
        found = self.provider.resolve(designator, self.session)
        if found is None:
            return None
        self.transfer, reader = found
        self.transfer.exchanges += 1
        return reader

    def _on_block(self, offset: int, n: int) -> None:
        # a new block goes out because the previous one was acknowledged (query / ack for it)
        if self._unacked is not None:
            self._pending.acked.append(self._unacked)
        self._unacked = (offset, n)

    def _on_complete(self) -> None:
        if self._unacked is not None:
            self._pending.acked.append(self._unacked)
            self._unacked = None
        self._pending.complete = True

    def _on_failed(self, code: BdxStatus, reason: str) -> None:
        self._pending.failure = (code, reason)

    async def _settle(self, out: list[Outgoing]) -> list[Outgoing]:
        pending, self._pending = self._pending, _Pending()
        t = self.transfer
        if t is None:
            return out
        core = self.provider.core
        if t.interrupt is not None and not self.sender.done:
            reason, t.interrupt = t.interrupt, None
            t.last_error = reason
            log.info("matter provider: transfer %s interrupted: %s", t.designator, reason)
            return self.sender.abort(BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR, reason)
        for offset, n in pending.acked:
            try:
                decision = await core.progress(t.token, offset, n)
            except UnknownToken as exc:
                log.info("matter provider: transfer %s withdrawn by the core: %s", t.designator, exc)
                t.last_error = str(exc)
                return self.sender.abort(BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR, f"withdrawn: {exc}")
            t.bytes_acked = max(t.bytes_acked, offset + n)
            if isinstance(decision, Wait):
                if decision.retry_after_s > MAX_PACING_WAIT_S:
                    t.last_error = f"paused by the core: {decision.reason}"
                    log.info(
                        "matter provider: transfer %s paused (%s); ending it, the requestor will re-query",
                        t.designator,
                        decision.reason,
                    )
                    return self.sender.abort(BdxStatus.RESPONDER_BUSY, decision.reason)
                await self.provider.clock.sleep(decision.retry_after_s)
        if pending.complete:
            t.completed = True
            await core.download_complete(t.token)
            log.info(
                "matter provider: transfer %s complete (%d bytes, %d exchange(s))",
                t.designator,
                self.sender.end_offset,
                t.exchanges,
            )
        if pending.failure is not None:
            code, reason = pending.failure
            t.last_error = f"{code.name}: {reason}"
            log.info(
                "matter provider: BDX for %s ended: %s (token stays live for a retry)",
                t.key.device_id,
                t.last_error,
            )
        return out


# ---------------------------------------------------------------------------------------------- helpers


def _u32(v: float | int) -> int:
    return max(0, min(0xFFFF_FFFF, int(v)))


def _apply_action(a: ApplyAction) -> ApplyUpdateAction:
    return ApplyUpdateAction(int(a))


def _version_string(e: CatalogEntry) -> str:
    s = (e.version_string or str(e.numeric_version)).strip() or str(e.numeric_version)
    b = s.encode()[:MAX_STRING]
    return b.decode(errors="ignore") or str(e.numeric_version)


def _applicability(e: CatalogEntry, req: QueryImage) -> str | None:
    """Why `e` must not go to this requestor (VID/PID/applicable range), or None."""
    if e.protocol != "matter":
        return f"image {e.image_id} is a {e.protocol} image"
    if (e.vendor_id, e.product_id) != (req.vendor_id, req.product_id):
        return (
            f"image {e.image_id} is for {e.vendor_id:04X}:{e.product_id:04X}, requestor is "
            f"{req.vendor_id:04X}:{req.product_id:04X}"
        )
    if e.min_applicable is not None and req.software_version < e.min_applicable:
        return (
            f"requestor version {req.software_version} below MinApplicableSoftwareVersion {e.min_applicable}"
        )
    if e.max_applicable is not None and req.software_version > e.max_applicable:
        return (
            f"requestor version {req.software_version} above MaxApplicableSoftwareVersion {e.max_applicable}"
        )
    return None


def fabrics_from(creds: Iterable[Any] | Mapping[int, Any]) -> list[ProviderFabric]:
    """ProviderFabric entries for M2's OperationalCredentials."""
    values = creds.values() if isinstance(creds, Mapping) else creds
    return [ProviderFabric.from_credentials(c) for c in values]

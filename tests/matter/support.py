"""Test support (not production code): a bare BDX handler factory and a stand-in OTA provider delegate, for the
node, BDX and chip-interop tests and bench/bench_matter_node.py, which exercise the transport without the update
core. The gateway's own provider path is `adapters.matter.provider.MatterOtaProvider`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from adapters.matter.bdx.messages import BdxStatus, TransferControl
from adapters.matter.bdx.sender import (
    DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_TIMEOUT_S,
    BdxSender,
    ImageReaderLike,
    TransferSlots,
)
from adapters.matter.interaction.clusters import (
    ApplyUpdateAction,
    ApplyUpdateRequest,
    ApplyUpdateResponse,
    InvokeContext,
    NotifyUpdateApplied,
    OtaStatus,
    QueryImage,
    QueryImageResponse,
)

__all__ = ["BdxServer", "ProvisionalProvider", "TransferObserver"]


class TransferObserver(Protocol):
    """Per-transfer notifications for the provider (progress to the core, completion, failure)."""

    def progress(self, sender: BdxSender, offset: int, nbytes: int) -> None: ...

    def complete(self, sender: BdxSender) -> None: ...

    def failed(self, sender: BdxSender, code: BdxStatus, reason: str) -> None: ...


class BdxServer:
    """Handler factory for protocol 0x0002: `server(session_context) -> BdxSender`.

    `resolver(designator, session_context)` maps a file designator to an image reader for *that* peer (so an
    UpdateToken-derived designator only opens for the node it was issued to) or None. All senders share `slots`.
    """

    def __init__(
        self,
        resolver: Callable[[bytes, Any], ImageReaderLike | None],
        *,
        now: Callable[[], float],
        max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        modes: TransferControl = TransferControl.RECEIVER_DRIVE | TransferControl.SENDER_DRIVE,
        max_transfers: int = 64,
        observer: TransferObserver | None = None,
    ) -> None:
        self.resolver = resolver
        self.now = now
        self.max_block_size = max_block_size
        self.timeout_s = timeout_s
        self.modes = modes
        self.slots = TransferSlots(max_transfers)
        self.observer = observer

    def __call__(self, context: Any) -> BdxSender:
        obs = self.observer
        sender: BdxSender

        def progress(offset: int, n: int) -> None:
            if obs is not None:
                obs.progress(sender, offset, n)

        def complete() -> None:
            if obs is not None:
                obs.complete(sender)

        def failed(code: BdxStatus, reason: str) -> None:
            if obs is not None:
                obs.failed(sender, code, reason)

        sender = BdxSender(
            lambda d: self.resolver(d, context),
            now=self.now,
            max_block_size=self.max_block_size,
            timeout_s=self.timeout_s,
            modes=self.modes,
            slots=self.slots,
            on_progress=progress,
            on_complete=complete,
            on_failed=failed,
            context=context,
        )
        return sender


class ProvisionalProvider:
    """Stand-in delegate: no image is ever available (QueryImage -> NotAvailable), applies are discontinued."""

    def __init__(self, retry_after_s: int = 86_400) -> None:
        self.retry_after_s = retry_after_s
        self.queries: list[QueryImage] = []
        self.notifications: list[NotifyUpdateApplied] = []

    def query_image(self, ctx: InvokeContext, req: QueryImage) -> QueryImageResponse:
        self.queries.append(req)
        return QueryImageResponse(OtaStatus.NOT_AVAILABLE, delayed_action_time=self.retry_after_s)

    def apply_update_request(self, ctx: InvokeContext, req: ApplyUpdateRequest) -> ApplyUpdateResponse:
        return ApplyUpdateResponse(ApplyUpdateAction.DISCONTINUE, 0)

    def notify_update_applied(self, ctx: InvokeContext, req: NotifyUpdateApplied) -> None:
        self.notifications.append(req)

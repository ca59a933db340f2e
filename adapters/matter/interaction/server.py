"""The per-exchange Interaction Model server: request messages in, response messages out (sans-I/O, async).

`IMServer(registry, now=...)` is the handler factory the node registers for protocol 0x0001 (secure sessions
only); each exchange gets an `IMExchange` whose `async receive(opcode, payload, protocol_id)` returns the
messages to send (`Outgoing(protocol_id, opcode, payload)`):

  InvokeRequest       -> InvokeResponse (command data or status per command; none when SuppressResponse)
  TimedRequest        -> StatusResponse(SUCCESS), then the Invoke/Write must arrive within the timeout
                         (late: TIMEOUT; flag mismatch: TIMED_REQUEST_MISMATCH)
  ReadRequest         -> ReportData chunks no larger than `max_payload`, the next chunk sent only after the
                         peer's StatusResponse(SUCCESS); the last chunk carries SuppressResponse
  WriteRequest        -> WriteResponse (this node's attributes are read-only: UNSUPPORTED_WRITE, or the path /
                         access status)
  SubscribeRequest    -> StatusResponse(RESOURCE_EXHAUSTED) (subscriptions are not offered yet)
  malformed / unexpected -> StatusResponse(INVALID_ACTION)

Every read and invoke goes through the registry, which checks the ACL for the session's CASE subject.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

from adapters.matter.interaction.acl import SubjectDescriptor, subject_from_session
from adapters.matter.interaction.messages import (
    IM_PROTOCOL_ID,
    AttributeReport,
    AttributeStatus,
    IMDecodeError,
    InvokeRequest,
    InvokeResponse,
    Opcode,
    Outgoing,
    ReadRequest,
    ReportData,
    Status,
    StatusIB,
    StatusResponse,
    SubscribeRequest,
    TimedRequest,
    WriteRequest,
    WriteResponse,
    attribute_report_tlv,
    decode_message,
    outgoing,
)
from adapters.matter.interaction.registry import ReadContext, Registry
from gateway.formats.tlv import encode

__all__ = ["DEFAULT_MAX_PAYLOAD", "IMExchange", "IMServer", "chunk_reports"]

log = logging.getLogger(__name__)

# 1280 IPv6 MTU - 48 IP/UDP - message and protocol headers (<= 38) - 16 MIC, with a little margin
DEFAULT_MAX_PAYLOAD = 1150


def _status(code: Status) -> Outgoing:
    return outgoing(StatusResponse(code))


def chunk_reports(reports: list[AttributeReport], max_payload: int) -> list[ReportData]:
    """Split reports over ReportData messages each encoding to <= max_payload bytes (one report may exceed it
    alone; it then travels alone). The last chunk has SuppressResponse set, the others MoreChunkedMessages."""
    # fixed part: the message with one flag set (every chunk carries exactly one of MoreChunked / Suppress)
    overhead = (
        len(ReportData([], more_chunked=True).encode()) + 3
    )  # + AttributeReports array control, tag, end
    chunks: list[list[AttributeReport]] = [[]]
    size = overhead
    for r in reports:
        n = len(encode(attribute_report_tlv(r)))
        if chunks[-1] and size + n > max_payload:
            chunks.append([])
            size = overhead
        chunks[-1].append(r)
        size += n
    last = len(chunks) - 1
    return [ReportData(c, more_chunked=i < last, suppress_response=i == last) for i, c in enumerate(chunks)]


class _State(enum.Enum):
    IDLE = "idle"
    TIMED = "await-timed-action"
    CHUNKS = "await-chunk-status"
    DONE = "done"


class IMExchange:
    """One IM exchange with one peer (see module docstring)."""

    def __init__(self, server: IMServer, session: Any) -> None:
        self._server = server
        self._registry = server.registry
        self.session = session
        self.subject: SubjectDescriptor | None = subject_from_session(session)
        self._state = _State.IDLE
        self._timed_until = 0.0
        self._pending: list[ReportData] = []

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def deadline(self) -> float | None:
        return None  # the timed window is checked when the action arrives; idle exchanges are the node's job

    def poll(self) -> list[Outgoing]:
        return []

    async def receive(self, opcode: int, payload: bytes, protocol_id: int = IM_PROTOCOL_ID) -> list[Outgoing]:
        if self.done:
            return []
        if protocol_id != IM_PROTOCOL_ID:
            return self._finish([])
        try:
            msg = decode_message(opcode, payload)
        except IMDecodeError as exc:
            log.info("malformed IM message 0x%02x from %r: %s", opcode, self.subject, exc)
            if opcode == Opcode.STATUS_RESPONSE:
                return self._finish([])
            return self._finish([_status(Status.INVALID_ACTION)])

        if self._state is _State.CHUNKS:
            if isinstance(msg, StatusResponse) and msg.status == Status.SUCCESS:
                return self._next_chunk()
            return self._finish([] if isinstance(msg, StatusResponse) else [_status(Status.INVALID_ACTION)])

        if self._state is _State.TIMED:
            if not isinstance(msg, InvokeRequest | WriteRequest):
                return self._finish([_status(Status.INVALID_ACTION)])
            if self._server.now() > self._timed_until:
                return self._finish([_status(Status.TIMEOUT)])
            if not msg.timed_request:
                return self._finish([_status(Status.TIMED_REQUEST_MISMATCH)])
            if isinstance(msg, InvokeRequest):
                return await self._invoke(msg, timed=True)
            return self._write(msg)

        # IDLE: the first message of an exchange the peer opened
        if isinstance(msg, InvokeRequest):
            if msg.timed_request:
                return self._finish([_status(Status.TIMED_REQUEST_MISMATCH)])
            return await self._invoke(msg, timed=False)
        if isinstance(msg, ReadRequest):
            return self._read(msg)
        if isinstance(msg, TimedRequest):
            self._timed_until = self._server.now() + msg.timeout_ms / 1000.0
            self._state = _State.TIMED
            return [_status(Status.SUCCESS)]
        if isinstance(msg, WriteRequest):
            if msg.timed_request:
                return self._finish([_status(Status.TIMED_REQUEST_MISMATCH)])
            return self._write(msg)
        if isinstance(msg, SubscribeRequest):
            return self._finish([_status(Status.RESOURCE_EXHAUSTED)])
        if isinstance(msg, StatusResponse):
            return self._finish([])
        return self._finish([_status(Status.INVALID_ACTION)])

    # ------------------------------------------------------------------ actions

    def _finish(self, out: list[Outgoing]) -> list[Outgoing]:
        self._state = _State.DONE
        self._pending = []
        return out

    async def _invoke(self, req: InvokeRequest, *, timed: bool) -> list[Outgoing]:
        items = req.invoke_requests
        if not items or len(items) > self._server.max_paths_per_invoke:
            return self._finish([_status(Status.INVALID_ACTION)])
        if len(items) > 1:
            refs = [c.ref for c in items]
            paths = [c.path for c in items]
            if None in refs or len(set(refs)) != len(refs) or len(set(paths)) != len(paths):
                return self._finish([_status(Status.INVALID_ACTION)])
        if any(c.path.endpoint is None for c in items):  # wildcard invoke is only for groups
            return self._finish([_status(Status.INVALID_ACTION)])
        responses = []
        for c in items:
            r = await self._registry.invoke(self.subject, c, timed=timed, session=self.session)
            if r is not None:
                responses.append(r)
        if req.suppress_response:
            return self._finish([])
        return self._finish([outgoing(InvokeResponse(responses))])

    def _read(self, req: ReadRequest) -> list[Outgoing]:
        if not req.attribute_requests and not req.event_requests:
            return self._finish([_status(Status.INVALID_ACTION)])
        if any(p.has_list_index for p in req.attribute_requests):  # reads address whole attributes
            return self._finish([_status(Status.INVALID_ACTION)])
        ctx = ReadContext(self.subject, req.fabric_filtered, self.session)
        reports: list[AttributeReport] = []
        for path in req.attribute_requests:
            reports += self._registry.read(ctx, path, req.data_version_filters)
        self._pending = chunk_reports(reports, self._server.max_payload)
        return self._next_chunk()

    def _next_chunk(self) -> list[Outgoing]:
        chunk = self._pending.pop(0)
        if self._pending:
            self._state = _State.CHUNKS
            return [outgoing(chunk)]
        return self._finish([outgoing(chunk)])

    def _write(self, req: WriteRequest) -> list[Outgoing]:
        statuses = [
            AttributeStatus(w.path, StatusIB(self._registry.write_status(self.subject, w.path)))
            for w in req.write_requests
        ]
        return self._finish([] if req.suppress_response else [outgoing(WriteResponse(statuses))])


class IMServer:
    """Handler factory for protocol 0x0001: `server(session_context) -> IMExchange`."""

    def __init__(
        self,
        registry: Registry,
        *,
        now: Callable[[], float],
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_paths_per_invoke: int = 1,
    ) -> None:
        self.registry = registry
        self.now = now
        self.max_payload = max_payload
        self.max_paths_per_invoke = max_paths_per_invoke

    def __call__(self, session: Any) -> IMExchange:
        return IMExchange(self, session)

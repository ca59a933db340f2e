"""The live event stream: one hub fans the core's events out to every Server-Sent-Events client.

The hub runs one task that consumes `core.subscribe()`, turns each event into `(kind, JSON object)` and puts it
on every client's bounded queue. Progress events come per block (thousands a second on a busy gateway), so the
hub coalesces them: the latest progress per device is kept and flushed every `progress_interval` seconds
(0 = pass through, for tests). A client that falls `queue_size` events behind gets a final `overflow` event and
is disconnected; EventSource reconnects by itself and the dashboard re-reads the state on every (re)connect.

Wire format: `id: <seq>` and `data: <json object>` whose `kind` field names the event (no `event:` line, so one
`onmessage` handler sees every kind, including ones added later); `{"kind": "hello"}` first, `{"kind":
"overflow"}` before a forced disconnect, a comment line as keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from gateway.api.errors import ApiError

log = logging.getLogger(__name__)

EventSource = Callable[[], AsyncIterator[Any]]
Message = tuple[int, str, dict[str, Any]]
_CLOSE: Message = (-1, "", {})


def _plain(value: Any) -> Any:
    """JSON-ready copy of an event field (enums by value, bytes as hex, dataclasses as objects)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def describe(event: Any) -> tuple[str, dict[str, Any]]:
    """(kind, payload) of one core event, whatever its shape (dataclass, mapping, object with `kind`)."""
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        event = to_dict()
    if isinstance(event, dict):
        data = _plain(event)
        kind = str(data.get("kind") or data.get("type") or "event")
        return kind, data
    data = _plain(event) if dataclasses.is_dataclass(event) else _plain(dict(vars(event)))
    if not isinstance(data, dict):
        data = {"value": data}
    kind = getattr(event, "kind", None) or getattr(event, "type", None) or _snake(type(event).__name__)
    kind = _plain(kind)
    data.setdefault("kind", kind)
    return str(kind), data


def is_progress(kind: str) -> bool:
    return "progress" in kind


class TooManyClients(Exception):
    """The hub already serves `max_clients` streams."""


class Subscriber:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=size)
        self.overflowed = False


class EventHub:
    """Fans core events out to SSE clients (and to in-process listeners such as metrics)."""

    def __init__(
        self,
        source: EventSource,
        *,
        progress_interval: float = 0.25,
        queue_size: int = 2000,
        heartbeat_s: float = 15.0,
        max_clients: int | None = None,
    ) -> None:
        self._source = source
        self._progress_interval = progress_interval
        self._queue_size = queue_size
        self.heartbeat_s = heartbeat_s
        # each stream holds a queue of up to `queue_size` events and a connection: bound them (None = no cap)
        self.max_clients = max_clients
        self._subs: set[Subscriber] = set()
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def clients(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._pump(), name="otagw-sse-pump"))
        if self._progress_interval > 0:
            self._tasks.append(asyncio.create_task(self._flusher(), name="otagw-sse-flush"))

    async def close(self) -> None:
        """Stop consuming and end every open stream."""
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for sub in list(self._subs):
            self._force(sub, _CLOSE)

    def subscribe(self) -> Subscriber:
        """A new client's queue; raises TooManyClients at the cap (in-process listeners count too)."""
        if self.max_clients is not None and len(self._subs) >= self.max_clients:
            raise TooManyClients(f"{len(self._subs)} event streams open, the maximum (api.max_event_clients)")
        sub = Subscriber(self._queue_size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    # -------------------------------------------------------------------------------------------- internal
    async def _pump(self) -> None:
        try:
            async for event in self._source():
                try:
                    kind, data = describe(event)
                except Exception:  # a malformed event must not stop the stream
                    log.exception("cannot serialise core event %r", event)
                    continue
                if self._progress_interval > 0 and is_progress(kind):
                    key = str(data.get("device_id") or data.get("token") or "")
                    self._pending[key] = (kind, data)
                else:
                    self.publish(kind, data)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("core event subscription ended with an error; live updates stopped")

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self._progress_interval)
            self.flush()

    def flush(self) -> None:
        """Publish the coalesced progress events now."""
        pending, self._pending = self._pending, {}
        for kind, data in pending.values():
            self.publish(kind, data)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if self._closed:
            return
        self._seq += 1
        msg = (self._seq, kind, data)
        for sub in list(self._subs):
            if sub.overflowed:
                continue
            try:
                sub.queue.put_nowait(msg)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._force(
                    sub, (self._seq, "overflow", {"reason": "client too slow; reconnect and re-read"})
                )

    @staticmethod
    def _force(sub: Subscriber, msg: Message) -> None:
        """Put `msg` last even on a full queue (dropping the oldest)."""
        while True:
            try:
                sub.queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                sub.queue.get_nowait()


def encode(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    payload = {"kind": kind, **data} if data.get("kind") != kind else data
    return f"id: {seq}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def stream(request: web.Request, hub: EventHub, hello: dict[str, Any]) -> web.StreamResponse:
    """Serve one SSE client until it disconnects or the hub closes; 503 when the hub is at its client cap."""
    try:
        sub = hub.subscribe()
    except TooManyClients as exc:
        raise ApiError(
            503,
            "too_many_streams",
            f"too many event streams: {exc}; retry later or raise api.max_event_clients",
            headers={"Retry-After": "30"},
        ) from None
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n" + encode(hub.seq, "hello", hello))
        while True:
            try:
                seq, kind, data = await asyncio.wait_for(sub.queue.get(), timeout=hub.heartbeat_s)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if seq < 0:
                break
            await resp.write(encode(seq, kind, data))
            if kind == "overflow":
                break
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        hub.unsubscribe(sub)
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp

"""Core events: an in-process pub/sub of state changes, progress and rollout changes, plus metrics counters.

`EventBus.publish` never blocks and never fails the caller: synchronous listeners run inline (a listener that
raises is logged and kept), async subscribers each get a bounded queue and a slow subscriber loses its oldest
events (counted in `dropped`), so an HTTP client reading SSE slowly can never stall a firmware transfer.

Event kinds:
- "state": a device changed state (device_id, old, new, reason, image_id, version)
- "progress": transfer progress (device_id, offset, bytes_sent, percent) - at most one per device per second
- "decision": a query was answered (device_id, outcome available|not_available|busy, reason)
- "rollout": a rollout changed (rollout_id, event, status, wave, reason)
- "device": a device record appeared or left (device_id, reason)
- "attention": a device needs a person (device_id, reason, image_id, failure_kind): parked as failed after an
  update that did not take or too many failed attempts; `otagw devices retry` lifts it
- "image": a catalog image changed validity (image_id, new="invalid", reason) - e.g. its blob is corrupt
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CoreEvent:
    kind: str
    at: float
    device_id: str | None = None
    rollout_id: str | None = None
    old: str | None = None
    new: str | None = None
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "at": self.at}
        for k in ("device_id", "rollout_id", "old", "new"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.reason:
            out["reason"] = self.reason
        out.update(self.data)
        return out


Listener = Callable[[CoreEvent], None]


class _Subscriber:
    def __init__(self, maxlen: int) -> None:
        self.queue: deque[CoreEvent] = deque(maxlen=maxlen)
        self.wakeup = asyncio.Event()
        self.dropped = 0
        self.closed = False


class EventBus:
    """Fan-out of `CoreEvent`s to sync listeners and bounded async subscribers."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._listeners: list[Listener] = []
        self._subs: set[_Subscriber] = set()
        self.published = 0
        self.dropped = 0

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Call `fn(event)` inline for every event; returns a function that removes it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def publish(self, event: CoreEvent) -> None:
        self.published += 1
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:  # a broken listener must not break the update it is observing
                log.exception("core event listener %r failed", fn)
        for sub in self._subs:
            if len(sub.queue) == sub.queue.maxlen:
                sub.dropped += 1
                self.dropped += 1
            sub.queue.append(event)  # deque(maxlen) drops the oldest
            sub.wakeup.set()

    async def subscribe(self, queue_size: int | None = None) -> AsyncIterator[CoreEvent]:
        """Async iterator over events from now on; stop by breaking out / closing the generator."""
        sub = _Subscriber(queue_size or self.queue_size)
        self._subs.add(sub)
        try:
            while not sub.closed:
                while sub.queue:
                    yield sub.queue.popleft()
                sub.wakeup.clear()
                await sub.wakeup.wait()
        finally:
            self._subs.discard(sub)

    def close(self) -> None:
        """End every subscription (on shutdown)."""
        for sub in self._subs:
            sub.closed = True
            sub.wakeup.set()

    @property
    def subscribers(self) -> int:
        return len(self._subs)


@dataclass
class Counters:
    """Monotonic counters for /metrics (per protocol where it matters) and the live transfer gauge."""

    transfers_started: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    transfers_completed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    transfers_failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    updates_succeeded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    updates_failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    blocks_served: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # one per progress() call
    decisions: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by outcome
    transfers_active: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # gauge, set by core
    images_invalidated: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # corrupt blob found
    updates_not_back: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # not heard after apply
    devices_parked: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # offers stopped (attempts)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.__dict__.items()}

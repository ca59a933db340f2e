"""The live event stream: hello first, core state changes and transfer progress as they happen, and the hub's
coalescing and slow-client handling (unit tests over a scripted event source)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientResponse

from gateway.api.sse import EventHub
from gateway.core.events import CoreEvent
from gateway.core.interface import Available, DeviceInfo, DeviceKey
from tests.api.conftest import TOKEN, ApiHarness, zigbee_image

KEY = DeviceKey("zigbee", "pan:1a2b", "00:11:22:33:44:55:66:77", 1)


async def next_event(resp: ClientResponse) -> dict[str, Any]:
    """The next `data:` payload (bounded wait: the stream must deliver promptly)."""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), timeout=5)
        assert line, "stream ended"
        if line.startswith(b"data: "):
            return json.loads(line[6:])


async def until(resp: ClientResponse, kind: str) -> dict[str, Any]:
    for _ in range(50):
        ev = await next_event(resp)
        if ev["kind"] == kind:
            return ev
    raise AssertionError(f"no {kind} event")


async def test_stream_shows_state_changes_and_progress(harness: ApiHarness) -> None:
    h = harness
    await h.call(
        "POST",
        "/api/v1/images?file_name=fw.zigbee",
        201,
        data=zigbee_image(version=0x200),
        headers={"Content-Type": "application/octet-stream"},
    )
    resp = await h.client.get("/api/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    hello = await next_event(resp)
    assert hello["kind"] == "hello"

    info = DeviceInfo(KEY, vendor_id=0x1135, product_id=1, current_version=0x100)
    ans = await h.core.query(info)
    assert isinstance(ans, Available)
    state = await until(resp, "state")
    assert state["device_id"] == KEY.device_id and state["new"] == "querying"

    await h.core.progress(ans.token, 0, 64)
    prog = await until(resp, "progress")
    assert prog["device_id"] == KEY.device_id and prog["offset"] == 64
    await h.clock.advance(1.0)  # the core publishes progress at most once a second per device
    await h.core.progress(ans.token, 64, 1000)
    prog = await until(resp, "progress")
    assert prog["offset"] == 1064 and prog["percent"] == 1064 * 100 // ans.image.size
    resp.close()


async def test_query_token_works_and_bad_one_does_not(harness: ApiHarness) -> None:
    resp = await harness.client.get("/api/v1/events?token=nope")
    assert resp.status == 401
    resp = await harness.client.get(f"/api/v1/events?token={TOKEN}")
    assert (await next_event(resp))["kind"] == "hello"
    resp.close()


# ------------------------------------------------------------------------------------------ hub units
class Script:
    """An event source the test feeds by hand."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[CoreEvent] = asyncio.Queue()

    async def source(self) -> AsyncIterator[CoreEvent]:
        while True:
            yield await self.queue.get()

    async def emit(self, kind: str, device_id: str = "d1", **data: Any) -> None:
        await self.queue.put(CoreEvent(kind=kind, at=0.0, device_id=device_id, data=data))
        for _ in range(5):
            await asyncio.sleep(0)


async def test_hub_coalesces_progress_per_device() -> None:
    script = Script()
    hub = EventHub(script.source, progress_interval=3600)  # flush only when the test says so
    await hub.start()
    sub = hub.subscribe()
    for off in (1, 2, 3):
        await script.emit("progress", offset=off)
    await script.emit("progress", "d2", offset=9)
    await script.emit("state", new="downloading")
    assert [m[1] for m in drain(sub)] == ["state"]  # state passes at once, progress waits
    hub.flush()
    got = [(m[2]["device_id"], m[2]["offset"]) for m in drain(sub)]
    assert got == [("d1", 3), ("d2", 9)]
    await hub.close()


async def test_slow_client_gets_overflow_and_others_continue() -> None:
    script = Script()
    hub = EventHub(script.source, progress_interval=0, queue_size=3)
    await hub.start()
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(3):
        await script.emit("state", new=str(i))
    assert len(drain(fast)) == 3
    await script.emit("state", new="3")
    msgs = drain(slow)
    assert msgs[-1][1] == "overflow"
    assert [m[2]["new"] for m in drain(fast)] == ["3"]
    await hub.close()
    assert fast.queue.get_nowait()[0] == -1  # close sentinel ends the stream


def drain(sub: Any) -> list[Any]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


async def test_event_streams_are_capped_with_a_clear_503(harness: ApiHarness) -> None:
    from gateway.api.app import HUB_KEY
    from gateway.config import parse_config

    hub = harness.app[HUB_KEY]
    assert hub.max_clients == harness.config.api.max_event_clients == 32  # wired from the config's default
    assert parse_config({"api": {"max_event_clients": 3}}).api.max_event_clients == 3
    hub.max_clients = 2
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = await harness.client.get("/api/v1/events", headers=auth)
    second = await harness.client.get("/api/v1/events", headers=auth)
    for resp in (first, second):
        assert (await next_event(resp))["kind"] == "hello"
    assert hub.clients == 2
    body = await harness.call("GET", "/api/v1/events", 503)
    assert body["error"]["code"] == "too_many_streams" and "api.max_event_clients" in body["error"]["message"]
    third = await harness.client.get("/api/v1/events", headers=auth)
    assert third.status == 503 and third.headers["Retry-After"] == "30"
    third.close()
    first.close()  # a slot frees when a client leaves
    for _ in range(200):
        if hub.clients < 2:
            break
        await asyncio.sleep(0.01)
    again = await harness.client.get("/api/v1/events", headers=auth)
    assert (await next_event(again))["kind"] == "hello"
    again.close()
    second.close()

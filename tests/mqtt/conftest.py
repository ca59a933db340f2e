"""A real MQTT broker for the integration tests: Debian's mosquitto on a free loopback port, plus a subscriber.

`broker` starts `mosquitto -c <tmp config>` (no persistence: a restart loses every retained message, the
hardest case for "no final state lost"); `broker.restart()` stops and starts it on the same port. When the tests
run as root mosquitto drops to its own unprivileged user, as packaged. `Subscriber` is an aiomqtt client that
records every message and the retained view per topic; `wait_for` waits on message arrival (I/O), never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        self.conf.chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # readiness: the listening socket accepts (I/O, not a sleep)
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.02)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed (scripts/test installs the Debian package)")
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Subscriber:
    """Records every message; `retained` is the latest payload per topic (what HA would read)."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        self.arrived.set()

    def json(self, topic: str) -> Any:
        return json.loads(self.retained[topic])

    def history(self, topic: str) -> list[Any]:
        return [json.loads(p) if p else None for t, p, _ in self.messages if t == topic]

    async def wait_for(
        self, cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
    ) -> None:
        async def loop() -> None:
            while not cond():
                self.arrived.clear()
                await self.arrived.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"MQTT: {what} not seen within {timeout} s") from None

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1)

    async def publish_retained(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1, retain=True)


_ids = itertools.count(1)


async def _pump(client: aiomqtt.Client, sub: Subscriber) -> None:
    async for m in client.messages:
        raw = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload or "").encode()
        sub.on_message(str(m.topic), bytes(raw), bool(m.retain))


@contextlib.asynccontextmanager
async def subscriber(broker: Broker, topics: tuple[str, ...] = ("#",)) -> AsyncIterator[Subscriber]:
    sub = Subscriber()
    # a client id of its own each: a broker disconnects the older of two clients with the same id
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"otagw-test-{next(_ids)}") as client:
        sub.client = client
        for t in topics:
            await client.subscribe(t, qos=1)
        task = asyncio.create_task(_pump(client, sub))
        try:
            yield sub
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task

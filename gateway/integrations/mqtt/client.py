"""The thin asyncio layer of the MQTT integration: broker connection (aiomqtt), core events in, publishes out.

`MqttIntegration(cfg, core, store, clock, ...)`: `await start()` snapshots every device into the sans-I/O
`Bridge`, follows the core's event stream, and keeps one broker connection: connect (last will `offline` on
`<base>/status`), publish everything, subscribe to the install topics and Home Assistant's birth topic, then
publish whatever the bridge says is due. A lost connection is retried with exponential back-off
(`reconnect_min_s` doubling to `reconnect_max_s`, on the injected clock); events keep flowing into the bridge
meanwhile, and the next connection republishes the current state of every device. `await stop()` publishes
`offline` and disconnects. The password is read from env `OTAGW_MQTT_PASSWORD` or `password_file` and never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import aiomqtt

from gateway.clock import Clock
from gateway.config import MqttConfig, PolicyConfig
from gateway.core.policy import Policy
from gateway.core.rollouts import RolloutStatus
from gateway.integrations.mqtt.bridge import (
    Bridge,
    GatewayStatus,
    HomeAssistantOnline,
    InstallCommand,
    Publish,
    UnknownInstall,
)
from gateway.integrations.mqtt.discovery import GatewayIdentity, Topics
from gateway.integrations.mqtt.install import CoreClient, request_install
from gateway.integrations.mqtt.view import Catalog, device_view

log = logging.getLogger("otagw.mqtt")

PASSWORD_ENV = "OTAGW_MQTT_PASSWORD"


class MqttSetupError(Exception):
    """The mqtt section cannot be used (unreadable password file, bad TLS files); the message says which."""


def read_password(cfg: MqttConfig) -> str | None:
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    path = cfg.password_file
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise MqttSetupError(
                f"mqtt.password_file {path}: readable by others (mode {mode & 0o777:o}); chmod 600 it"
            )
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MqttSetupError(f"mqtt.password_file {path}: cannot read: {exc}") from None
    if not text:
        raise MqttSetupError(f"mqtt.password_file {path}: empty")
    return text


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise MqttSetupError(f"mqtt TLS files: {exc}") from None
    if cfg.tls_insecure:
        ctx.check_hostname = False
    return ctx


class MqttIntegration:
    def __init__(
        self,
        cfg: MqttConfig,
        core: CoreClient,
        store: Any,
        clock: Clock,
        *,
        policy: Callable[[], PolicyConfig],
        health: Callable[[], dict[str, Any]] = lambda: {},
        version: str = "0+unknown",
        configuration_url: str | None = None,
        subscribe: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.core = core
        self.store = store
        self.clock = clock
        self._policy = policy
        self._health = health
        self._subscribe = subscribe or core.subscribe
        self.topics = Topics(cfg.base_topic, cfg.discovery_prefix)
        self.bridge = Bridge(
            self.topics,
            GatewayIdentity(version, configuration_url=configuration_url),
            state_interval_s=cfg.state_interval_s,
        )
        self.catalog = Catalog.of(())
        self.password = read_password(cfg)
        self.tls = tls_context(cfg)
        self.connected = asyncio.Event()
        self.connections = 0  # successful connections so far (tests, logs)
        self.failures = 0  # connection attempts that failed or ended in an error
        self.attempted = asyncio.Event()  # set after each connection attempt succeeds or fails
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._client: aiomqtt.Client | None = None
        self._installs: set[asyncio.Task[Any]] = set()
        self._policy_cache: tuple[PolicyConfig, Policy] | None = None
        self._gone: set[str] = set()  # devices that left and whose entities were cleared

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        events = self._subscribe()
        first = asyncio.ensure_future(events.__anext__())
        # one loop turn: the subscription exists from here on, so nothing between it and the snapshot is lost
        await asyncio.sleep(0)
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._follow(events, first), name="otagw-mqtt-events"),
            asyncio.create_task(self._connection_loop(), name="otagw-mqtt-connection"),
            asyncio.create_task(self._refresh_loop(), name="otagw-mqtt-refresh"),
        ]
        log.info(
            "MQTT integration started",
            extra={"fields": {"broker": self.cfg.broker, "base_topic": self.cfg.base_topic}},
        )

    async def stop(self) -> None:
        client = self._client
        if client is not None and self.bridge.connected:
            with contextlib.suppress(Exception):
                await self._send(client, [self.bridge.goodbye()], timeout=5.0)
        for task in [*self._tasks, *self._installs]:
            task.cancel()
        for task in [*self._tasks, *self._installs]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._installs.clear()

    # ------------------------------------------------------------------------------------ core side
    def _view(self, rec: Any) -> Any:
        cfg = self._policy()
        if self._policy_cache is None or self._policy_cache[0] is not cfg:  # rebuilt only after a reload
            self._policy_cache = (cfg, Policy(cfg))
        return device_view(rec, self.catalog, self._policy_cache[1])

    def _gateway_status(self) -> GatewayStatus:
        adapters = {n: str(a.get("state")) for n, a in self._health().get("adapters", {}).items()}
        active = sum(self.core.metrics().get("transfers_active", {}).values())
        rollouts = sum(1 for r in self.core.list_rollouts() if r.status == RolloutStatus.ACTIVE)
        return GatewayStatus(adapters, int(active), rollouts)

    def _device_changed(self, device_id: str) -> None:
        rec = self.core.get_device(device_id)
        if rec is None or not rec.present:
            if device_id not in self._gone:
                self._gone.add(device_id)
                log.info("device %s left: removing its Home Assistant entity", device_id)
                self.bridge.remove_device(device_id)
        else:
            self._gone.discard(device_id)
            self.bridge.set_device(self._view(rec), self.clock.monotonic())

    async def refresh(self, *, devices: bool = True) -> None:
        """Re-read the catalog, and every device when asked or when the catalog changed (a new image changes
        latest_version); the gateway sensors always."""
        try:
            catalog = Catalog.of(await self.store.list())
            devices = devices or catalog.entries.keys() != self.catalog.entries.keys()
            self.catalog = catalog
        except Exception as exc:  # a catalog read failing must not stop state publishing
            log.warning("MQTT: catalog not refreshed: %s", exc)
        for rec in self.core.list_devices() if devices else ():
            if rec.present:
                self._gone.discard(rec.device_id)
                self.bridge.set_device(self._view(rec), self.clock.monotonic())
            elif rec.device_id not in self._gone:
                # left, possibly while otagw was down: its retained entity may still be on the broker
                self._gone.add(rec.device_id)
                self.bridge.remove_device(rec.device_id)
        self.bridge.set_gateway(self._gateway_status(), self.clock.monotonic())
        self._wakeup.set()

    async def _follow(self, events: Any, first: asyncio.Future[Any]) -> None:
        try:
            ev = await first
            while True:
                if ev.kind == "policy":
                    await self.refresh()
                elif ev.device_id is not None and ev.kind in ("state", "progress", "device"):
                    self._device_changed(ev.device_id)
                if ev.kind in ("state", "rollout", "device"):
                    self.bridge.set_gateway(self._gateway_status(), self.clock.monotonic())
                self._wakeup.set()
                ev = await events.__anext__()
        except StopAsyncIteration:
            return
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.gateway_interval_s)
            await self.refresh(devices=False)

    # ------------------------------------------------------------------------------------ broker side
    def _client_for(self) -> aiomqtt.Client:
        will = self.bridge.last_will()
        return aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            username=self.cfg.username,
            password=self.password,
            identifier=self.cfg.client_id,
            will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
            keepalive=self.cfg.keepalive_s,
            tls_context=self.tls,
            tls_insecure=self.cfg.tls_insecure if self.tls is not None else None,
            timeout=self.cfg.connect_timeout_s,
            logger=logging.getLogger("otagw.mqtt.client"),
        )

    async def _send(self, client: aiomqtt.Client, pubs: list[Publish], timeout: float | None = 30.0) -> None:
        # one at a time: with aiomqtt, publishes gathered in windows were slower (bench/bench_mqtt.py) and past
        # ten pending calls it logs a warning per call
        for p in pubs:
            await client.publish(p.topic, p.payload, qos=p.qos, retain=p.retain, timeout=timeout)

    async def _connection_loop(self) -> None:
        delay = self.cfg.reconnect_min_s
        while True:
            try:
                async with self._client_for() as client:
                    self._client = client
                    await client.subscribe([(t, 1) for t in self.bridge.subscriptions()])
                    await self._send(client, self.bridge.connected_now(self.clock.monotonic()))
                    self.connections += 1
                    self.connected.set()
                    self.attempted.set()
                    delay = self.cfg.reconnect_min_s
                    log.info(
                        "MQTT connected",
                        extra={"fields": {"broker": self.cfg.broker, "devices": len(self.bridge.devices)}},
                    )
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._read(client))
                        tg.create_task(self._write(client))
            except* aiomqtt.MqttError as group:
                self.failures += 1
                self.attempted.set()
                log.warning(
                    "MQTT broker %s: %s; reconnecting in %.0f s",
                    self.cfg.broker,
                    "; ".join(str(e) for e in group.exceptions),
                    delay,
                )
            finally:
                self._client = None
                self.connected.clear()
                self.bridge.disconnected()
            await self.clock.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            self._wakeup.clear()  # before taking what is due: a change during the sends below wakes us again
            await self._send(client, self.bridge.due(self.clock.monotonic()))
            if self._wakeup.is_set():
                continue
            nxt = self.bridge.next_due()
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wakeup.wait())]
            if nxt is not None:
                waiters.append(
                    asyncio.ensure_future(self.clock.sleep(max(0.0, nxt - self.clock.monotonic())))
                )
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = (
                message.payload
                if isinstance(message.payload, bytes | bytearray)
                else str(message.payload).encode()
            )
            cmd = self.bridge.command(str(message.topic), bytes(payload))
            if isinstance(cmd, InstallCommand):
                task = asyncio.create_task(
                    self._install(cmd.device_id), name=f"otagw-mqtt-install {cmd.device_id}"
                )
                self._installs.add(task)
                task.add_done_callback(self._installs.discard)
            elif isinstance(cmd, HomeAssistantOnline):
                log.info("Home Assistant came online: republishing discovery")
                await self._send(client, self.bridge.republish_discovery(self.clock.monotonic()))
            elif isinstance(cmd, UnknownInstall):
                log.warning("MQTT: install command on %s names no device otagw knows", cmd.topic)

    async def _install(self, device_id: str) -> None:
        result = await request_install(
            self.core,
            device_id,
            self.catalog,
            self._policy(),
            self.clock.now(),
            allowed=self.cfg.allow_install,
        )
        log_fn = log.info if result.result == "accepted" else log.warning
        log_fn(
            "Home Assistant install for %s %s: %s",
            device_id,
            result.result,
            result.reason,
            extra={
                "fields": {"device_id": device_id, "result": result.result, "rollout_id": result.rollout_id}
            },
        )
        self.bridge.set_install_result(device_id, result)
        self._device_changed(device_id)
        self._wakeup.set()

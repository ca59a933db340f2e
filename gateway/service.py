"""The composition root: builds the image store, the update core, the enabled adapters and the HTTP API, runs
them until SIGINT/SIGTERM, and shuts them down in reverse order.

This is the only module that imports adapters, and it does so lazily, by import string, and only for the
adapters enabled in the config: a gateway with Zigbee disabled never imports zigpy. An adapter that cannot
start (no radio, no IPv6, not installed) is recorded as `failed`/`unavailable` with a one-line reason, logged,
shown on `/healthz`, and the rest keeps serving.

Start order: data dir -> store -> core -> adapters -> API -> integrations (MQTT: a client of the core, started
only when `mqtt.enabled`, lazily imported like the adapters).
Stop order is the reverse: the API stops accepting and ends its event streams, adapters stop (transfers are
checkpointed through the core, DNS-SD records withdrawn), the core stops (records flushed), the store closes.
SIGHUP re-reads the config file and hands the new policy to the core (`reload_policy`); other sections need a
restart, and the log says so when they changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from gateway.clock import Clock, SystemClock
from gateway.config import Config, ConfigError, load_config

log = logging.getLogger("otagw.service")

AdapterState = Literal["disabled", "unavailable", "starting", "running", "failed", "stopping", "stopped"]
CoreState = Literal["starting", "running", "stopping", "stopped"]


@dataclass(frozen=True)
class AdapterSlot:
    """Where an adapter lives and when it is wanted. `target` is "module:Class"; the class is constructed as
    `Class(section_config, core, clock, data_dir)` (its own config section, e.g. `ZigbeeConfig`) and has
    `async start()` / `async stop()`; `start` raises an exception named `AdapterStartError` when it cannot run."""

    name: str
    target: str
    enabled: Callable[[Config], bool]
    section: str | None = None  # config section handed to the adapter (None: the whole Config)


ADAPTER_SLOTS: tuple[AdapterSlot, ...] = (
    AdapterSlot("matter", "adapters.matter.adapter:MatterAdapter", lambda c: c.matter.enabled, "matter"),
    AdapterSlot("zigbee", "adapters.zigbee.adapter:ZigbeeAdapter", lambda c: c.zigbee.enabled, "zigbee"),
)


@dataclass
class AdapterRuntime:
    slot: AdapterSlot
    state: AdapterState = "disabled"
    error: str | None = None
    instance: Any = None


class GatewayStartError(Exception):
    """A component without which the gateway cannot serve (store, core, API socket) failed to start."""


def load_adapter_class(target: str) -> type[Any]:
    """Import "module:Class". Raises LookupError with a one-line reason when the adapter is not present."""
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise LookupError(f"{module_name} is not part of this installation") from None
        raise LookupError(
            f"{module_name} needs the Python module {exc.name!r}, which is not installed"
        ) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise LookupError(f"{module_name} has no class {class_name}")
    return cls


class Gateway:
    """One running gateway. `await start()`, then `await stop()`; or `await run()` to serve until a signal."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        slots: tuple[AdapterSlot, ...] = ADAPTER_SLOTS,
        progress_interval: float = 0.25,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.adapters = [AdapterRuntime(slot) for slot in slots]
        self.core_state: CoreState = "stopped"
        self.store: Any = None
        self.core: Any = None
        self.token: str | None = None
        self.token_source: str | None = None
        self.api_url: str | None = None
        self._progress_interval = progress_interval
        self._runner: web.AppRunner | None = None
        self.mqtt: Any = None  # gateway.integrations.mqtt.client.MqttIntegration when mqtt.enabled
        self.mqtt_error: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        return {
            "core": self.core_state,
            "adapters": {a.slot.name: {"state": a.state, "error": a.error} for a in self.adapters},
        }

    # ------------------------------------------------------------------------------------------- start
    async def start(self) -> None:
        """Bring everything up; on a fatal error tear down what started and raise GatewayStartError."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        from gateway.core.service import UpdateCore
        from gateway.store.errors import StoreError
        from gateway.store.store import ImageStore

        cfg = self.config
        self.core_state = "starting"
        data_dir = cfg.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(data_dir, 0o700)  # keys, fabric storage and the API token live here
        except OSError as exc:
            raise GatewayStartError(f"data_dir {data_dir}: {exc.strerror or exc}") from None
        log.info("starting otagw", extra={"fields": {"data_dir": str(data_dir.resolve())}})

        self.store = ImageStore(data_dir)
        try:
            await self.store.open()
        except (StoreError, OSError) as exc:
            raise GatewayStartError(f"image store in {data_dir}: {exc}") from None
        await self._import_configured_images()

        self.core = UpdateCore(cfg, self.store, self.clock)
        await self.core.start()
        self.core_state = "running"

        for rt in self.adapters:
            await self._start_adapter(rt)

        if cfg.api.enabled:
            await self._start_api()
        if cfg.mqtt.enabled:
            await self._start_mqtt()
        running = [a.slot.name for a in self.adapters if a.state == "running"]
        log.info(
            "otagw is serving",
            extra={"fields": {"adapters": ",".join(running) or "none", "api": self.api_url or "disabled"}},
        )

    async def _import_configured_images(self) -> None:
        """Import the image sources named in `images:`; failures are logged one per file, never fatal."""
        from gateway.store.importers import import_configured_sources

        images = self.config.images
        if not (images.directories or images.ota_image_lists or images.z2m_indexes):
            return
        report = await import_configured_sources(self.store, images)
        for r in report.results:
            if r.status == "failed":
                log.warning("image import failed: %s: %s", r.item, r.message)
        log.info("configured image sources imported", extra={"fields": {"result": report.summary()}})

    async def _start_adapter(self, rt: AdapterRuntime) -> None:
        name = rt.slot.name
        if not rt.slot.enabled(self.config):
            rt.state, rt.error = "disabled", None
            return
        try:
            cls = load_adapter_class(rt.slot.target)
        except LookupError as exc:
            rt.state, rt.error = "unavailable", str(exc)
            log.warning("%s adapter unavailable: %s; serving without it", name, exc)
            return
        rt.state = "starting"
        try:
            section = getattr(self.config, rt.slot.section) if rt.slot.section else self.config
            rt.instance = cls(section, self.core, self.clock, self.config.data_dir)
            await rt.instance.start()
        except Exception as exc:
            rt.state, rt.error = "failed", f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            expected = type(exc).__name__ == "AdapterStartError"
            log.error(
                "%s adapter could not start: %s; serving without it",
                name,
                rt.error,
                exc_info=None if expected else exc,
            )
            with contextlib.suppress(Exception):
                if rt.instance is not None:
                    await rt.instance.stop()
            rt.instance = None
            return
        rt.state, rt.error = "running", None
        log.info("%s adapter running", name)

    async def _start_api(self) -> None:
        from gateway.api.app import ApiServices, create_app
        from gateway.api.auth import MetricsAccess, TokenError, resolve_metrics_token, resolve_token

        cfg = self.config
        try:
            self.token, self.token_source = resolve_token(cfg.api.token, cfg.data_dir)
            if cfg.metrics.auth == "open":
                metrics_access = MetricsAccess(open=True)
                log.warning("metrics.auth is open: anyone reaching %s may scrape /metrics", cfg.api.listen)
            else:
                metrics_token, metrics_source = resolve_metrics_token(cfg.data_dir)
                metrics_access = MetricsAccess(token=metrics_token)
                log.info("/metrics needs the metrics token", extra={"fields": {"token": metrics_source}})
        except TokenError as exc:
            raise GatewayStartError(str(exc)) from None
        svc = ApiServices(
            core=self.core,
            store=self.store,
            config=cfg,
            token=self.token,
            clock=self.clock,
            health=self.health,
            progress_interval=self._progress_interval,
            metrics_access=metrics_access,
        )
        app = create_app(svc)
        host, _, port = cfg.api.listen.rpartition(":")
        host = host.strip("[]")
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port))
        try:
            await site.start()
        except OSError as exc:
            raise GatewayStartError(
                f"api.listen {cfg.api.listen}: cannot listen: {exc.strerror or exc}"
            ) from None
        bound = self._runner.addresses[0] if self._runner.addresses else (host, int(port))
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        self.api_url = f"http://{shown}:{bound[1]}"
        log.info(
            "API and dashboard listening", extra={"fields": {"url": self.api_url, "token": self.token_source}}
        )
        log.info("dashboard: open %s/login and paste the token from %s", self.api_url, self.token_source)

    async def _start_mqtt(self) -> None:
        """Home Assistant over MQTT: a client of the core like the API; it failing never stops the gateway."""
        try:
            from gateway.integrations.mqtt.client import MqttIntegration, MqttSetupError
        except ModuleNotFoundError as exc:
            self.mqtt_error = f"needs the Python module {exc.name!r}, which is not installed"
            log.error("MQTT integration unavailable: %s", self.mqtt_error)
            return
        from gateway.api.app import gateway_version

        try:
            self.mqtt = MqttIntegration(
                self.config.mqtt,
                self.core,
                self.store,
                self.clock,
                policy=lambda: self.config.policy,
                health=self.health,
                version=gateway_version(),
                configuration_url=self.api_url,
            )
            await self.mqtt.start()
        except MqttSetupError as exc:
            self.mqtt, self.mqtt_error = None, str(exc)
            log.error("MQTT integration not started: %s", exc)

    # -------------------------------------------------------------------------------------------- stop
    async def stop(self) -> None:
        """Stop everything that started, in reverse order; safe to call twice."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.core_state == "running":
            self.core_state = "stopping"
        if self.mqtt is not None:
            try:
                await self.mqtt.stop()
            except Exception:
                log.exception("MQTT integration did not stop cleanly")
            self.mqtt = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for rt in reversed(self.adapters):
            if rt.instance is None:
                continue
            rt.state = "stopping"
            try:
                await rt.instance.stop()
            except Exception:
                log.exception("%s adapter did not stop cleanly", rt.slot.name)
            rt.instance = None
            rt.state = "stopped"
        if self.core is not None:
            try:
                await self.core.stop()
            except Exception:
                log.exception("update core did not stop cleanly")
            self.core = None
        if self.store is not None:
            try:
                await self.store.close()
            except Exception:
                log.exception("image store did not close cleanly")
            self.store = None
        if self.core_state != "stopped":
            log.info("otagw stopped")
        self.core_state = "stopped"

    # ------------------------------------------------------------------------------------------ reload
    async def reload(self) -> bool:
        """Re-read the config file and apply its policy (SIGHUP). False (and logged) when it cannot be used."""
        source = self.config.source
        if source is None:
            log.info("SIGHUP: running on the embedded defaults; nothing to reload")
            return False
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return False
        if self.core is None:
            return False
        try:
            over = self.core.reload_policy(new)
        except Exception as exc:
            log.error("SIGHUP: policy not reloaded: %s", exc)
            return False
        changed = [
            name
            for name in ("data_dir", "images", "matter", "zigbee", "api", "log", "metrics", "mqtt")
            if getattr(new, name) != getattr(self.config, name)
        ]
        self.config = self.config.model_copy(update={"policy": new.policy})
        log.info("policy reloaded", extra={"fields": {"config": str(source)}})
        if over:
            log.warning("SIGHUP: budgets now over their limit (they drain): %s", ", ".join(over))
        if changed:
            log.warning("SIGHUP: changes to %s take effect after a restart", ", ".join(changed))
        return True

    # --------------------------------------------------------------------------------------------- run
    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM (SIGHUP reloads policy), stop."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []

        def on_stop(sig: signal.Signals) -> None:
            if self._stop.is_set():
                log.warning("%s again: still shutting down", sig.name)
                return
            log.info("%s received: shutting down", sig.name)
            self._stop.set()

        async def reload_task() -> None:
            await self.reload()

        def on_hup() -> None:
            log.info("SIGHUP received: reloading policy")
            task = asyncio.create_task(reload_task(), name="otagw-reload")
            self._tasks.append(task)
            task.add_done_callback(self._forget_task)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_stop, sig)
                installed.append(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
            installed.append(signal.SIGHUP)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)

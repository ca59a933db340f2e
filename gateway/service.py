"""The composition root: builds the image store, the update core, the enabled adapters and the HTTP API, runs
them until SIGINT/SIGTERM, and shuts them down in reverse order.

Adapters come from the plugin registry (`gateway.plugins`, entry point group `otagw.adapters`); this module imports
no adapter, and a plugin imports its protocol stack only when it is enabled and created: a gateway with Zigbee
disabled never imports zigpy. An adapter that cannot run on this installation (its SDK is not installed) is
`unavailable` with one log line; one that fails to start (no radio yet, interface down) is `failed` and retried
with exponential backoff on the injected clock, one log line per attempt. Either way `/healthz` answers 503 naming
it, its reason and its next retry, and the rest keeps serving.

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
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from gateway.clock import Clock, SystemClock
from gateway.config import Config, ConfigError, load_config
from gateway.plugins import AdapterPlugin, RunningAdapter, load_plugins

log = logging.getLogger("otagw.service")

AdapterState = Literal["disabled", "unavailable", "starting", "running", "failed", "stopping", "stopped"]
CoreState = Literal["starting", "running", "stopping", "stopped"]

RETRY_INITIAL_S = 5.0  # first retry of a failed adapter; doubles per failed attempt
RETRY_MAX_S = 300.0  # a radio plugged in later is picked up within five minutes


@dataclass
class AdapterRuntime:
    """One adapter's place in the gateway: its plugin, state, last error and retry schedule."""

    plugin: AdapterPlugin
    state: AdapterState = "disabled"
    error: str | None = None
    instance: RunningAdapter | None = None
    attempts: int = 0  # failed start attempts since the last success
    next_retry_at: float | None = None  # wall clock (epoch seconds) of the next start attempt

    @property
    def name(self) -> str:
        return self.plugin.name


async def _notify_via(adapters: list[AdapterRuntime], protocol: str, device_id: str) -> str:
    from gateway.api.routes_devices import DeviceNotReady

    for rt in adapters:
        if rt.name == protocol:
            fn = getattr(rt.instance, "notify_device", None)
            if rt.state != "running" or fn is None:
                raise DeviceNotReady(
                    f"the {protocol} adapter is {rt.state}" + (f": {rt.error}" if rt.error else "")
                )
            return str(await fn(device_id))
    raise DeviceNotReady(f"no {protocol} adapter in this gateway")


class GatewayStartError(Exception):
    """A component without which the gateway cannot serve (store, core, API socket) failed to start."""


class Gateway:
    """One running gateway. `await start()`, then `await stop()`; or `await run()` to serve until a signal."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        plugins: Iterable[AdapterPlugin] | None = None,
        progress_interval: float = 0.25,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        chosen = load_plugins().values() if plugins is None else plugins
        self.adapters = [AdapterRuntime(p) for p in chosen]
        self.core_state: CoreState = "stopped"
        self.store: Any = None
        self.core: Any = None
        self.sources: Any = None  # gateway.sources.manager.SourceManager
        self.token: str | None = None
        self.token_source: str | None = None
        self.api_url: str | None = None
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._progress_interval = progress_interval
        self._runner: web.AppRunner | None = None
        self.mqtt: Any = None  # gateway.integrations.mqtt.client.MqttIntegration when mqtt.enabled
        self.mqtt_error: str | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: dict[str, asyncio.Task[None]] = {}

    def adapter(self, name: str) -> AdapterRuntime | None:
        return next((a for a in self.adapters if a.name == name), None)

    async def notify_device(self, device_id: str) -> str:
        """Ask one device to query now through the adapter of its protocol (the API's notify action)."""
        rec = self.core.get_device(device_id) if self.core is not None else None
        if rec is None:
            raise LookupError(f"no device {device_id!r}")
        return await _notify_via(self.adapters, rec.protocol, device_id)

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """Core state and, per adapter: state, reason, failed attempts, next retry (epoch seconds), plus what
        the plugin adds. `ready` is True only when the core and every enabled adapter run."""
        adapters: dict[str, dict[str, Any]] = {}
        for a in self.adapters:
            entry: dict[str, Any] = {
                "state": a.state,
                "error": a.error,
                "attempts": a.attempts,
                "next_retry_at": a.next_retry_at,
            }
            if a.instance is not None and a.state == "running":
                with contextlib.suppress(Exception):
                    entry["details"] = a.plugin.health(a.instance) or None
            adapters[a.name] = entry
        ready = self.core_state == "running" and all(
            a.state in ("running", "disabled") for a in self.adapters
        )
        return {"core": self.core_state, "ready": ready, "adapters": adapters}

    # ------------------------------------------------------------------------------------------- start
    async def start(self) -> None:
        """Bring everything up; on a fatal error tear down what started and raise GatewayStartError."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        from gateway.core.interface import UpdateCoreInterface
        from gateway.core.service import UpdateCore
        from gateway.store.errors import StoreError
        from gateway.store.store import ImageStore

        cfg = self.config
        self._stopping = False
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

        core = UpdateCore(cfg, self.store, self.clock)
        _adapters_view: UpdateCoreInterface = core  # mypy proves the core offers adapters the whole interface
        self.core = core
        await self.core.start()
        self.core_state = "running"
        from gateway.sources.manager import manager_for_core

        self.sources = manager_for_core(cfg, self.store, self.core, self.clock)
        await self.sources.start()  # no task and no network unless a source is enabled

        for rt in self.adapters:
            if await self._start_adapter(rt) == "failed":
                self._schedule_retry(rt)

        if cfg.api.enabled:
            await self._start_api()
        if cfg.mqtt.enabled:
            await self._start_mqtt()
        running = [a.name for a in self.adapters if a.state == "running"]
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

    def _retry_delay(self, attempts: int) -> float:
        return min(self.retry_max_s, self.retry_initial_s * 2.0 ** max(0, attempts - 1))

    async def _start_adapter(self, rt: AdapterRuntime) -> AdapterState:
        """One start attempt, logged in one line whatever the outcome. Returns the new state."""
        name = rt.name
        plugin = rt.plugin
        if not plugin.enabled(self.config):
            rt.state, rt.error, rt.next_retry_at = "disabled", None, None
            return rt.state
        reason = plugin.unavailable_reason()
        if reason:
            rt.state, rt.error, rt.next_retry_at = "unavailable", f"{name}: {reason}", None
            log.warning("%s adapter unavailable: %s; serving without it", name, reason)
            return rt.state
        rt.state = "starting"
        try:
            rt.instance = plugin.create(
                self.core, self.config, clock=self.clock, data_dir=self.config.data_dir
            )
            await rt.instance.start()
        except LookupError as exc:  # the plugin's adapter module is not installed: permanent, like above
            rt.state, rt.error, rt.next_retry_at, rt.instance = "unavailable", str(exc), None, None
            log.warning("%s adapter unavailable: %s; serving without it", name, exc)
            return rt.state
        except Exception as exc:
            rt.attempts += 1
            rt.state, rt.error = "failed", str(exc) or type(exc).__name__
            rt.next_retry_at = self.clock.now() + self._retry_delay(rt.attempts)
            expected = type(exc).__name__ == "AdapterStartError"
            log.error(
                "%s adapter could not start (attempt %d): %s; serving without it, next attempt in %.0f s",
                name,
                rt.attempts,
                rt.error,
                self._retry_delay(rt.attempts),
                exc_info=None if expected else exc,
                extra={
                    "fields": {"adapter": name, "attempt": rt.attempts, "next_retry_at": rt.next_retry_at}
                },
            )
            with contextlib.suppress(Exception):
                if rt.instance is not None:
                    await rt.instance.stop()
            rt.instance = None
            return rt.state
        if rt.attempts:
            log.info("%s adapter running (after %d failed attempt(s))", name, rt.attempts)
        else:
            log.info("%s adapter running", name)
        rt.state, rt.error, rt.attempts, rt.next_retry_at = "running", None, 0, None
        return rt.state

    def _schedule_retry(self, rt: AdapterRuntime) -> None:
        if self._stopping or rt.name in self._retries:
            return
        task = asyncio.create_task(self._retry_loop(rt), name=f"otagw-retry-{rt.name}")
        self._retries[rt.name] = task

    async def _retry_loop(self, rt: AdapterRuntime) -> None:
        """Retry a failed adapter with exponential backoff until it runs or the gateway stops."""
        try:
            while not self._stopping and rt.state == "failed":
                await self.clock.sleep(self._retry_delay(rt.attempts))
                if self._stopping:
                    return
                await self._start_adapter(rt)
        finally:
            self._retries.pop(rt.name, None)

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
            extra={"sources": self.sources},
            notify_device=self.notify_device,
            plugin_routes=self._plugin_routes(),
            adapter_instance=self._running_instance,
        )
        from gateway.publish.routes import attach
        from gateway.publish.service import Publisher

        publisher = Publisher(cfg, self.store, self.core)
        svc.extra["publish"] = publisher
        app = create_app(svc)
        assert svc.credentials is not None
        attach(app, publisher, svc.credentials)
        self._start_bridges()
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

    def _start_bridges(self) -> None:
        """One MQTT subscriber per enabled z2m controller with a `bridge:` (gateway/integrations/z2m_bridge)."""
        from gateway.integrations.z2m_bridge import run_bridge

        core = self.core
        for ctl in self.config.publish.controllers:
            if not ctl.enabled or ctl.bridge is None:
                continue
            password = None
            if ctl.bridge.password_file is not None:
                try:
                    password = ctl.bridge.password_file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise GatewayStartError(
                        f"publish.controllers[{ctl.name}].bridge.password_file: {exc.strerror or exc}"
                    ) from None

            def identify(model: str) -> tuple[int, int] | None:
                for e in core.catalog_entries():
                    if e.protocol == "zigbee" and model in e.model_ids:
                        return e.vendor_id, e.product_id
                return None

            task = asyncio.get_running_loop().create_task(
                run_bridge(ctl, core.observe, identify, password=password, sleep=self.clock.sleep)
            )
            self._tasks.append(task)
    def _plugin_routes(self) -> dict[str, list[Any]]:
        from gateway.plugins import plugin_api_routes

        routes = {a.name: plugin_api_routes(a.plugin) for a in self.adapters if a.state != "disabled"}
        return {name: r for name, r in routes.items() if r}

    def _running_instance(self, name: str) -> tuple[Any, str | None]:
        rt = self.adapter(name)
        if rt is None:
            return None, "not configured"
        if rt.instance is None or rt.state != "running":
            return None, rt.error or rt.state
        return rt.instance, None

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
        self._stopping = True
        for t in list(self._retries.values()):
            t.cancel()
        for t in list(self._retries.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._retries.clear()
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
                log.exception("%s adapter did not stop cleanly", rt.name)
            rt.instance = None
            rt.state = "stopped"
        if self.sources is not None:
            await self.sources.stop()
            self.sources = None
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

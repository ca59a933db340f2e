"""The adapter plugin contract and registry: how the gateway finds adapters without importing them.

An adapter package (adapters/matter, adapters/zigbee, or a third party's) declares one entry point in the group
`otagw.adapters` whose object satisfies `AdapterPlugin`: its name, the config section it owns (a key of `Config`,
validated by the section's model there so the generated config reference stays complete), a factory that builds
the running adapter from the neutral core interface, an optional click group for `otagw <name> ...`, and an
optional reason why it cannot run on this installation (a missing native SDK: reported once, never retried).

The registry loads entry point objects only; a plugin object must import its heavy protocol stack lazily (in
`create`/`cli_group`), so a gateway with Zigbee disabled never imports zigpy. `gateway/` imports no adapter: the
composition root (`gateway.service`), the CLI and the demo all go through `load_plugins()`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import click

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config import Config
    from gateway.core.interface import UpdateCoreInterface

ENTRY_POINT_GROUP = "otagw.adapters"
# where the API's admin token lives; the same names as gateway.api.auth's (plugins may not import the API layer;
# tests/api/test_plugin_routes.py checks they agree)
API_TOKEN_ENV = "OTAGW_API_TOKEN"
API_TOKEN_FILE = "api-token"

log = logging.getLogger("otagw.plugins")


class UserError(click.ClickException):
    """An error caused by the user's input (any `otagw` command, the adapters' too): one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class CliState(Protocol):
    """What an adapter's commands get as `click.pass_obj`: the loaded config (a `UserError` when it is bad)."""

    @property
    def config(self) -> Config: ...


class RouteError(Exception):
    """A plugin API route refuses a request: `status` (400 bad input, 404 unknown thing, 409 wrong state) and a
    one-line message naming what is wrong (the gateway answers with its usual JSON error body)."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True)
class PluginRoute:
    """One API operation an adapter contributes, served at `/api/v1/<adapter name><path>`, admin token only.

    `handler(adapter, params)` gets the RUNNING adapter (the gateway answers 503 itself while the adapter is not
    running) and the request's parameters (JSON body merged over the query string) and returns a JSON-able result;
    it raises `RouteError` (or ValueError, answered 400) for bad input. Kept free of aiohttp so adapters stay
    independent of the API framework."""

    method: str
    path: str
    name: str  # operationId suffix: the operation is `<adapter>_<name>`
    summary: str
    handler: Callable[[Any, dict[str, Any]], Awaitable[Any]]


class AdapterStartError(Exception):
    """An adapter cannot run now; the message is the one-line reason (no traceback is logged). Plugins raise it,
    or an exception class of the same name (older adapters), from `start()`."""


@runtime_checkable
class RunningAdapter(Protocol):
    """What `AdapterPlugin.create` returns: started and stopped by the gateway. `stop()` must be safe after a
    failed or partial `start()`."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class AdapterPlugin(Protocol):
    """One adapter as the gateway sees it (see the module docstring)."""

    @property
    def name(self) -> str:
        """The adapter's name: its entry point name, its `/healthz` key, its CLI group."""
        ...

    @property
    def config_section(self) -> str | None:
        """Key of `Config` (and of the YAML file) holding this adapter's settings (None: it reads the whole
        Config)."""
        ...

    def enabled(self, config: Config) -> bool:
        """Whether the config asks for this adapter."""
        ...

    def unavailable_reason(self) -> str | None:
        """Why this adapter can never run on this installation (e.g. its SDK has no wheel here), else None."""
        ...

    def create(
        self, core: UpdateCoreInterface, config: Config, *, clock: Clock, data_dir: Path
    ) -> RunningAdapter:
        """Build (not start) the adapter. `config` is the whole Config: the adapter reads its own section and
        may read neutral policy values it needs at start."""
        ...

    def cli_group(self) -> click.Group | None:
        """The `otagw <name>` command group, or None."""
        ...

    def health(self, adapter: RunningAdapter) -> dict[str, Any]:
        """Extra adapter-specific health fields for `/healthz` (may be empty)."""
        ...

    def adapter_class(self) -> type[Any]:
        """The adapter class itself (for harnesses such as `otagw demo` that build it with extra arguments)."""
        ...

    def simulator(self) -> Any:
        """The adapter's hardware-free harness module (simulated radio/devices) for `otagw demo`; None if it has
        none."""
        ...


@dataclass(frozen=True)
class LazyAdapterPlugin:
    """An `AdapterPlugin` whose adapter class is imported on first use from "module:Class". The class is built as
    `Class(section_config, core, clock, data_dir)`. Adapters can declare themselves with one of these."""

    name: str
    target: str
    config_section: str | None = None  # None: the adapter gets the whole Config
    is_enabled: Callable[[Any], bool] = field(default=lambda config: True)
    cli_target: str | None = None  # "module:attribute" of a click group, imported lazily
    required_modules: tuple[
        str, ...
    ] = ()  # top-level modules that must be importable (checked, not imported)
    install_hint: str = ""
    simulator_target: str | None = None  # "module" of the hardware-free harness, imported lazily
    routes_target: str | None = (
        None  # "module:attribute": a list of PluginRoute (or a function returning one)
    )

    def enabled(self, config: Config) -> bool:
        return bool(self.is_enabled(config))

    def unavailable_reason(self) -> str | None:
        import importlib.util

        for module in self.required_modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                hint = f" ({self.install_hint})" if self.install_hint else ""
                return f"the Python module {module!r} is not installed{hint}"
        return None

    def adapter_class(self) -> type[Any]:
        return load_object(self.target)

    def create(self, core: Any, config: Config, *, clock: Clock, data_dir: Path) -> RunningAdapter:
        cls = self.adapter_class()
        section = getattr(config, self.config_section) if self.config_section else config
        adapter: RunningAdapter = cls(section, core, clock, data_dir)
        return adapter

    def cli_group(self) -> click.Group | None:
        if self.cli_target is None:
            return None
        group: click.Group = load_object(self.cli_target)
        return group

    def health(self, adapter: RunningAdapter) -> dict[str, Any]:
        extra = getattr(adapter, "health", None)
        return dict(extra()) if callable(extra) else {}

    def simulator(self) -> Any:
        return None if self.simulator_target is None else load_object(self.simulator_target)

    def api_routes(self) -> list[PluginRoute]:
        if self.routes_target is None:
            return []
        routes = load_object(self.routes_target)
        return list(routes() if callable(routes) else routes)


def plugin_api_routes(plugin: Any) -> list[PluginRoute]:
    """The API operations a plugin contributes (optional `api_routes()`; none when it has no such method or its
    routes module cannot be imported here, which is logged)."""
    get = getattr(plugin, "api_routes", None)
    if not callable(get):
        return []
    try:
        return list(get())
    except LookupError as exc:
        log.warning("adapter plugin %s: API routes unavailable: %s", getattr(plugin, "name", "?"), exc)
        return []


def load_object(target: str) -> Any:
    """Import "module:attribute". Raises LookupError with a one-line reason when it is not present."""
    import importlib

    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise LookupError(f"{module_name} is not part of this installation") from None
        raise LookupError(
            f"{module_name} needs the Python module {exc.name!r}, which is not installed"
        ) from None
    obj = getattr(module, attr, None) if attr else module
    if obj is None:
        raise LookupError(f"{module_name} has no attribute {attr}")
    return obj


def load_plugins() -> dict[str, AdapterPlugin]:
    """Every installed adapter plugin by name (entry point group `otagw.adapters`), sorted by name. A plugin
    whose entry point cannot be loaded is logged and left out; the rest still load."""
    found: dict[str, AdapterPlugin] = {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in found:
            continue  # the same distribution seen twice on sys.path (editable install + PYTHONPATH)
        try:
            plugin = ep.load()
        except Exception as exc:
            log.warning("adapter plugin %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
            continue
        if getattr(plugin, "name", None) != ep.name:
            log.warning("adapter plugin %s (%s) names itself %r; left out", ep.name, ep.value, plugin)
            continue
        found[ep.name] = plugin
    return found


def get_plugin(name: str) -> AdapterPlugin:
    """The installed plugin `name`; LookupError naming what is installed when it is not."""
    plugins = load_plugins()
    if name not in plugins:
        have = ", ".join(plugins) or "none"
        raise LookupError(f"no adapter plugin {name!r} is installed (installed: {have})")
    return plugins[name]


def gateway_api_access(config: Config) -> tuple[str, str | None]:
    """Where a local running gateway's API answers (base URL from `api.listen`, a wildcard host mapped to
    loopback) and its admin token (env, config or `<data_dir>/api-token`; None when there is none yet — the
    token file is never created here). For adapter commands that must hand work to the gateway that owns a device
    (a radio, a fabric) instead of opening it a second time."""
    import os

    host, _, port = config.api.listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    token = os.environ.get(API_TOKEN_ENV, "").strip() or config.api.token
    if not token:
        path = Path(config.data_dir) / API_TOKEN_FILE
        try:
            token = path.read_text(encoding="ascii").strip() or None
        except (OSError, UnicodeDecodeError):
            token = None
    return f"http://{host}:{port}", token

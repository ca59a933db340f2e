"""Build and start zigpy's `ControllerApplication` for the configured radio, or fail with one clear error.

`zigbee.radio.type: ezsp` selects bellows; the other radio types map to their zigpy radio libraries when those
are installed. The zigpy config is handed over as a raw dict (validating it twice crashes zigpy's OTA provider
validator), with zigpy's own OTA providers and periodic Image Notify broadcasts switched off: otagw is the
only OTA server on the network. Any failure to start — missing serial device, refused socket, a radio that
never answers — becomes `AdapterStartError` naming the radio type and path, so the gateway can log it and
keep serving Matter.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import zigpy.config as zconf
from zigpy.application import ControllerApplication

from gateway.config import ZigbeeConfig

# radio type -> (module, class, pip package that provides it)
RADIO_LIBRARIES: dict[str, tuple[str, str, str]] = {
    "ezsp": ("bellows.zigbee.application", "ControllerApplication", "bellows"),
    "znp": ("zigpy_znp.zigbee.application", "ControllerApplication", "zigpy-znp"),
    "deconz": ("zigpy_deconz.zigbee.application", "ControllerApplication", "zigpy-deconz"),
    "zigate": ("zigpy_zigate.zigbee.application", "ControllerApplication", "zigpy-zigate"),
    "xbee": ("zigpy_xbee.zigbee.application", "ControllerApplication", "zigpy-xbee"),
}


class AdapterStartError(Exception):
    """The Zigbee adapter could not start; the message says which radio, which path and why."""


def app_class_for(radio_type: str) -> type[ControllerApplication]:
    try:
        module_name, class_name, package = RADIO_LIBRARIES[radio_type]
    except KeyError:
        raise AdapterStartError(f"zigbee.radio.type: unknown radio type {radio_type!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterStartError(
            f"zigbee.radio.type {radio_type!r} needs the Python package {package!r}, which is not installed ({exc})"
        ) from None
    cls: type[ControllerApplication] = getattr(module, class_name)
    return cls


def build_zigpy_config(cfg: ZigbeeConfig, data_dir: Path | None) -> dict[str, Any]:
    """The raw zigpy/bellows config dict for `cfg` (database inside `data_dir`, or in memory when None)."""
    radio = cfg.radio
    conf: dict[str, Any] = {
        zconf.CONF_DEVICE: {
            zconf.CONF_DEVICE_PATH: radio.device,
            zconf.CONF_DEVICE_BAUDRATE: radio.baudrate,
            zconf.CONF_DEVICE_FLOW_CONTROL: radio.flow_control,
        },
        zconf.CONF_DATABASE: str(Path(data_dir) / cfg.database) if data_dir is not None else None,
        zconf.CONF_OTA: {
            # zigpy's internet providers and its 3.9 h broadcasts are off; otagw serves OTA itself
            zconf.CONF_OTA_PROVIDERS: [],
            zconf.CONF_OTA_DISABLE_DEFAULT_PROVIDERS: [],
            zconf.CONF_OTA_BROADCAST_ENABLED: False,
        },
    }
    if radio.type == "ezsp":
        # bellows' serial thread is only a workaround for slow event loops; one loop keeps shutdown clean
        conf["use_thread"] = False
    return conf


async def start_controller(
    cfg: ZigbeeConfig,
    data_dir: Path | None,
    app_cls: type[ControllerApplication] | None = None,
    *,
    auto_form: bool = True,
) -> ControllerApplication:
    """Create and start the application; any failure raises AdapterStartError naming the radio path."""
    radio = cfg.radio
    cls = app_cls if app_cls is not None else app_class_for(radio.type)
    conf = build_zigpy_config(cfg, data_dir)
    where = f"zigbee radio {radio.type!r} at {radio.device!r}"
    try:
        if data_dir is not None:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        app = await cls.new(conf, auto_form=auto_form, start_radio=False)
    except Exception as exc:  # unwritable data dir, corrupt database
        raise AdapterStartError(
            f"{where}: cannot open the zigbee database {conf[zconf.CONF_DATABASE]!r}: {exc}"
        ) from None
    try:
        async with asyncio.timeout(radio.startup_timeout_s):
            await app.startup(auto_form=auto_form)
    except BaseException as exc:
        # startup() only disconnects the radio; close the database too or its thread outlives us
        await app.shutdown()
        if not isinstance(exc, Exception):
            raise
        raise AdapterStartError(_explain(where, exc, radio.startup_timeout_s)) from None
    return app


def _explain(where: str, exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return (
            f"{where}: no answer within {timeout_s:g} s (zigbee.radio.startup_timeout_s); "
            "is it the right device path and radio type?"
        )
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 4:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, FileNotFoundError):
            return f"{where}: no such device ({e.strerror or e})"
        if isinstance(e, PermissionError):
            return f"{where}: permission denied ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return f"{where}: connection refused ({e.strerror or e})"
    detail = "; ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__ for e in chain)
    return f"{where}: cannot start: {detail}"


async def open_controller(
    cfg: ZigbeeConfig, data_dir: Path, *, connect: bool = True
) -> ControllerApplication:
    """The application with its database loaded and (when `connect`) the radio connected but no network started:
    for network management while no gateway holds the radio. AdapterStartError naming the radio path on failure."""
    radio = cfg.radio
    cls = app_class_for(radio.type)
    conf = build_zigpy_config(cfg, data_dir)
    where = f"zigbee radio {radio.type!r} at {radio.device!r}"
    try:
        app = await cls.new(conf, auto_form=False, start_radio=False)
    except Exception as exc:
        raise AdapterStartError(
            f"{where}: cannot open the zigbee database {conf[zconf.CONF_DATABASE]!r}: {exc}"
        ) from None
    if not connect:
        return app
    try:
        async with asyncio.timeout(radio.startup_timeout_s):
            await app.connect()
    except BaseException as exc:
        await app.shutdown()
        if not isinstance(exc, Exception):
            raise
        raise AdapterStartError(_explain(where, exc, radio.startup_timeout_s)) from None
    return app

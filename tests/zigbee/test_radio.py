"""otagw's config path builds bellows' ControllerApplication correctly; radio failures become AdapterStartError."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import bellows.zigbee.application
import pytest

from adapters.zigbee.adapter import ZigbeeAdapter
from adapters.zigbee.radio import AdapterStartError, app_class_for, build_zigpy_config, start_controller
from gateway.clock import ManualClock
from gateway.config import ConfigError, parse_config


def zcfg(**radio):
    return parse_config({"zigbee": {"enabled": True, "radio": {"type": "ezsp", **radio}}}).zigbee


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_builds_bellows_app_with_our_settings(tmp_path):
    cfg = zcfg(device="/dev/ttyACM3", baudrate=460800, flow_control="hardware")
    raw = build_zigpy_config(cfg, tmp_path)
    cls = app_class_for("ezsp")
    assert cls is bellows.zigbee.application.ControllerApplication
    app = cls(raw)  # bellows validates the dict with its own schema
    assert app.config["device"] == {"path": "/dev/ttyACM3", "baudrate": 460800, "flow_control": "hardware"}
    assert app.config["database_path"] == str(tmp_path / "zigbee.db")
    assert app.config["ota"]["providers"] == [] and app.config["ota"]["broadcast_enabled"] is False
    assert app.config["use_thread"] is False


def test_unknown_keys_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"zigbee\.radio\.baud"):
        parse_config({"zigbee": {"radio": {"baud": 1}}})
    with pytest.raises(ConfigError, match=r"zigbee.block_size_caps\[0\].max_block_bytes"):
        parse_config({"zigbee": {"block_size_caps": [{"manufacturer": 1, "max_block_bytes": 300}]}})


async def test_unreachable_socket_path_is_a_clear_error_naming_the_path(tmp_path):
    path = f"socket://127.0.0.1:{free_port()}"
    adapter = ZigbeeAdapter(
        zcfg(device=path, startup_timeout_s=10),
        core=None,
        clock=ManualClock(),  # type: ignore[arg-type]
        data_dir=tmp_path,
    )
    with pytest.raises(AdapterStartError) as err:
        await adapter.start()
    assert path in str(err.value) and "refused" in str(err.value)
    await adapter.stop()  # the caller carries on (e.g. serving Matter); stopping is harmless


async def test_missing_serial_device_is_a_clear_error(tmp_path):
    with pytest.raises(AdapterStartError, match=r"'/dev/ttyOTAGW-nope': no such device"):
        await start_controller(zcfg(device="/dev/ttyOTAGW-nope", startup_timeout_s=10), tmp_path)


async def test_bellows_speaks_ash_to_the_configured_socket(tmp_path, monkeypatch):
    """bellows, started through otagw's config path, opens the socket and sends an ASH RST frame; the fake
    NCP hangs up (a full EZSP simulation is a later issue) and otagw reports it naming the path."""
    import bellows.ezsp
    import bellows.uart

    # bellows' own real-time waits (for a zigbeed startup reset, for RSTACK): shortened for the test only
    monkeypatch.setattr(bellows.ezsp, "NETWORK_COORDINATOR_STARTUP_RESET_WAIT", 0.05)
    monkeypatch.setattr(bellows.uart, "RESET_TIMEOUT", 0.05)
    received = bytearray()
    got_frame = asyncio.Event()

    async def ncp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not got_frame.is_set():
            chunk = await reader.read(64)
            if not chunk:
                break
            received.extend(chunk)
            if b"\x7e" in received:
                got_frame.set()
        writer.close()

    server = await asyncio.start_server(ncp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    path = f"socket://127.0.0.1:{port}"
    try:
        with pytest.raises(AdapterStartError) as err:
            await start_controller(zcfg(device=path, startup_timeout_s=10), tmp_path)
    finally:
        server.close()
        await server.wait_closed()
    assert path in str(err.value)
    assert b"\xc0\x38\xbc\x7e" in bytes(received), bytes(received).hex(" ")  # ASH RST + CRC + flag
    assert not (Path(tmp_path) / "zigbee.db-journal").exists()

"""The composition root: adapters started by slot (lazily, only when enabled), a failing adapter reported and the
rest serving, health over HTTP, SIGHUP-style policy reload, and an orderly stop."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config import load_config
from gateway.service import AdapterSlot, Gateway, GatewayStartError, load_adapter_class
from tests.api import fake_adapters
from tests.api.conftest import TOKEN

SLOTS = (
    AdapterSlot("good", "tests.api.fake_adapters:Good", lambda c: True),
    AdapterSlot("zigbee", "tests.api.fake_adapters:NoRadio", lambda c: True),
    AdapterSlot("crash", "tests.api.fake_adapters:Crashes", lambda c: True),
    AdapterSlot("matter", "adapters.nonexistent.node:Node", lambda c: True),
    AdapterSlot("off", "tests.api.never_imported:X", lambda c: False),
)


def write_config(tmp_path: Path, **extra: object) -> Path:
    data = {"data_dir": "data", "api": {"listen": "127.0.0.1:0", "token": TOKEN}, **extra}
    path = tmp_path / "otagw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_gateway_serves_despite_failing_adapters(tmp_path: Path) -> None:
    fake_adapters.EVENTS.clear()
    gw = Gateway(load_config(write_config(tmp_path)), slots=SLOTS)
    await gw.start()
    try:
        health = gw.health()
        assert health["core"] == "running"
        states = {k: (v["state"], v["error"]) for k, v in health["adapters"].items()}
        assert states["good"] == ("running", None)
        assert states["zigbee"] == ("failed", "zigbee.radio.device /dev/ttyUSB0: no such device")
        assert states["crash"] == ("failed", "boom")
        assert states["matter"][0] == "unavailable" and "not part of this installation" in states["matter"][1]
        assert states["off"] == ("disabled", None)
        assert "tests.api.never_imported" not in sys.modules
        assert gw.api_url is not None and gw.api_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.api_url + "/healthz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["status"] == "degraded" and body["adapters"]["good"]["state"] == "running"
            async with s.get(
                gw.api_url + "/api/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert [d["device_id"] for d in await resp.json()] == [
                    "zigbee:pan:1:00:00:00:00:00:00:00:01:1"
                ]
    finally:
        await gw.stop()
    # a failed adapter is stopped at once (it may have half-started); the running one at shutdown
    assert fake_adapters.EVENTS == [
        "good.start",
        "noradio.start",
        "NoRadio.stop",
        "Crashes.stop",
        "Good.stop",
    ]
    assert gw.health()["core"] == "stopped" and gw.health()["adapters"]["good"]["state"] == "stopped"
    await gw.stop()  # idempotent


async def test_reload_applies_new_policy(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    gw = Gateway(load_config(path), slots=())
    await gw.start()
    try:
        path.write_text(
            yaml.safe_dump(
                {
                    "data_dir": "data",
                    "api": {"listen": "127.0.0.1:0", "token": TOKEN},
                    "policy": {"callback_interval_s": 600},
                }
            )
        )
        assert await gw.reload() is True
        assert gw.core.config.policy.callback_interval_s == 600
        path.write_text("policy: [")
        assert await gw.reload() is False  # a broken file leaves the running policy alone
        assert gw.core.config.policy.callback_interval_s == 600
    finally:
        await gw.stop()


async def test_busy_port_is_a_start_error(tmp_path: Path) -> None:
    first = Gateway(load_config(write_config(tmp_path)), slots=())
    await first.start()
    try:
        assert first.api_url is not None
        port = first.api_url.rsplit(":", 1)[1]
        other = tmp_path / "b"
        other.mkdir()
        cfg = load_config(write_config(other, api={"listen": f"127.0.0.1:{port}", "token": TOKEN}))
        second = Gateway(cfg, slots=())
        with pytest.raises(GatewayStartError, match=f"api.listen 127.0.0.1:{port}: cannot listen"):
            await second.start()
        assert second.health()["core"] == "stopped"
    finally:
        await first.stop()


def test_load_adapter_class_reasons() -> None:
    assert load_adapter_class("tests.api.fake_adapters:Good") is fake_adapters.Good
    with pytest.raises(LookupError, match="has no class Nope"):
        load_adapter_class("tests.api.fake_adapters:Nope")
    with pytest.raises(LookupError, match="not part of this installation"):
        load_adapter_class("adapters.nothing_here:X")

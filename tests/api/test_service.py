"""The composition root: adapters started from their plugins (lazily, only when enabled), a failing adapter reported
and the rest serving, health over HTTP (503 while an enabled adapter is down, 200 once it recovered by itself through
the backoff retries), SIGHUP-style policy reload, and an orderly stop."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.clock import ManualClock
from gateway.config import Config, load_config
from gateway.plugins import LazyAdapterPlugin, load_object, load_plugins
from gateway.service import Gateway, GatewayStartError
from tests.api import fake_adapters
from tests.api.conftest import TOKEN

SLOTS = (
    LazyAdapterPlugin("good", "tests.api.fake_adapters:Good"),
    LazyAdapterPlugin("zigbee", "tests.api.fake_adapters:NoRadio"),
    LazyAdapterPlugin("crash", "tests.api.fake_adapters:Crashes"),
    LazyAdapterPlugin("matter", "adapters.nonexistent.node:Node"),
    LazyAdapterPlugin("sdk", "tests.api.fake_adapters:Good", required_modules=("no_such_sdk_here",)),
    LazyAdapterPlugin("off", "tests.api.never_imported:X", is_enabled=lambda c: False),
)


def write_config(tmp_path: Path, **extra: object) -> Path:
    data = {"data_dir": "data", "api": {"listen": "127.0.0.1:0", "token": TOKEN}, **extra}
    path = tmp_path / "otagw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_gateway_serves_despite_failing_adapters(tmp_path: Path) -> None:
    fake_adapters.EVENTS.clear()
    gw = Gateway(load_config(write_config(tmp_path)), plugins=SLOTS, clock=ManualClock())
    await gw.start()
    try:
        health = gw.health()
        assert health["core"] == "running"
        states = {k: (v["state"], v["error"]) for k, v in health["adapters"].items()}
        assert states["good"] == ("running", None)
        assert states["zigbee"] == ("failed", "zigbee.radio.device /dev/ttyUSB0: no such device")
        assert states["crash"] == ("failed", "boom")
        assert states["matter"][0] == "unavailable" and "not part of this installation" in states["matter"][1]
        assert states["sdk"][0] == "unavailable" and "'no_such_sdk_here' is not installed" in states["sdk"][1]
        assert states["off"] == ("disabled", None)
        assert health["ready"] is False
        assert health["adapters"]["crash"]["next_retry_at"] == gw.clock.now() + 5.0
        assert health["adapters"]["matter"]["next_retry_at"] is None  # not installed: never retried
        assert "tests.api.never_imported" not in sys.modules
        assert gw.api_url is not None and gw.api_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.api_url + "/healthz") as resp:
                assert resp.status == 503  # enabled adapters are down: not ready
                body = await resp.json()
                assert body["status"] == "degraded" and body["adapters"]["good"]["state"] == "running"
                assert body["adapters"]["zigbee"] == {
                    "state": "failed",
                    "error": "zigbee.radio.device /dev/ttyUSB0: no such device",
                    "attempts": 1,
                    "next_retry_at": gw.clock.now() + 5.0,
                    "details": None,
                }
            async with s.get(gw.api_url + "/livez") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "alive"
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
    gw = Gateway(load_config(path), plugins=())
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
    first = Gateway(load_config(write_config(tmp_path)), plugins=())
    await first.start()
    try:
        assert first.api_url is not None
        port = first.api_url.rsplit(":", 1)[1]
        other = tmp_path / "b"
        other.mkdir()
        cfg = load_config(write_config(other, api={"listen": f"127.0.0.1:{port}", "token": TOKEN}))
        second = Gateway(cfg, plugins=())
        with pytest.raises(GatewayStartError, match=f"api.listen 127.0.0.1:{port}: cannot listen"):
            await second.start()
        assert second.health()["core"] == "stopped"
    finally:
        await first.stop()


def test_load_object_reasons() -> None:
    assert load_object("tests.api.fake_adapters:Good") is fake_adapters.Good
    with pytest.raises(LookupError, match="has no attribute Nope"):
        load_object("tests.api.fake_adapters:Nope")
    with pytest.raises(LookupError, match="not part of this installation"):
        load_object("adapters.nothing_here:X")


def test_installed_plugins_register_through_entry_points() -> None:
    """The adapters declare themselves in pyproject.toml (group otagw.adapters); loading them imports no stack."""
    before = set(sys.modules)
    plugins = load_plugins()
    assert {"matter", "zigbee"} <= set(plugins)
    assert plugins["zigbee"].config_section == "zigbee" and plugins["matter"].config_section == "matter"
    assert plugins["matter"].cli_group() is not None
    # its settings are a section of the one config (and so of the generated config reference)
    for plugin in plugins.values():
        assert plugin.config_section in Config.model_fields
    newly = set(sys.modules) - before
    assert not any(m == "zigpy" or m.startswith(("zigpy.", "chip.")) for m in newly)

    from click.testing import CliRunner

    from gateway.cli import main

    # the plugin's group, attached by the CLI
    result = CliRunner().invoke(main, ["matter", "nodes", "--help"])
    assert result.exit_code == 0 and "commissioned onto the gateway's fabric" in result.output


async def test_failed_adapter_is_retried_with_backoff_and_health_recovers(tmp_path: Path) -> None:
    """A radio that appears late: start fails 3 times, the gateway retries after 5, 10, 20 s (fake clock), /healthz
    is 503 naming the adapter, its reason and next retry until it runs, then 200."""
    fake_adapters.EVENTS.clear()
    fake_adapters.FlakyRadio.failures_left = 3
    clock = ManualClock()
    gw = Gateway(
        load_config(write_config(tmp_path)),
        plugins=(LazyAdapterPlugin("zigbee", "tests.api.fake_adapters:FlakyRadio"),),
        clock=clock,
    )
    await gw.start()
    try:
        assert gw.api_url is not None

        async def healthz() -> tuple[int, dict[str, object]]:
            async with aiohttp.ClientSession() as s, s.get(gw.api_url + "/healthz") as resp:
                return resp.status, await resp.json()

        status, body = await healthz()
        zigbee = body["adapters"]["zigbee"]  # type: ignore[index]
        assert status == 503 and zigbee["state"] == "failed" and zigbee["attempts"] == 1
        assert zigbee["error"] == "radio not plugged in (2 more failures)"
        assert zigbee["next_retry_at"] == clock.now() + 5.0
        t0 = clock.now()
        await clock.advance(4.9)
        assert fake_adapters.EVENTS.count("flaky.start") == 1  # not before its time
        await clock.advance(0.1)
        assert fake_adapters.EVENTS.count("flaky.start") == 2
        status, body = await healthz()
        assert status == 503 and body["adapters"]["zigbee"]["next_retry_at"] == t0 + 5.0 + 10.0  # type: ignore[index]
        await clock.advance(10.0)
        assert fake_adapters.EVENTS.count("flaky.start") == 3
        await clock.advance(19.9)
        assert gw.adapter("zigbee").state == "failed"  # type: ignore[union-attr]
        await clock.advance(0.1)
        assert fake_adapters.EVENTS.count("flaky.start") == 4
        status, body = await healthz()
        assert status == 200 and body["status"] == "ok"
        assert body["adapters"]["zigbee"] == {  # type: ignore[index]
            "state": "running",
            "error": None,
            "attempts": 0,
            "next_retry_at": None,
            "details": {"radio": "found"},
        }
        await clock.advance(1000.0)
        assert fake_adapters.EVENTS.count("flaky.start") == 4  # running: no more attempts
    finally:
        await gw.stop()
    assert (
        fake_adapters.EVENTS.count("FlakyRadio.stop") == 4
    )  # each failed attempt cleaned up, then the shutdown


async def test_retry_stops_with_the_gateway(tmp_path: Path) -> None:
    fake_adapters.EVENTS.clear()
    fake_adapters.FlakyRadio.failures_left = 100
    clock = ManualClock()
    gw = Gateway(
        load_config(write_config(tmp_path)),
        plugins=(LazyAdapterPlugin("zigbee", "tests.api.fake_adapters:FlakyRadio"),),
        clock=clock,
        retry_max_s=8.0,
    )
    await gw.start()
    await clock.advance(5.0 + 8.0 + 8.0)  # the delay doubles up to its cap
    assert fake_adapters.EVENTS.count("flaky.start") == 4
    await gw.stop()
    await clock.advance(100.0)
    assert fake_adapters.EVENTS.count("flaky.start") == 4


async def test_adapter_without_its_sdk_is_one_line_and_the_rest_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Matter enabled on a platform without the chip SDK's wheel: one line at start, never retried, 503 naming it,
    and the other adapter runs."""
    clock = ManualClock()
    gw = Gateway(
        load_config(write_config(tmp_path)),
        plugins=(
            LazyAdapterPlugin(
                "matter",
                "tests.api.fake_adapters:Good",
                required_modules=("chip_sdk_not_here",),
                install_hint="no wheel for this platform",
            ),
            LazyAdapterPlugin("zigbee", "tests.api.fake_adapters:Good"),
        ),
        clock=clock,
    )
    with caplog.at_level("INFO", logger="otagw.service"):
        await gw.start()
        try:
            await clock.advance(3600.0)
            health = gw.health()
        finally:
            await gw.stop()
    lines = [r.getMessage() for r in caplog.records if "matter" in r.getMessage()]
    assert lines == [
        "matter adapter unavailable: the Python module 'chip_sdk_not_here' is not installed "
        "(no wheel for this platform); serving without it"
    ]
    assert (
        health["adapters"]["matter"]["state"] == "unavailable"
        and health["adapters"]["matter"]["attempts"] == 0
    )
    assert health["adapters"]["zigbee"]["state"] == "running" and health["ready"] is False

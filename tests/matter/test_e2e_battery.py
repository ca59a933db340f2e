"""End to end: a battery-powered matter.js device (Power Source cluster, BAT feature) is read by the Matter adapter
over the chip SDK controller; below the policy's `min_battery_percent` its update is deferred (QueryImage answered
Busy with the reason), and once its charge is back above the minimum the same device updates.

Same netns pair and fixtures as test_e2e_ota.py (namespace A: the gateway; B: the matter.js device).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from .netns import NetnsPair
from .test_e2e_ota import Gateway, _skip_unless_peers, devices, image_by_cli, start_gateway, stop_gateway
from .test_e2e_support import MatterJsDevice

pytestmark = pytest.mark.interop

__all__ = ["devices"]  # the fixture, re-used


async def _wait_record(gw: Gateway, node_id: int, what: str, ok: object, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        rec = gw.record(node_id)
        if rec is not None and ok(rec):  # type: ignore[operator]
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"node 0x{node_id:X}: {what} not seen after {timeout} s: {rec}")
        await asyncio.sleep(0.2)


async def test_low_battery_device_is_deferred_then_updates_once_charged(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 100_000)
    gw = await start_gateway(netns_pair, tmp_path, [image], min_battery_percent=30)
    try:
        dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "dev", battery_percent=12)
        devices.append(dev)
        node_id = await gw.commission(dev, await dev.start())
        rec = gw.record(node_id)
        assert rec is not None and rec.power_source == "battery" and rec.battery_percent == 12
        device_id = gw.adapter.key(node_id).device_id
        (item,) = [i for i in gw.core.plan() if i.device_id == device_id]
        assert "battery at 12 % is below the minimum 30 %" in item.reason, item

        # the device asks (announced) and is answered Busy: deferred, nothing downloaded
        await gw.adapter.query_now(node_id)
        rec = await _wait_record(gw, node_id, "Busy answer", lambda r: r.last_answer == "Busy", 60)
        assert "battery at 12 %" in (rec.last_answer_reason or ""), rec  # type: ignore[attr-defined]
        assert not [e for e in dev.events if e["event"] == "applied"]
        assert gw.adapter.provider is not None and not gw.adapter.provider.transfers

        # charged: the adapter reads the new charge from the Power Source cluster, the next query gets the update
        dev.set_battery(80)
        await dev.wait_for(lambda e: e["event"] == "battery" and e["percent"] == 80, 30, "battery at 80 %")
        await gw.adapter.refresh_power(node_id)
        rec = gw.record(node_id)
        assert rec is not None and rec.battery_percent == 80
        await gw.adapter.query_now(node_id)
        applied = await dev.wait_for(lambda e: e["event"] == "applied", 120, "applied")
        assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        rec = await gw.wait_state(node_id, "updated", 60)
        assert rec.current_version == 2 and rec.power_source == "battery"
    finally:
        await stop_gateway(gw)


async def test_device_without_power_source_is_unknown_not_guessed(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    _skip_unless_peers()
    gw = await start_gateway(netns_pair, tmp_path, [])
    try:
        dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "dev")
        devices.append(dev)
        node_id = await gw.commission(dev, await dev.start())
        rec = gw.record(node_id)
        assert rec is not None and rec.power_source is None and rec.battery_percent is None
    finally:
        await stop_gateway(gw)


async def test_device_that_never_comes_back_after_apply_fails_not_back(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    """The device installs and never powers on again: once the verify deadline passed, the core's sweep fails the
    record with failure_kind "not_back" (this flow runs in real time, so the deadline is the config minimum)."""
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 100_000)
    gw = await start_gateway(netns_pair, tmp_path, [image], verify_deadline_s=10)
    try:
        dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "dev")
        dev.comes_back = False
        devices.append(dev)
        node_id = await gw.commission(dev, await dev.start())
        await gw.adapter._announce_due()
        await dev.wait_for(lambda e: e["event"] == "applied", 120, "applied")
        assert dev.proc is None or await asyncio.wait_for(dev.proc.wait(), 30) == 75
        rec = await _wait_record(
            gw, node_id, "apply", lambda r: r.state.value in ("applying", "verifying"), 30
        )
        deadline = time.monotonic() + 40
        while True:
            await gw.core.sweep()
            rec = gw.record(node_id)
            assert rec is not None
            if rec.state.value == "failed" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert rec.state.value == "failed", (rec.state, rec.state_reason)
        assert rec.failure_kind == "not_back", (rec.failure_kind, rec.state_reason)
        assert "not back after update" in rec.state_reason
        assert dev.reboots == 0 and not [e for e in dev.events if e["event"] == "restarted"]
    finally:
        await stop_gateway(gw)

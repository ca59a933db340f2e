"""The Matter adapter's own logic without peers: start-up refusals with a reason, and how subscription reports and
events from the fabric admin feed the real UpdateCore (version read-back, requestor states, failures)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.matter import adapter as adapter_mod
from adapters.matter.adapter import AdapterStartError, MatterAdapter
from adapters.matter.provider import ProviderFabric
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.interface import DeviceInfo
from gateway.core.service import UpdateCore
from gateway.formats import build_matter_image
from gateway.store.store import ImageStore

CFID = 0x0102_0304_0506_0708
NODE = 0x1001


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[MatterAdapter, UpdateCore]]:
    # these tests exercise the adapter, not approval: images are offered as soon as they are added
    cfg = parse_config({"data_dir": str(tmp_path), "policy": {"auto_approve": True}})
    store = ImageStore(tmp_path)
    await store.open()
    await store.add_bytes(
        build_matter_image(
            b"x" * 3000,
            vendor_id=0xFFF1,
            product_id=0x8000,
            software_version=2,
            software_version_string="2.0",
        ),
        file_name="fw.ota",
    )
    clock = ManualClock()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    ad = MatterAdapter(cfg.matter, core, clock, tmp_path, control_socket=False)
    ad.fabric = ProviderFabric(1, 0xA110001, CFID)  # as start() sets it, without a fabric admin
    yield ad, core
    await core.stop()
    await store.close()


async def _offer_and_apply(core: UpdateCore, ad: MatterAdapter) -> Any:
    key = ad.key(NODE)
    res = await core.query(DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1))
    token = res.token  # type: ignore[union-attr]
    await core.download_complete(token)
    await core.apply_request(token, 2)
    return core.get_device(key.device_id)


async def test_start_refuses_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter_mod, "runner_unavailable_reason", lambda: "needs root (mount namespace)")
    cfg = parse_config({"data_dir": str(tmp_path)})
    ad = MatterAdapter(cfg.matter, None, ManualClock(), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(AdapterStartError, match="needs root"):
        await ad.start()
    monkeypatch.setattr(adapter_mod, "ipv6_unavailable_reason", lambda: "cannot open an IPv6 UDP socket")
    with pytest.raises(AdapterStartError, match="IPv6"):
        await ad.start()
    await ad.stop()  # nothing was started: stop is a no-op


async def test_software_version_report_verifies_the_install(setup: tuple[MatterAdapter, UpdateCore]) -> None:
    ad, core = setup
    rec = await _offer_and_apply(core, ad)
    assert rec.state.value == "applying"
    await ad._on_report({"node_id": NODE, "kind": "attribute", "attribute": "SoftwareVersion", "value": 1})
    assert core.get_device(ad.key(NODE).device_id).state.value == "applying"  # still the old version: wait
    await ad._on_report(
        {"node_id": NODE, "kind": "attribute", "attribute": "SoftwareVersionString", "value": "2.0"}
    )
    await ad._on_report({"node_id": NODE, "kind": "attribute", "attribute": "SoftwareVersion", "value": 2})
    rec = core.get_device(ad.key(NODE).device_id)
    assert (rec.state.value, rec.current_version, rec.current_version_string) == ("updated", 2, "2.0")


async def test_requestor_states_and_download_error_feed_the_record(
    setup: tuple[MatterAdapter, UpdateCore],
) -> None:
    ad, core = setup
    clock = ad.clock
    key = ad.key(NODE)
    await core.query(DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1))
    await ad._on_report({"node_id": NODE, "kind": "attribute", "attribute": "UpdateState", "value": 4})
    await ad._on_report(
        {"node_id": NODE, "kind": "attribute", "attribute": "UpdateStateProgress", "value": 40}
    )
    rec = core.get_device(key.device_id)
    assert rec.state.value == "downloading" and rec.reported_percent == 40
    # the requestor's download error ends the episode with its reason; the following Idle transition adds nothing
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "DownloadError",
            "data": {"softwareVersion": 2, "bytesDownloaded": 4096, "progressPercent": 40, "platformCode": 3},
        }
    )
    rec = core.get_device(key.device_id)
    assert rec.state.value == "failed"
    assert "download error at 4096 bytes (40%, platform code 3)" in (rec.state_reason or "")
    assert rec.failures == 1 and rec.next_retry_at is not None
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "StateTransition",
            "data": {"previousState": 4, "newState": 1, "reason": 2, "targetSoftwareVersion": 2},
        }
    )
    rec = core.get_device(key.device_id)
    assert rec.failures == 1 and "download error at 4096 bytes" in (rec.state_reason or "")
    # then the policy's retry: held back until the back-off passes, offered again after it
    info = DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1)
    held = await core.query(info)
    assert getattr(held, "token", None) is None
    await clock.advance(core.config.policy.retry_backoff_s + 1)
    again = await core.query(info)
    assert getattr(again, "token", None) is not None
    assert core.get_device(key.device_id).state.value == "querying"


async def test_failed_transition_without_download_error_fails_the_record(
    setup: tuple[MatterAdapter, UpdateCore],
) -> None:
    # e.g. matter.js rejecting the downloaded image (OtaImageError): Downloading -> Idle (Failure), no DownloadError
    ad, core = setup
    key = ad.key(NODE)
    await core.query(DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1))
    await ad._on_report({"node_id": NODE, "kind": "attribute", "attribute": "UpdateState", "value": 4})
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "StateTransition",
            "data": {"previousState": 4, "newState": 1, "reason": 2, "targetSoftwareVersion": 2},
        }
    )
    rec = core.get_device(key.device_id)
    assert rec.state.value == "failed" and "Downloading -> Idle (Failure)" in (rec.state_reason or "")
    # a plain return to Idle (Success) after a NotAvailable is not a failure
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "StateTransition",
            "data": {"previousState": 2, "newState": 1, "reason": 1, "targetSoftwareVersion": None},
        }
    )
    assert core.get_device(key.device_id).failures == 1


async def test_rollback_fails_the_install(setup: tuple[MatterAdapter, UpdateCore]) -> None:
    ad, core = setup
    rec = await _offer_and_apply(core, ad)
    assert rec.state.value == "applying"
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "StateTransition",
            "data": {"previousState": 5, "newState": 7, "reason": 2, "targetSoftwareVersion": 2},
        }
    )
    rec = core.get_device(ad.key(NODE).device_id)
    assert rec.state.value == "failed" and "Applying -> RollingBack" in (rec.state_reason or "")


class _SlowReadAdmin:
    """Stands in for the fabric admin's read-back only (the real one needs ten devices rebooting): every read waits
    at a gate, so the test sees how many are in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.gate = asyncio.Event()

    async def node_info(
        self, node_id: int, timeout_ms: int | None = None, *, fresh_session: bool = False
    ) -> dict[str, Any]:
        assert fresh_session  # a read-back after a reboot never reuses the dead session
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return {"basic": {"SoftwareVersion": 2, "SoftwareVersionString": "2.0"}}


async def test_read_backs_after_reboot_run_in_parallel(tmp_path: Path) -> None:
    cfg = parse_config(
            {"data_dir": str(tmp_path), "policy": {"auto_approve": True, "budgets": {"per_network_default": 16}}}
        )
    store = ImageStore(tmp_path)
    await store.open()
    await store.add_bytes(
        build_matter_image(
            b"x" * 3000,
            vendor_id=0xFFF1,
            product_id=0x8000,
            software_version=2,
            software_version_string="2.0",
        ),
        file_name="fw.ota",
    )
    clock = ManualClock()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    try:
        ad = MatterAdapter(cfg.matter, core, clock, tmp_path, control_socket=False)
        ad.fabric = ProviderFabric(1, 0xA110001, CFID)
        nodes = [0x2000 + i for i in range(10)]
        for nid in nodes:
            key = ad.key(nid)
            res = await core.query(DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1))
            await core.download_complete(res.token)  # type: ignore[union-attr]
            await core.apply_request(res.token, 2)  # type: ignore[union-attr]
            ad._adopted.add(nid)
        admin = _SlowReadAdmin()
        ad.admin = admin  # type: ignore[assignment]
        now = clock.monotonic()
        await ad._verify_installs(now)  # schedules the first read-back after the reboot grace
        assert admin.most == 0
        task = asyncio.create_task(ad._verify_installs(now + adapter_mod.VERIFY_BACKOFF_S[0]))
        for _ in range(100):
            if admin.in_flight == len(nodes):
                break
            await asyncio.sleep(0)
        assert admin.most == len(nodes)  # all ten reads in flight together, none waited for another
        admin.gate.set()
        await task
        states = {core.get_device(ad.key(n).device_id).state.value for n in nodes}  # type: ignore[union-attr]
        assert states == {"updated"}
    finally:
        await core.stop()
        await store.close()

"""The Matter adapter's own logic without peers: start-up refusals with a reason, and how subscription reports and
events from the fabric admin feed the real UpdateCore (version read-back, requestor states, failures)."""

from __future__ import annotations

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


async def test_requestor_states_and_rollback_feed_the_record(setup: tuple[MatterAdapter, UpdateCore]) -> None:
    ad, core = setup
    key = ad.key(NODE)
    await core.query(DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1))
    await ad._on_report({"node_id": NODE, "kind": "attribute", "attribute": "UpdateState", "value": 4})
    await ad._on_report(
        {"node_id": NODE, "kind": "attribute", "attribute": "UpdateStateProgress", "value": 40}
    )
    rec = core.get_device(key.device_id)
    assert rec.state.value == "downloading" and rec.reported_percent == 40
    # a download error is not an update failure (the requestor retries with the same token)
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "DownloadError",
            "data": {"softwareVersion": 2, "bytesDownloaded": 4096},
        }
    )
    assert core.get_device(key.device_id).state.value == "downloading"
    await ad._on_report(
        {
            "node_id": NODE,
            "kind": "event",
            "event": "StateTransition",
            "data": {"previousState": 5, "newState": 7, "reason": 2, "targetSoftwareVersion": 2},
        }
    )
    rec = core.get_device(key.device_id)
    assert rec.state.value == "failed" and "requestor state transition" in (rec.state_reason or "")

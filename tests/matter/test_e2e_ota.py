"""End to end: otagw's Matter adapter (chip SDK fabric admin + our Python provider node) updates matter.js devices.

Namespace A: the gateway (UpdateCore + ImageStore + MatterAdapter: provider node on UDP 5540 + controller worker).
Namespace B: matter.js OTA requestor devices (tests/js/ota_requestor_device.mjs, OTA_FAST=1).
Each flow: commission with the chip SDK controller -> DefaultOTAProviders -> AnnounceOTAProvider (decided from the
core's plan) -> QueryImage -> BDX download -> ApplyUpdateRequest -> the device installs, restarts with the new
version -> the core marks it updated once SoftwareVersion is read back. The image the device installed is compared
byte for byte with the stored one (sha-256 of the file the device saved).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.matter.adapter import MatterAdapter
from adapters.matter.fabric.controller import ControllerError, ControllerRunner, runner_unavailable_reason
from adapters.matter.provider import MatterOtaProvider
from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore

from .netns import NetnsPair
from .test_e2e_support import JS_DIR, MatterJsDevice, export_paas, node_unavailable_reason

pytestmark = pytest.mark.interop

PROVIDER = 0x0000_0000_0A11_0001
REPO = Path(__file__).resolve().parents[2]
VID, PID = 0xFFF1, 0x8000


def _skip_unless_peers() -> None:
    for reason in (runner_unavailable_reason(), node_unavailable_reason()):
        if reason:
            pytest.skip(reason)


def make_payload(size: int, seed: int = 1) -> bytes:
    return hashlib.shake_256(f"otagw-e2e-{seed}".encode()).digest(size)


def image_by_cli(tmp: Path, version: int, size: int, pid: int = PID) -> Path:
    """`otagw image create-matter` (the gateway's own writer)."""
    payload, out = tmp / f"payload-{version}-{pid:x}.bin", tmp / f"otagw-{version}-{pid:x}.ota"
    payload.write_bytes(make_payload(size, version))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "image",
            "create-matter",
            "--vendor-id",
            hex(VID),
            "--product-id",
            hex(pid),
            "--version",
            str(version),
            "--version-string",
            f"{version}.0",
            str(payload),
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def image_by_matterjs(tmp: Path, version: int, size: int, pid: int = PID) -> Path:
    """matter.js's OtaImageWriter (an independent writer of the format)."""
    payload, out = tmp / f"payload-js-{version}.bin", tmp / f"matterjs-{version}.ota"
    payload.write_bytes(make_payload(size, version + 100))
    jobs = tmp / "jobs.json"
    jobs.write_text(
        json.dumps(
            [
                {
                    "op": "write",
                    "payload": str(payload),
                    "out": str(out),
                    "options": {
                        "vendorId": VID,
                        "productId": pid,
                        "softwareVersion": version,
                        "softwareVersionString": f"{version}.0",
                    },
                }
            ]
        )
    )
    res = subprocess.run(
        ["node", str(JS_DIR / "ota_image_writer.mjs"), str(jobs)],
        cwd=JS_DIR,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(res.stdout)[0]["ok"], res.stdout
    return out


@dataclass
class Gateway:
    core: UpdateCore
    store: ImageStore
    adapter: MatterAdapter
    pair: NetnsPair
    tmp: Path

    def record(self, node_id: int) -> Any:
        return self.core.get_device(self.adapter.key(node_id).device_id)

    async def wait_state(self, node_id: int, state: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record(node_id)
            if rec is not None and rec.state.value == state:
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"node 0x{node_id:X} not {state} after {timeout} s: "
                    f"{rec.state.value if rec else None} ({rec.state_reason if rec else ''})"
                )
            await asyncio.sleep(0.2)

    async def commission(self, device: MatterJsDevice, ready: dict[str, Any]) -> int:
        got = await self.adapter.commission(ready["qrPairingCode"], timeout_s=30)
        return int(got["node_id"])


async def start_gateway(pair: NetnsPair, tmp: Path, images: list[Path], **policy: Any) -> Gateway:
    paa = export_paas(tmp / "paa")
    cfg = parse_config(
        {
            "data_dir": str(tmp / "gw"),
            "policy": {"auto_approve": True, **policy},
            "matter": {
                "port": 5540,
                "interfaces": [pair.a.iface],
                "paa_trust_store": str(paa),
                "node_id": PROVIDER,
            },
        }
    )
    store = ImageStore(cfg.data_dir)
    await store.open()
    for p in images:
        await store.add_file(p)
    clock = SystemClock()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    adapter = MatterAdapter(cfg.matter, core, clock, cfg.data_dir, netns=pair.a.netns)
    with pair.enter(pair.a):
        await adapter.start()
    return Gateway(core, store, adapter, pair, tmp)


async def stop_gateway(gw: Gateway) -> None:
    await gw.adapter.stop()
    await gw.core.stop()
    await gw.store.close()


@pytest.fixture
async def devices() -> AsyncIterator[list[MatterJsDevice]]:
    made: list[MatterJsDevice] = []
    yield made
    for d in made:
        await d.stop()


async def _update_one(gw: Gateway, device: MatterJsDevice, image: Path, *, timeout: float = 90) -> int:
    ready = await device.start()
    node_id = await gw.commission(device, ready)
    rec = gw.record(node_id)
    assert rec is not None and rec.current_version == 1 and rec.vendor_id == VID
    await gw.adapter._announce_due()  # the plan says "update now" -> AnnounceOTAProvider
    applied = await device.wait_for(lambda e: e["event"] == "applied", timeout, "applied")
    assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert applied["size"] == image.stat().st_size
    await device.wait_for(lambda e: e["event"] == "restarted" and e["version"] == 2, 30, "restart on v2")
    rec = await gw.wait_state(node_id, "updated", 60)
    assert rec.current_version == 2
    return node_id


@pytest.mark.parametrize("maker", ["otagw-cli", "matterjs-writer"])
async def test_matterjs_device_updates_end_to_end(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice], maker: str
) -> None:
    _skip_unless_peers()
    image = (image_by_cli if maker == "otagw-cli" else image_by_matterjs)(tmp_path, 2, 200_000)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    try:
        dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "dev1")
        devices.append(dev)
        node_id = await _update_one(gw, dev, image)
        hist = await gw.core.history(gw.adapter.key(node_id).device_id)
        states = [h.new_state for h in hist]
        for s in ("querying", "downloading", "downloaded", "applying", "updated"):
            assert s in states, states
        assert gw.adapter.provider is not None
        (t,) = gw.adapter.provider.transfers.values()
        assert t.completed and t.bytes_acked == image.stat().st_size
    finally:
        await stop_gateway(gw)


async def test_two_devices_at_once(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 300_000)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    try:
        d1 = MatterJsDevice(
            netns_pair.b.netns, tmp_path / "d1", port=5540, discriminator=3840, passcode=20202021
        )
        d2 = MatterJsDevice(
            netns_pair.b.netns, tmp_path / "d2", port=5541, discriminator=3841, passcode=20202022
        )
        devices += [d1, d2]
        # one commissionable device at a time: both share netns B's address and host name, and the chip SDK's
        # on-network discovery can then reach the wrong one of two open commissioning windows
        n1 = await gw.commission(d1, await d1.start())
        n2 = await gw.commission(d2, await d2.start())
        await gw.adapter._announce_due()
        a1, a2 = await asyncio.gather(
            *(d.wait_for(lambda e: e["event"] == "applied", 120, "applied") for d in (d1, d2))
        )
        want = hashlib.sha256(image.read_bytes()).hexdigest()
        assert a1["sha256"] == a2["sha256"] == want
        for n in (n1, n2):
            await gw.wait_state(n, "updated", 60)
        assert gw.adapter.provider is not None
        tokens = {t.token for t in gw.adapter.provider.transfers.values()}
        assert len(tokens) == 2
    finally:
        await stop_gateway(gw)


async def test_unknown_product_gets_not_available(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 50_000)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    try:
        dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "other", product_id=0x8999)
        devices.append(dev)
        node_id = await gw.commission(dev, await dev.start())
        await gw.adapter.announce(node_id)  # the plan has nothing for it: announce by hand
        deadline = time.monotonic() + 60
        while (rec := gw.record(node_id)) is None or rec.last_query is None:
            assert time.monotonic() < deadline, "the device never queried"
            await asyncio.sleep(0.2)
        assert rec.state.value == "idle" and rec.target_version is None
        await asyncio.sleep(2)
        assert not [e for e in dev.events if e["event"] == "applied"]
        assert gw.adapter.provider is not None and not gw.adapter.provider.transfers
    finally:
        await stop_gateway(gw)


async def test_requestor_of_another_fabric_cannot_open_a_session(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 10_000)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    foreign = ControllerRunner(
        tmp_path / "foreign", netns=netns_pair.b.netns, timeout_s=90, isolation="private"
    )
    try:
        await asyncio.to_thread(foreign.start)
        await asyncio.to_thread(foreign.init_fabric, fabric_id=7, vendor_id=0xFFF1, controller_node_id=0x5555)
        with pytest.raises(ControllerError):
            await asyncio.to_thread(foreign.establish_case, PROVIDER, 8000)
        with pytest.raises(ControllerError):
            await asyncio.to_thread(
                foreign.invoke,
                PROVIDER,
                0,
                "OtaSoftwareUpdateProvider",
                "QueryImage",
                {"vendorID": VID, "productID": PID, "softwareVersion": 1, "protocolsSupported": [0]},
                8000,
            )
        assert gw.adapter.node is not None and not gw.adapter.node.sessions.secure
        assert not gw.core.list_devices()
    finally:
        await asyncio.to_thread(foreign.close)
        await stop_gateway(gw)


async def test_interrupted_transfer_restarts_and_ends_byte_identical(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    """Mid-download the provider aborts the BDX transfer (a BDX StatusReport); the token stays live, the requestor
    opens a new BDX exchange for the same designator, downloads again and installs exactly the stored image."""
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 1_500_000)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "dev")
    devices.append(dev)
    try:
        node_id = await gw.commission(dev, await dev.start())
        await gw.adapter._announce_due()
        deadline = time.monotonic() + 60
        while (rec := gw.record(node_id)) is None or rec.acked_offset < 200_000:
            assert time.monotonic() < deadline, "download did not start"
            await asyncio.sleep(0.02)
        token = rec.token
        provider = gw.adapter.provider
        assert provider is not None and provider.interrupt(token, "test: cut mid-transfer")
        applied = await dev.wait_for(lambda e: e["event"] == "applied", 120, "applied")
        assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        (t,) = provider.transfers.values()
        assert t.token == token and t.exchanges == 2 and t.completed
        assert t.last_error is not None and "cut mid-transfer" in t.last_error
        rec = await gw.wait_state(node_id, "updated", 60)
        assert rec.bytes_sent > image.stat().st_size  # the cut part was sent twice
    finally:
        await stop_gateway(gw)


async def test_gateway_restart_mid_download_resumes_and_ends_byte_identical(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-download the MatterAdapter stops and a new one starts on the same data dir and core.

    The stopping node's CloseSession ends the device's BDX attempt at once (not after matter.js's 5-minute BDX
    timeout); the device opens CASE to the new node and retries with the file designator it was given. The
    designator derives from the UpdateToken the core persisted, so the new provider re-attaches the transfer for
    exactly that requestor (no re-announce, no new query); the device installs exactly the stored image and the
    core marks it updated."""
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 1_500_000)
    refused: list[bytes] = []
    real_resolve = MatterOtaProvider.resolve

    def spy_resolve(self: MatterOtaProvider, designator: bytes, session: Any) -> Any:
        found = real_resolve(self, designator, session)
        if found is None:
            refused.append(bytes(designator))
        return found

    monkeypatch.setattr(MatterOtaProvider, "resolve", spy_resolve)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "dev")
    devices.append(dev)
    try:
        node_id = await gw.commission(dev, await dev.start())
        await gw.adapter._announce_due()
        deadline = time.monotonic() + 60
        while (rec := gw.record(node_id)) is None or rec.acked_offset < 200_000:
            assert time.monotonic() < deadline, "download did not start"
            await asyncio.sleep(0.02)
        assert gw.adapter.provider is not None
        (old,) = gw.adapter.provider.transfers.values()
        await gw.adapter.stop()
        assert not [e for e in dev.events if e["event"] == "applied"]
        gw.adapter = MatterAdapter(
            gw.adapter.cfg, gw.core, gw.adapter.clock, tmp_path / "gw", netns=netns_pair.a.netns
        )
        with netns_pair.enter(netns_pair.a):
            await gw.adapter.start()
        applied = await dev.wait_for(lambda e: e["event"] == "applied", 60, "applied after the restart")
        assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert applied["size"] == image.stat().st_size
        assert not refused, f"the restarted provider refused the resumed designator: {refused}"
        assert gw.adapter.provider is not None
        (t,) = gw.adapter.provider.transfers.values()
        assert t.token == old.token and t.designator == old.designator
        assert t.completed and t.exchanges >= 1
        rec = await gw.wait_state(node_id, "updated", 60)
        assert rec.current_version == 2
    finally:
        await stop_gateway(gw)

"""Matter end to end with real peers in two network namespaces: devices that already belong to another controller
(multi-admin), and "query now" (`otagw matter announce NODE`, `POST /api/v1/devices/{id}/notify`).

Multi-admin: a first controller (a second chip SDK controller on its own fabric, like Home Assistant's) commissions
the matter.js device and writes its own DefaultOTAProviders entry, then opens an enhanced commissioning window;
otagw commissions the device with that manual code as a second admin, becomes its OTA provider for our fabric only,
the device updates from otagw, and the first fabric still controls it (OnOff) and still has its own provider entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.matter.fabric.admin_ops import __name__ as ADMIN_OPS
from adapters.matter.fabric.controller import ControllerError, ControllerRunner
from gateway.api.app import ApiServices, create_app

from .netns import NetnsPair
from .test_e2e_ota import REPO, _skip_unless_peers, image_by_cli, start_gateway, stop_gateway
from .test_e2e_support import MatterJsDevice, export_paas

pytestmark = pytest.mark.interop

FIRST_FABRIC_NODE = 0x51  # the first controller's node id for the device
FIRST_FABRIC_PROVIDER = 0x9999  # the provider the first fabric configured (its own, untouched by otagw)


@pytest.fixture
async def devices() -> AsyncIterator[list[MatterJsDevice]]:
    made: list[MatterJsDevice] = []
    yield made
    for d in made:
        await d.stop()


def _providers(value: Any) -> list[tuple[int, int]]:
    return [(int(p["providerNodeID"]), int(p["endpoint"])) for p in value or []]


async def test_second_admin_updates_a_device_of_another_fabric(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    _skip_unless_peers()
    pair = netns_pair
    image = image_by_cli(tmp_path, 2, 120_000)
    paa = export_paas(tmp_path / "first-paa")
    first = ControllerRunner(
        tmp_path / "first", netns=pair.a.netns, ops_module=ADMIN_OPS, timeout_s=120, isolation="private"
    )
    dev = MatterJsDevice(pair.b.netns, tmp_path / "dev")
    devices.append(dev)
    gw = None
    try:
        ready = await dev.start()
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(
            first.init_fabric,
            fabric_id=0x4A,
            vendor_id=0xFFF1,
            controller_node_id=0x1111,
            paa_trust_store=str(paa),
        )
        # 1. the first controller owns the device and points it at its own provider
        await asyncio.to_thread(
            first.call,
            "commission",
            code=ready["manualPairingCode"],
            node_id=FIRST_FABRIC_NODE,
            timeout_s=30,
            _timeout=120,
        )
        got = await asyncio.to_thread(
            first.call, "set_provider", node_id=FIRST_FABRIC_NODE, provider_node_id=FIRST_FABRIC_PROVIDER
        )
        assert _providers(got) == [(FIRST_FABRIC_PROVIDER, 0)]
        # 2. it shares the device: enhanced commissioning window, new passcode
        window = await asyncio.to_thread(
            first.call, "open_window", node_id=FIRST_FABRIC_NODE, timeout_s=300, discriminator=3001
        )
        assert window["manual_code"] and window["passcode"] != 20202021

        # 3. otagw commissions it as a second admin and becomes its provider for our fabric
        gw = await start_gateway(pair, tmp_path, [image])
        got_node = await gw.adapter.commission(window["manual_code"], timeout_s=60)
        node_id = int(got_node["node_id"])
        assert got_node["default_provider"] == gw.adapter.cfg.node_id
        rec = gw.record(node_id)
        assert rec is not None and rec.current_version == 1

        # the other fabric's entry is untouched (each fabric reads only its own entries)
        info = await asyncio.to_thread(
            first.read_attribute, FIRST_FABRIC_NODE, 0, "OtaSoftwareUpdateRequestor", "DefaultOTAProviders"
        )
        assert _providers(info) == [(FIRST_FABRIC_PROVIDER, 0)]

        # 4. the device updates from otagw
        await gw.adapter._announce_due()
        applied = await dev.wait_for(lambda e: e["event"] == "applied", 120, "applied")
        assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        await dev.wait_for(lambda e: e["event"] == "restarted" and e["version"] == 2, 60, "restart on v2")
        rec = await gw.wait_state(node_id, "updated", 90)
        assert rec.current_version == 2

        # 5. the first fabric still controls it after the update, and still has its own provider entry. Its CASE
        # session died with the reboot: the first read may time out before the SDK opens a new one (as for any
        # controller after a device reboot), so a few attempts are allowed
        for attempt in range(4):
            try:
                version = await asyncio.to_thread(
                    first.read_attribute, FIRST_FABRIC_NODE, 0, "BasicInformation", "SoftwareVersion"
                )
                break
            except ControllerError:
                if attempt == 3:
                    raise
        assert version == 2
        before = await asyncio.to_thread(first.read_attribute, FIRST_FABRIC_NODE, 1, "OnOff", "OnOff")
        await asyncio.to_thread(first.invoke, FIRST_FABRIC_NODE, 1, "OnOff", "Toggle")
        after = await asyncio.to_thread(first.read_attribute, FIRST_FABRIC_NODE, 1, "OnOff", "OnOff")
        assert after is (not before)
        info = await asyncio.to_thread(
            first.read_attribute, FIRST_FABRIC_NODE, 0, "OtaSoftwareUpdateRequestor", "DefaultOTAProviders"
        )
        assert _providers(info) == [(FIRST_FABRIC_PROVIDER, 0)]
        fabrics = await asyncio.to_thread(
            first.read_attribute, FIRST_FABRIC_NODE, 0, "OperationalCredentials", "CommissionedFabrics"
        )
        assert fabrics == 2
    finally:
        if gw is not None:
            await stop_gateway(gw)
        await asyncio.to_thread(first.close)


async def test_query_now_by_cli_and_api(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    """A device the plan has nothing for (another product): `otagw matter announce` (through the running gateway's
    control socket) and the API's notify action each make it query at once."""
    _skip_unless_peers()
    image = image_by_cli(tmp_path, 2, 10_000)
    gw = await start_gateway(netns_pair, tmp_path, [image])
    try:
        dev = MatterJsDevice(netns_pair.b.netns, tmp_path / "other", product_id=0x8999)
        devices.append(dev)
        node_id = await gw.commission(dev, await dev.start())
        device_id = gw.adapter.key(node_id).device_id

        async def queried_after(t0: float | None) -> float:
            deadline = time.monotonic() + 60
            while True:
                rec = gw.record(node_id)
                if rec is not None and rec.last_query is not None and (t0 is None or rec.last_query > t0):
                    return float(rec.last_query)
                assert time.monotonic() < deadline, "the device never queried"
                await asyncio.sleep(0.2)

        assert gw.record(node_id).last_query is None  # type: ignore[union-attr]
        cfg_file = tmp_path / "otagw.yaml"
        cfg_file.write_text(f"data_dir: {gw.core.config.data_dir}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(cfg_file),
            "matter",
            "announce",
            hex(node_id),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert "AnnounceOTAProvider sent" in out.decode()
        t1 = await queried_after(None)

        svc = ApiServices(
            core=gw.core,
            store=gw.store,
            config=gw.core.config,
            token="t" * 32,
            notify_device=gw.adapter.notify_device,
        )
        async with TestClient(TestServer(create_app(svc))) as client:
            auth = {"Authorization": "Bearer " + "t" * 32}
            r = await client.post(f"/api/v1/devices/{device_id}/notify", headers=auth)
            assert r.status == 200, await r.text()
            assert json.loads(await r.text())["sent"] == "AnnounceOTAProvider"
            r = await client.post("/api/v1/devices/matter:nope/notify", headers=auth)
            assert r.status == 404
        await queried_after(t1)
    finally:
        await stop_gateway(gw)

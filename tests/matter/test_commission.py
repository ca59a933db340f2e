"""Fabric admin with the chip SDK controller against a matter.js OTA requestor device (real peers, two netns).

The controller (M2's worker + our admin_ops, own mount namespace) in namespace A commissions the matter.js device in
namespace B from its manual pairing code, reads BasicInformation and the requestor cluster, writes
DefaultOTAProviders to our provider node id, and subscribes to the requestor's state (priming report drained with
poll_events). Then `otagw matter nodes --json` lists the node from the same data dir.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.matter.fabric.admin import FabricAdmin, FabricBusyError, load_nodes
from adapters.matter.fabric.controller import runner_unavailable_reason
from gateway.config import MatterConfig

from .netns import NetnsPair
from .test_e2e_support import MatterJsDevice, export_paas, node_unavailable_reason

pytestmark = pytest.mark.interop

PROVIDER_NODE = 0x0000_0000_0A11_0001
REPO = Path(__file__).resolve().parents[2]


def _skip_unless_peers() -> None:
    for reason in (runner_unavailable_reason(), node_unavailable_reason()):
        if reason:
            pytest.skip(reason)


async def test_commission_read_set_provider_subscribe(netns_pair: NetnsPair, tmp_path: Path) -> None:
    _skip_unless_peers()
    pair = netns_pair
    paa = export_paas(tmp_path / "paa")
    device = MatterJsDevice(pair.b.netns, tmp_path / "device", version=3)
    cfg = MatterConfig(paa_trust_store=paa, node_id=PROVIDER_NODE)
    mdir = tmp_path / "data" / "matter"
    admin = FabricAdmin(mdir, cfg, netns=pair.a.netns)
    try:
        ready = await device.start()
        assert ready["commissioned"] is False
        await admin.start()
        with pytest.raises(FabricBusyError):  # one process drives the fabric at a time
            await FabricAdmin(mdir, cfg, netns=pair.a.netns).start()

        entry = await admin.commission(ready["manualPairingCode"], timeout_s=30)
        node_id = entry.node_id
        info = await admin.node_info(node_id)
        b = info["basic"]
        assert (b["VendorID"], b["ProductID"], b["SoftwareVersion"], b["SoftwareVersionString"]) == (
            0xFFF1,
            0x8000,
            3,
            "3.0",
        )
        assert info["has_requestor"] and b["HardwareVersion"] == 1

        providers = await admin.set_provider(node_id)
        assert [(p["providerNodeID"], p["endpoint"]) for p in providers] == [(PROVIDER_NODE, 0)]
        assert await admin.set_provider(node_id) == providers  # idempotent

        await admin.subscribe(node_id)
        events = await admin.poll_events()
        seen = {(e["cluster"], e["attribute"]): e["value"] for e in events if e["kind"] == "attribute"}
        assert seen[("BasicInformation", "SoftwareVersion")] == 3
        assert seen[("OtaSoftwareUpdateRequestor", "UpdateState")] == 1  # Idle

        # the identity of the provider node is minted on the same fabric by the same controller
        creds = await admin.ensure_identity()
        assert creds.node_id == PROVIDER_NODE and creds.compressed_fabric_id_int == admin.compressed_fabric_id
        cred_dir = mdir / "credentials"
        assert cred_dir.stat().st_mode & 0o077 == 0
        assert all(p.stat().st_mode & 0o077 == 0 for p in cred_dir.iterdir())
    finally:
        await admin.close()
        await device.stop()

    nodes = load_nodes(mdir)
    assert nodes[node_id].software_version == 3 and nodes[node_id].default_provider == PROVIDER_NODE
    assert (mdir / "nodes.json").stat().st_mode & 0o077 == 0
    assert (mdir / "fabric-admin" / "controller").stat().st_mode & 0o077 == 0

    # the CLI lists it from the same data dir (no controller needed for the listing)
    cfg_file = tmp_path / "otagw.yaml"
    cfg_file.write_text(f"data_dir: {tmp_path / 'data'}\nmatter:\n  node_id: {PROVIDER_NODE}\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(cfg_file), "matter", "nodes", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [
        (n["node_id"], n["vendor_id"], n["product_id"], n["software_version"]) for n in listed["nodes"]
    ] == [(node_id, 0xFFF1, 0x8000, 3)]


async def test_cli_commission_goes_through_the_running_gateway(netns_pair: NetnsPair, tmp_path: Path) -> None:
    """While the gateway runs it owns the fabric; `otagw matter commission` hands the job to its control socket."""
    _skip_unless_peers()
    from adapters.matter.adapter import MatterAdapter
    from gateway.clock import SystemClock
    from gateway.config import parse_config
    from gateway.core.service import UpdateCore
    from gateway.store.store import ImageStore

    pair = netns_pair
    paa = export_paas(tmp_path / "paa")
    cfg_file = tmp_path / "otagw.yaml"
    cfg_file.write_text(
        f"data_dir: {tmp_path / 'data'}\nmatter:\n  node_id: {PROVIDER_NODE}\n"
        f"  paa_trust_store: {paa}\n  interfaces: [{pair.a.iface}]\n"
    )
    from gateway.config import load_config

    cfg = load_config(cfg_file)
    assert parse_config({}).matter.port == cfg.matter.port
    store = ImageStore(cfg.data_dir)
    await store.open()
    core = UpdateCore(cfg, store, SystemClock(), auto_sweep=False)
    await core.start()
    adapter = MatterAdapter(cfg.matter, core, SystemClock(), cfg.data_dir, netns=pair.a.netns)
    device = MatterJsDevice(pair.b.netns, tmp_path / "device")
    try:
        ready = await device.start()
        with pair.enter(pair.a):
            await adapter.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(cfg_file),
            "matter",
            "commission",
            ready["qrPairingCode"],
            "--json",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode == 0, err.decode()
        entry = json.loads(out)
        assert (entry["vendor_id"], entry["product_id"], entry["default_provider"]) == (
            0xFFF1,
            0x8000,
            PROVIDER_NODE,
        )
        rec = core.get_device(adapter.key(entry["node_id"]).device_id)
        assert rec is not None and rec.current_version == 1  # adopted: observed by the core
    finally:
        await adapter.stop()
        await core.stop()
        await store.close()
        await device.stop()


@pytest.mark.parametrize("form", ["bracketed", "port-option"])
async def test_cli_commission_at_ip_on_another_port(netns_pair: NetnsPair, tmp_path: Path, form: str) -> None:
    """A device on port 5541 (not 5540): `--ip [ADDR]:5541` and `--ip ADDR --port 5541` both commission it."""
    _skip_unless_peers()
    pair = netns_pair
    paa = export_paas(tmp_path / "paa")
    device = MatterJsDevice(pair.b.netns, tmp_path / "device", port=5541)
    cfg_file = tmp_path / "otagw.yaml"
    cfg_file.write_text(
        f"data_dir: {tmp_path / 'data'}\nmatter:\n  node_id: {PROVIDER_NODE}\n  paa_trust_store: {paa}\n"
    )
    where = (
        ["--ip", f"[{pair.b.address}]:5541"]
        if form == "bracketed"
        else ["--ip", pair.b.address, "--port", "5541"]
    )
    try:
        ready = await device.start()
        assert ready["port"] == 5541
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            pair.a.netns,
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(cfg_file),
            "matter",
            "commission",
            ready["manualPairingCode"],
            *where,
            "--json",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode == 0, err.decode()[-3000:]
        entry = json.loads(out)
        assert (entry["vendor_id"], entry["product_id"], entry["default_provider"]) == (
            0xFFF1,
            0x8000,
            PROVIDER_NODE,
        )
    finally:
        await device.stop()

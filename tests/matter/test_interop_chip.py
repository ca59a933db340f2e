"""Interop with the real chip SDK controller: operational DNS-SD, CASE and IM against our ProviderNode.

Two network namespaces we create (tests/matter/netns.py): our node in A, the chip SDK controller (M2's
ControllerRunner: own mount namespace, private /data) in B. The controller creates fabric 1, mints our NOC, finds
our node by operational DNS-SD and opens CASE to it. A second controller on another fabric is refused.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.matter.discovery.dnssd import OperationalName
from adapters.matter.fabric.controller import ControllerError, ControllerRunner, runner_unavailable_reason
from adapters.matter.fabric.identity import mint_credentials
from adapters.matter.interaction.acl import AccessControl
from adapters.matter.interaction.clusters import OtaStatus, build_provider_node
from adapters.matter.interaction.server import IMServer
from adapters.matter.node import ProviderNode
from tests.matter.support import ProvisionalProvider

from .netns import NetnsPair

pytestmark = pytest.mark.interop

NODE_ID = 0x0000_0000_0A11_0001
CONTROLLER_NODE_ID = 112233


async def _call(fn, *args, **kw):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args, **kw)


async def test_chip_controller_case_and_foreign_fabric_refused(
    netns_pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reason = runner_unavailable_reason()
    if reason:
        pytest.skip(reason)
    caplog.set_level(logging.INFO, logger="adapters.matter")
    pair = netns_pair
    ctl = ControllerRunner(tmp_path / "ctl1", netns=pair.b.netns, timeout_s=90, isolation="private")
    ctl2 = ControllerRunner(tmp_path / "ctl2", netns=pair.b.netns, timeout_s=90, isolation="private")
    node: ProviderNode | None = None
    try:
        await _call(ctl.start)
        await _call(ctl.init_fabric, fabric_id=1, vendor_id=0xFFF1, controller_node_id=CONTROLLER_NODE_ID)
        creds = await _call(mint_credentials, ctl, NODE_ID)
        provider = ProvisionalProvider()
        registry, _ota = build_provider_node(
            delegate=provider, acl=AccessControl.default([1], admins={1: [CONTROLLER_NODE_ID]})
        )
        with pair.enter(pair.a):
            node = ProviderNode([creds], interfaces=[pair.a.iface], port=5540)
            node.exchanges.register(1, IMServer(registry, now=node.clock.monotonic), secure=True)
            await node.start()

        # 1. resolve by operational DNS-SD + CASE
        await _call(ctl.establish_case, NODE_ID, 30000)
        sessions = list(node.sessions.secure.values())
        assert sessions, "no secure session after CASE"
        s = sessions[0]
        assert (s.peer_node_id, s.fabric_index, s.local_node_id) == (CONTROLLER_NODE_ID, 1, NODE_ID)

        # 2. Interaction Model over that session: invoke QueryImage (provisional handler) and read an attribute
        resp = await _call(
            ctl.invoke,
            NODE_ID,
            0,
            "OtaSoftwareUpdateProvider",
            "QueryImage",
            {"vendorID": 0xFFF1, "productID": 0x8000, "softwareVersion": 1, "protocolsSupported": [0]},
        )
        assert resp["status"] == OtaStatus.NOT_AVAILABLE, resp
        assert [(q.vendor_id, q.product_id, q.software_version) for q in provider.queries] == [
            (0xFFF1, 0x8000, 1)
        ]
        vendor = await _call(ctl.read_attribute, NODE_ID, 0, "BasicInformation", "VendorID")
        assert vendor == 0xFFF1

        # 3. a controller on another fabric: we advertise under its compressed fabric id too, so it reaches
        #    CASE, and our responder must refuse (no shared trust root)
        info2 = await _call(ctl2.start)
        info2 = await _call(ctl2.init_fabric, fabric_id=2, vendor_id=0xFFF1, controller_node_id=445566)
        fabric2 = await _call(ctl2.call, "fabric_info")
        cfid2 = int(fabric2["compressed_fabric_id"])
        await node.advertise_name(
            OperationalName(cfid2, NODE_ID)
        )  # the name only: no credentials on fabric 2
        with pytest.raises(ControllerError):
            await _call(ctl2.establish_case, NODE_ID, 8000)
        assert all(
            x.fabric_index == 1 and x.peer_node_id == CONTROLLER_NODE_ID
            for x in node.sessions.secure.values()
        )
        assert any("CASE failed" in r.getMessage() for r in caplog.records), "our responder never saw Sigma1"
        del info2
    finally:
        if node is not None:
            await node.stop()
        for c in (ctl2, ctl):
            await _call(c.close)

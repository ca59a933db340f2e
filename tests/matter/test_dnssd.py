"""Operational DNS-SD: our advertiser in one netns, a zeroconf resolver in the other, over a veth we create."""

from __future__ import annotations

import asyncio
import socket

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from adapters.matter.discovery.dnssd import MATTER_OPERATIONAL_TYPE, OperationalAdvertiser, OperationalName

from .netns import NetnsPair

pytestmark = pytest.mark.interop

NAME = OperationalName(0x87E1B004E235A130, 0x000000000000ABCD)


def test_names() -> None:
    assert NAME.instance == "87E1B004E235A130-000000000000ABCD"
    assert NAME.subtype == "_I87E1B004E235A130._sub._matter._tcp.local."


async def test_advertise_resolve_withdraw(netns_pair: NetnsPair) -> None:
    pair = netns_pair
    with pair.enter(pair.a):
        adv = OperationalAdvertiser(5540, [pair.a.iface])
        await adv.start()
    with pair.enter(pair.b):
        zc = AsyncZeroconf(interfaces=[socket.if_nametoindex(pair.b.iface)], ip_version=IPVersion.V6Only)
    try:
        await adv.advertise(NAME)
        full = f"{NAME.instance}.{MATTER_OPERATIONAL_TYPE}"
        info = AsyncServiceInfo(MATTER_OPERATIONAL_TYPE, full)
        assert await info.async_request(zc.zeroconf, 5000)
        assert info.port == 5540
        assert pair.a.address in info.parsed_addresses()
        assert all(a == pair.a.address or a.startswith("fe80") for a in info.parsed_addresses())
        assert {k: v for k, v in info.decoded_properties.items()} == {
            "SII": "500",
            "SAI": "300",
            "SAT": "4000",
            "T": "0",
        }
        found: asyncio.Queue[str] = asyncio.Queue()

        def on_change(zeroconf: object, service_type: str, name: str, state_change: object) -> None:
            found.put_nowait(name)

        browser = AsyncServiceBrowser(zc.zeroconf, [NAME.subtype], handlers=[on_change])
        assert await asyncio.wait_for(found.get(), 5) == full
        await browser.async_cancel()
        await adv.withdraw(NAME)
        await asyncio.sleep(0.5)  # goodbye packets travel
        gone = AsyncServiceInfo(MATTER_OPERATIONAL_TYPE, full)
        assert not await gone.async_request(zc.zeroconf, 1500)
    finally:
        await adv.close()
        await zc.async_close()

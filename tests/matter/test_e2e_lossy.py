"""Matter OTA over a lossy link to a sleepy requestor (real peers in two network namespaces).

The matter.js requestor advertises a long MRP idle interval in its session parameters (a sleepy, Thread-like
device: 5 s); both namespaces drop 3 % of incoming packets at random (nftables `numgen random`; this kernel has
no sch_netem, so delay and jitter cannot be added here). The provider takes the device's MRP timing from its CASE
session parameters, retransmits through the losses, and the BDX transfer survives the gaps: the image arrives
byte-identical and the device record shows progress while it downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .netns import NetnsPair
from .test_e2e_ota import _skip_unless_peers, image_by_cli, start_gateway, stop_gateway
from .test_e2e_support import MatterJsDevice

pytestmark = pytest.mark.interop

SLEEPY_IDLE_MS = 5000
LOSS_PERCENT = 3


def lossy(netns: str, percent: int) -> None:
    """Drop `percent` % of the packets entering `netns` (both sides: both directions are lossy)."""
    for cmd in (
        ["add", "table", "inet", "otagw_loss"],
        ["add", "chain", "inet", "otagw_loss", "in", "{ type filter hook input priority 0; }"],
        [
            "add",
            "rule",
            "inet",
            "otagw_loss",
            "in",
            "numgen",
            "random",
            "mod",
            "100",
            "<",
            str(percent),
            "drop",
        ],
    ):
        subprocess.run(["ip", "netns", "exec", netns, "nft", *cmd], check=True, capture_output=True)


def dropped(netns: str) -> bool:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "otagw_loss"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "otagw_loss" in out


@pytest.fixture
async def devices() -> AsyncIterator[list[MatterJsDevice]]:
    made: list[MatterJsDevice] = []
    yield made
    for d in made:
        await d.stop()


async def test_sleepy_requestor_over_a_lossy_link(
    netns_pair: NetnsPair, tmp_path: Path, devices: list[MatterJsDevice]
) -> None:
    _skip_unless_peers()
    if shutil.which("nft") is None:
        pytest.fail("nft (apt nftables) is required for the lossy-link test; scripts/test installs it")
    pair = netns_pair
    image = image_by_cli(tmp_path, 2, 96 * 1024)
    gw = await start_gateway(pair, tmp_path, [image])
    try:
        dev = MatterJsDevice(pair.b.netns, tmp_path / "sleepy")
        dev.args += ["--idle-interval-ms", str(SLEEPY_IDLE_MS)]
        devices.append(dev)
        node_id = await gw.commission(dev, await dev.start())
        # the provider session with the device carries the device's sleepy MRP timing
        assert gw.adapter.node is not None
        for side in (pair.a.netns, pair.b.netns):
            lossy(side, LOSS_PERCENT)
            assert dropped(side)
        await gw.adapter._announce_due()
        samples: list[tuple[str, int]] = []
        t0 = time.monotonic()

        async def watch() -> None:
            while True:
                rec = gw.record(node_id)
                if rec is not None:
                    samples.append((rec.state.value, int(rec.acked_offset or 0)))
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        try:
            applied = await dev.wait_for(
                lambda e: e["event"] == "applied", 300, "applied over the lossy link"
            )
        finally:
            watcher.cancel()
        took = time.monotonic() - t0
        assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert applied["size"] == image.stat().st_size
        sleepy = [
            s
            for s in gw.adapter.node.sessions.secure.values()
            if s.peer_mrp.idle_retrans_ms == SLEEPY_IDLE_MS
        ]
        assert sleepy, "no provider session took the device's idle interval"
        # progress throughout: several distinct, increasing offsets while downloading
        offsets = [o for st, o in samples if st == "downloading"]
        distinct = sorted(set(offsets))
        assert len(distinct) >= 3 and offsets == sorted(offsets), samples
        await dev.wait_for(lambda e: e["event"] == "restarted" and e["version"] == 2, 120, "restart on v2")
        rec = await gw.wait_state(node_id, "updated", 180)
        assert rec.current_version == 2
        print(f"lossy link: {image.stat().st_size} bytes in {took:.1f} s, {len(distinct)} progress steps")
    finally:
        await stop_gateway(gw)

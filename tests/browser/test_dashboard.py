"""The dashboard in real headless Chromium: log in with the token, see both protocols' devices, the image catalog
and rollout waves, and watch a simulated transfer's progress bar move as the test drives the core."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.api.app import ApiServices, create_app
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.interface import Available, DeviceInfo, DeviceKey
from gateway.core.service import UpdateCore
from gateway.formats import build_zigbee_image
from gateway.store.store import ImageStore
from tests.browser.webdriver import Browser, missing

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

TOKEN = "browser-test-token-0123456789"
ZB = DeviceKey("zigbee", "pan:1a2b", "00:11:22:33:44:55:66:77", 1)
MT = DeviceKey("matter", "fabric:2906c908d115d362", "000000000000ABCD", 0)
ROW_EXPR = 'document.querySelector(`tr[data-device-id="${arguments[0]}"]`)'
ROW = "return " + ROW_EXPR


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[TestServer, UpdateCore, ImageStore, ManualClock]]:
    cfg = parse_config(
        {"data_dir": str(tmp_path / "data"), "api": {"token": TOKEN}, "policy": {"auto_approve": True}}
    )
    clock = ManualClock()
    store = ImageStore(cfg.data_dir, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    app = create_app(
        ApiServices(
            core=core,
            store=store,
            config=cfg,
            token=TOKEN,
            clock=clock,
            health=lambda: {"core": "running", "adapters": {}},
            progress_interval=0.1,
        )
    )
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv, core, store, clock
    finally:
        await srv.close()
        await core.stop()
        await store.close()


async def test_progress_bar_moves_live(
    server: tuple[TestServer, UpdateCore, ImageStore, ManualClock],
) -> None:
    srv, core, store, clock = server
    image = build_zigbee_image(b"\x11" * 20000, manufacturer_code=0x1135, image_type=1, file_version=0x200)
    entry = (await store.add_bytes(image, file_name="lamp.zigbee")).entry
    await core.catalog_changed()
    await core.observe(DeviceInfo(MT, vendor_id=0xFFF1, product_id=0x8000, current_version=1, model="Dimmer"))
    base = str(srv.make_url("")).rstrip("/")

    async with Browser() as b:
        await b.get(base + "/")
        assert (await b.url()).endswith("/login")  # no session yet
        await b.get(f"{base}/login?token={TOKEN}")
        assert (await b.url()) == base + "/"
        await b.wait_for("return document.getElementById('live').textContent === 'live'", what="event stream")
        await b.wait_for(ROW, MT.device_id, what="matter device row")
        await b.wait_for(
            "return document.querySelector(`tr[data-image-id='${arguments[0]}']`)",
            entry.image_id,
            what="image row",
        )
        # approval from the dashboard: the image row's button approves it (stored in the catalog)
        cell = "document.querySelector(`tr[data-image-id='${arguments[0]}'] .approval-state`)"
        assert (await b.js(f"return {cell}.textContent", entry.image_id)).startswith("available")
        await b.js(f"{cell}.querySelector('button').click()", entry.image_id)
        await b.wait_for(
            f"return {cell}?.textContent.startsWith('approved')", entry.image_id, what="approved image row"
        )
        assert (await store.get(entry.image_id)).approval == "approved"

        # a Zigbee device joins and asks: it appears live, beside the Matter one
        answer = await core.query(
            DeviceInfo(ZB, vendor_id=0x1135, product_id=1, current_version=0x100, model="FLS-PP3")
        )
        assert isinstance(answer, Available)
        await b.wait_for(ROW + "?.dataset.state === 'querying'", ZB.device_id, what="zigbee row in querying")
        protocols = await b.js(
            "return [...document.querySelectorAll('#devices tbody tr .badge')].map(e => e.textContent).sort()"
        )
        assert protocols == ["matter", "zigbee"]

        seen = []
        size = answer.image.size
        for offset in range(0, size, size // 4):
            await core.progress(answer.token, offset, min(size // 4, size - offset))
            await clock.advance(1.0)  # the core sends at most one progress event per device per second
            want = min(100, (offset + size // 4) * 100 // size)
            pct = await b.wait_for(
                f"const p = Number({ROW_EXPR}.querySelector('.fill').dataset.percent);"
                f" return p >= {want} ? p : 0",
                ZB.device_id,
                what=f"progress >= {want}%",
            )
            width = await b.js(ROW + ".querySelector('.fill').style.width", ZB.device_id)
            assert width == f"{pct}%"
            seen.append(pct)
        assert seen == sorted(seen) and seen[0] < 100 and seen[-1] == 100, seen
        await b.wait_for(ROW + "?.dataset.state === 'downloading'", ZB.device_id, what="downloading state")

        # a rollout created elsewhere (CLI, API) appears live with its waves and counts
        rollout = await core.create_rollout(entry.image_id, waves=["1", "100%"], soak_s=0)
        waves = await b.wait_for(
            "return [...document.querySelectorAll(`[data-rollout-id='${arguments[0]}'] .wave`)]"
            ".map(w => w.textContent)",
            rollout.rollout_id,
            what="rollout waves",
        )
        assert len(waves) == 2 and waves[0].startswith("Wave 1 (1)") and "1 devices" in waves[0]
        if os.environ.get("OTAGW_SCREENSHOT"):
            await b.screenshot(Path(os.environ["OTAGW_SCREENSHOT"]))

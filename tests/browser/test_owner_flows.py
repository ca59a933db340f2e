"""What a hub owner does on the dashboard, in real headless Chromium against the real API + update core.

The devices are simulated at the core's neutral adapter interface (DeviceInfo queries, block progress, download
complete, apply request, version report - what the Zigbee and Matter adapters call) on an injected ManualClock, so
every step is deterministic; the page sees them only through the REST API and the live event stream.

Flows: rename a device on its page; "update now" one device and watch it reach updated; create a two-wave rollout
from the form (live count, plan preview) and see the wave counters agree with the device rows after every step;
approve an available image; a failed device is red with its error; at 360 px nothing scrolls sideways. Screenshots of
the main views go to $OTAGW_ARTIFACTS (default: <tmp>/otagw-dashboard-shots); nothing is asserted on pixels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.api.app import ApiServices, create_app
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.interface import ApplyAction, Available, DeviceInfo, DeviceKey
from gateway.core.service import UpdateCore
from gateway.core.states import DeviceState
from gateway.formats import build_zigbee_image
from gateway.store.store import ImageStore
from tests.browser.webdriver import Browser, missing

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

TOKEN = "browser-owner-token-0123456789"
MFR, TYPE, OLD, NEW = 0x117C, 0x2811, 0x01000010, 0x01000020  # IKEA of Sweden in the manufacturer table
ROW = "document.querySelector(`tr[data-device-id='${arguments[0]}']`)"
SHOTS = Path(os.environ.get("OTAGW_ARTIFACTS") or Path(tempfile.gettempdir()) / "otagw-dashboard-shots")


def key(n: int) -> DeviceKey:
    return DeviceKey("zigbee", "pan:1a2b", f"00:0d:6f:00:00:de:00:{n:02x}", 1)


def info(n: int, version: int = OLD) -> DeviceInfo:
    return DeviceInfo(key(n), vendor_id=MFR, product_id=TYPE, current_version=version, model="TRADFRI bulb")


@dataclass
class Env:
    base: str
    core: UpdateCore
    store: ImageStore
    clock: ManualClock
    image_id: str
    health: dict


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "api": {"token": TOKEN}})  # auto_approve off
    clock = ManualClock()
    store = ImageStore(cfg.data_dir, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    image = build_zigbee_image(b"\x33" * 16000, manufacturer_code=MFR, image_type=TYPE, file_version=NEW)
    entry = (await store.add_bytes(image, file_name="bulb-1.0.0.32.zigbee")).entry
    await core.catalog_changed()
    health: dict = {
        "status": "ok",
        "core": "running",
        "adapters": {"zigbee": {"state": "running", "error": None}},
    }
    app = create_app(
        ApiServices(
            core=core,
            store=store,
            config=cfg,
            token=TOKEN,
            clock=clock,
            health=lambda: health,
            progress_interval=0.05,
        )
    )
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield Env(str(srv.make_url("")).rstrip("/"), core, store, clock, entry.image_id, health)
    finally:
        await srv.close()
        await core.stop()
        await store.close()


async def login(b: Browser, env: Env, width: int = 1280) -> None:
    await b.size(width, 900)
    await b.get(f"{env.base}/login?token={TOKEN}")
    await b.wait_for("return document.getElementById('live').textContent === 'live'", what="event stream")


async def drive_update(env: Env, n: int, *, fail: str | None = None) -> None:
    """One simulated device asks, downloads in blocks, installs and reports its new version (or fails)."""
    core = env.core
    answer = await core.query(info(n))
    assert isinstance(answer, Available), answer
    size = answer.image.size
    block = 4000
    for off in range(0, size, block):
        if fail is not None and off >= size // 2:
            await core.download_failed(answer.token, fail)
            return
        await core.progress(answer.token, off, min(block, size - off))
        await env.clock.advance(1.0)
    await core.download_complete(answer.token)
    assert (await core.apply_request(answer.token, NEW)).action == ApplyAction.PROCEED
    await core.report_version(key(n), NEW)
    assert core.get_device(key(n).device_id).state == DeviceState.UPDATED  # type: ignore[union-attr]


async def no_sideways_scroll(b: Browser, what: str) -> None:
    sizes = await b.js("return [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[1], f"{what}: page is {sizes[0]} px wide in a {sizes[1]} px window"


async def shot(b: Browser, name: str) -> None:
    """The whole page (the window grows to the page's height for the picture, then returns)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    width, height, full = await b.js(
        "return [window.innerWidth, window.innerHeight, document.scrollingElement.scrollHeight]"
    )  # inner sizes: headless Chromium reports an outerWidth of at least 500 px
    await b.size(width, min(full, 5000))
    await b.screenshot(SHOTS / f"{name}.png")
    await b.size(width, height)


async def test_rename_update_now_and_failed_device(env: Env) -> None:
    for n in (1, 2):
        await env.core.observe(info(n))
    dev1, dev2 = key(1).device_id, key(2).device_id
    async with Browser() as b:
        await login(b, env)
        await b.wait_for("return " + ROW, dev1, what="device row")
        # the maker's name comes from the manufacturer code; versions read as dotted bytes, raw value on hover
        text = await b.js(f"return {ROW}.textContent", dev1)
        assert "IKEA of Sweden" in text and "TRADFRI bulb" in text and "1.0.0.16" in text
        title = await b.js(f"return {ROW}.querySelector('.version').title", dev1)
        assert "0x01000010" in title

        # rename on the device page
        await b.js(f"{ROW}.querySelector('a.dev-name').click()", dev1)
        await b.wait_for("return !document.getElementById('device-view').hidden", what="device page")
        await b.js("document.getElementById('dv-name-input').value = 'Kitchen lamp'")
        await b.js("document.querySelector('#dv-rename button').click()")
        await b.wait_for(
            "return document.getElementById('dv-name').textContent === 'Kitchen lamp'", what="new name"
        )
        assert env.core.get_device(dev1).name == "Kitchen lamp"  # type: ignore[union-attr]

        # update now: excluded first, the page says why not; then allowed, and the device reaches updated
        await b.js("document.getElementById('dv-exclude').checked = true")
        await b.js("document.querySelector('#dv-overrides button').click()")
        await b.wait_for(
            "return document.getElementById('dv-action-status').textContent.startsWith('Excluded')"
        )
        await b.js("document.getElementById('dv-update').click()")
        refusal = await b.wait_for(
            "const s = document.getElementById('dv-action-status');"
            " return s.classList.contains('error') && s.textContent",
            what="policy refusal",
        )
        assert "excluded" in refusal, refusal
        await b.js("document.getElementById('dv-exclude').checked = false")
        await b.js("document.querySelector('#dv-overrides button').click()")
        await b.wait_for(
            "return document.getElementById('dv-action-status').textContent.startsWith('Included')"
        )
        await b.js("document.getElementById('dv-update').click()")
        await b.wait_for(
            "return document.getElementById('dv-action-status').textContent.startsWith('Updating to 1.0.0.32')",
            what="update started",
        )
        await b.wait_for(
            "return document.querySelector('#dv-state .state')?.dataset.state === 'update_available'",
            what="update available on the device page",
        )
        await shot(b, "device-page-update-available")
        core = env.core
        answer = await core.query(info(1))
        assert isinstance(answer, Available)
        size = answer.image.size
        for off in range(0, size // 2, 4000):
            await core.progress(answer.token, off, 4000)
            await env.clock.advance(1.0)
        # the current transfer: state, a moving bar, a rate and an ETA
        await b.wait_for(
            "return document.querySelector('#dv-state .state')?.dataset.state === 'downloading'"
            " && Number(document.querySelector('#dv-transfer .fill').dataset.percent) >= 25",
            what="transfer on the device page",
        )
        await b.wait_for(
            "return /left/.test(document.getElementById('dv-rate').textContent)", what="rate + ETA"
        )
        await shot(b, "device-page-downloading")
        for off in range((size // 2) // 4000 * 4000 + 4000, size, 4000):
            await core.progress(answer.token, off, min(4000, size - off))
        await core.progress(answer.token, 0, size)  # nothing missing below the acked offset
        await core.download_complete(answer.token)
        await core.apply_request(answer.token, NEW)
        await b.wait_for(
            "return document.querySelector('#dv-state .state')?.dataset.state === 'applying'",
            what="installing",
        )
        # installing is not downloading: its own colour family
        assert await b.js("return document.querySelector('#dv-state .state').classList.contains('g-apply')")
        await core.report_version(key(1), NEW)
        await b.wait_for(
            "return document.querySelector('#dv-state .state')?.dataset.state === 'updated'", what="updated"
        )
        await b.wait_for(
            "return [...document.querySelectorAll('#dv-history li')].some(li => li.textContent.includes('updated'))",
            what="timeline entry",
        )
        await shot(b, "device-page-updated")

        # a failed device: red row, red bar (never a full blue one), its error, the next step on its page
        await b.js("location.hash = '#/'")
        await core.create_rollout(env.image_id, selector={"devices": [dev2]}, waves=["100%"], soak_s=0)
        await drive_update(env, 2, fail="device reported INVALID_IMAGE")
        state = await b.wait_for(
            f"return {ROW}?.dataset.state === 'failed' && {ROW}", dev2, what="failed row"
        )
        assert state
        colours = await b.js(
            f"const r = {ROW}; return [getComputedStyle(r.querySelector('.fill')).backgroundColor,"
            " getComputedStyle(r.querySelector('.state')).color, r.querySelector('td.error').textContent]",
            dev2,
        )
        assert colours[0] == "rgb(180, 35, 24)", colours  # --bad
        assert colours[1] == "rgb(145, 32, 24)", colours
        assert "INVALID_IMAGE" in colours[2]
        await shot(b, "overview-failed-device")
        await b.js(f"{ROW}.querySelector('a.dev-name').click()", dev2)
        await b.wait_for("return !document.getElementById('dv-error').hidden", what="error panel")
        panel = await b.js("return document.getElementById('dv-error').textContent")
        assert "INVALID_IMAGE" in panel and "Retry now" in panel
        assert await b.js("return !document.getElementById('dv-retry').disabled")
        await shot(b, "device-page-failed")
        await b.js("document.getElementById('dv-retry').click()")
        await b.wait_for(
            "return document.querySelector('#dv-state .state')?.dataset.state === 'update_available'",
            what="retry offered",
        )


async def test_rollout_from_the_page_counters_follow_devices(env: Env) -> None:
    for n in range(1, 5):
        await env.core.observe(info(n))
    ids = [key(n).device_id for n in range(1, 5)]
    # the counters on the wave cards, and the device rows' states, read from the page at the same moment
    agree = (
        "const rows = [...document.querySelectorAll('#devices tbody tr')];"
        " const updated = rows.filter(r => r.dataset.state === 'updated').length;"
        " const cards = [...document.querySelectorAll('[data-rollout-id] .wave [data-count=updated]')];"
        " const counted = cards.reduce((n, c) => n + Number(c.textContent.match(/\\d+/)[0]), 0);"
        " return cards.length === 2 && updated === arguments[0] && counted === arguments[0]"
    )
    async with Browser() as b:
        await login(b, env)
        await b.wait_for("return " + ROW, ids[3], what="device rows")
        # approve an available image (the catalog starts with it "available": auto_approve is off)
        cell = "document.querySelector(`tr[data-image-id='${arguments[0]}'] .approval-state`)"
        assert (await b.js(f"return {cell}.textContent", env.image_id)).startswith("available")
        applies = await b.js(
            "return document.querySelector(`tr[data-image-id='${arguments[0]}'] .applies`).textContent",
            env.image_id,
        )
        assert applies.startswith("4 device(s)"), applies

        # the rollout form: image, filter, live count, plan preview, two waves, no soak
        await b.js("document.getElementById('new-rollout').open = true")
        await b.wait_for(
            "return document.getElementById('ro-count').dataset.count === '4'", what="live count"
        )
        await b.js(
            "const m = document.getElementById('ro-model'); m.value = 'NOPE*';"
            " m.dispatchEvent(new Event('input', {bubbles: true}))"
        )
        await b.wait_for(
            "return document.getElementById('ro-count').dataset.count === '0'", what="filtered count"
        )
        await b.js(
            "const m = document.getElementById('ro-model'); m.value = 'TRADFRI*';"
            " m.dispatchEvent(new Event('input', {bubbles: true}))"
        )
        await b.wait_for(
            "return document.getElementById('ro-count').dataset.count === '4'", what="count again"
        )
        await b.wait_for(
            "return document.querySelectorAll('#ro-plan-list li[data-device-id]').length === 4",
            what="plan preview",
        )
        await b.js("document.getElementById('ro-plan').open = true")
        await b.js("document.getElementById('ro-waves').value = '1, 100%'")
        await b.js("document.getElementById('ro-soak').value = '0'")
        await b.js("document.getElementById('ro-maxfail').value = '1'")
        await b.js("document.getElementById('ro-name').value = 'bulbs spring'")
        await shot(b, "rollout-form")
        await b.js("document.querySelector('#rollout-form button[type=submit]').click()")
        await b.wait_for(
            "return document.getElementById('ro-status').textContent.startsWith('Started bulbs spring')",
            what="rollout started",
        )
        [r] = env.core.list_rollouts()
        assert r.selector.model == ["TRADFRI*"] and r.soak_s == 0 and r.max_failures == 1
        await b.wait_for(agree, 0, what="0 updated everywhere")

        # wave 1: one device updates; the card and the table say 1 at once
        wave1 = [d for d in ids if env.core.get_device(d).state == DeviceState.UPDATE_AVAILABLE]  # type: ignore[union-attr]
        assert len(wave1) == 1
        n1 = ids.index(wave1[0]) + 1
        await drive_update(env, n1)
        await b.wait_for(agree, 1, what="1 updated on the card and in the table")
        await env.core.sweep()  # wave 1 done, soak 0: wave 2 opens
        await b.wait_for(
            "return document.querySelector('[data-rollout-id] .wave[data-wave=\"1\"]')?.classList.contains('w-open')",
            what="wave 2 open",
        )
        done = 1
        for n in range(1, 5):
            if n == n1:
                continue
            await drive_update(env, n)
            done += 1
            await b.wait_for(agree, done, what=f"{done} updated on the cards and in the table")
        await env.core.sweep()
        await b.wait_for(
            "return document.querySelector('[data-rollout-id] .state')?.textContent === 'completed'",
            what="rollout completed",
        )
        await shot(b, "overview-rollout-completed")

        # approve: the image becomes approved in the catalog
        await b.js(f"{cell}.querySelector('button').click()", env.image_id)
        await b.wait_for(f"return {cell}?.textContent.startsWith('approved')", env.image_id, what="approved")
        assert (await env.store.get(env.image_id)).approval == "approved"


async def test_phone_width_and_adapter_banner(env: Env) -> None:
    for n in range(1, 4):
        await env.core.observe(info(n))
    env.health["status"] = "degraded"
    env.health["adapters"]["zigbee"] = {
        "state": "failed",
        "error": "cannot open /dev/ttyUSB0: no such device",
        "attempts": 3,
        "next_retry_at": env.clock.now() + 40,
    }
    await env.core.create_rollout(env.image_id, waves=["1", "100%"], soak_s=0)
    # the device the rollout picked for wave 1 fails
    [first] = [
        n for n in range(1, 4) if env.core.get_device(key(n).device_id).state == DeviceState.UPDATE_AVAILABLE
    ]  # type: ignore[union-attr]
    await drive_update(env, first, fail="device reported ABORT")
    async with Browser() as b:
        await login(b, env, width=1280)
        await b.wait_for("return !document.getElementById('banner').hidden", what="adapter banner")
        banner = await b.js("return document.getElementById('banner').textContent")
        assert "Zigbee adapter failed" in banner and "/dev/ttyUSB0" in banner and "next retry" in banner
        await shot(b, "overview-1280")
        await b.size(360, 800)
        await b.wait_for("return " + ROW, key(3).device_id, what="rows at 360 px")
        await no_sideways_scroll(b, "overview at 360 px")
        await shot(b, "overview-360")
        await b.js("document.getElementById('new-rollout').open = true")
        await no_sideways_scroll(b, "rollout form at 360 px")
        await b.js(f"{ROW}.querySelector('a.dev-name').click()", key(first).device_id)
        await b.wait_for("return !document.getElementById('device-view').hidden", what="device page")
        await b.wait_for("return document.querySelectorAll('#dv-history li').length >= 3", what="timeline")
        await no_sideways_scroll(b, "device page at 360 px")
        await shot(b, "device-page-360")
        # keyboard: every control on the device page is reachable and labelled
        unlabelled = await b.js(
            "return [...document.querySelectorAll('#device-view input, #device-view button, #overview input,"
            " #overview select')].filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()"
            " && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
        )
        assert unlabelled == []

"""Full updates of real vendor files through zigpy's codec, the OTA takeover and the real core."""

from __future__ import annotations

from adapters.zigbee.sim import fast_zigpy_timing
from tests.zigbee.harness import DRESDEN, IKEA, SENGLED, VENDOR, make_stack, need, sim_device

import pytest


@pytest.fixture(autouse=True)
def _fast_zigpy():
    with fast_zigpy_timing():
        yield


@pytest.mark.parametrize("image", [IKEA, DRESDEN, SENGLED], ids=["ikea", "dresden", "sengled"])
async def test_real_vendor_file_full_update(tmp_path, image):
    need(image)
    data = image.read_bytes()
    mfr, itype, version = VENDOR[image]
    from gateway.clock import ManualClock

    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR[image])
    stack = await make_stack(tmp_path, [dev], [image], clock=clock)
    try:
        # zigpy's interview ends with an Image Notify: the device queries and downloads by itself
        await stack.run_until(lambda: dev.file_version == version, max_s=600)
        assert dev.completed_images[-1] == data
        await stack.run_until(lambda: stack.record(dev).state == "updated", max_s=600)
        rec = stack.record(dev)
        assert rec.current_version == version
        assert rec.model == "SimLight" and rec.vendor_id == mfr and rec.product_id == itype
        assert rec.sleepy is False
        tr = stack.adapter.transfers[rec.key]
        assert tr.highest_offset == len(data)
        assert tr.bytes_downloaded == len(data)
        # one answer per request: zigpy's own handler never answered as well
        assert dev.stats.unexpected_responses == []
        assert dev.stats.timeouts == 0
    finally:
        await stack.close()

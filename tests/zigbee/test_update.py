"""Full updates of real vendor files through zigpy's codec, the OTA takeover and the real core."""

from __future__ import annotations

import pytest

from adapters.zigbee.sim import Behaviour
from gateway.clock import ManualClock
from tests.fixtures_gen import IMAGES as GENERATED
from tests.zigbee.harness import DRESDEN, IKEA, SENGLED, VENDOR, make_stack, need, sim_device

# Dresden: plain 64-byte Image Block Requests (the full, slowest path); IKEA: large blocks allowed by a
# per-manufacturer cap; Sengled: Image Page Requests.
CASES = {
    "dresden": (DRESDEN, Behaviour(), {}),
    "ikea": (
        IKEA,
        Behaviour(max_data_size=200),
        {"block_size_caps": [{"manufacturer": 4476, "max_block_bytes": 200}]},
    ),
    "sengled": (SENGLED, Behaviour(page_mode=True, page_size=4096, max_data_size=64), {}),
}


@pytest.mark.parametrize("layer", ["generated", "real"])
@pytest.mark.parametrize("case", list(CASES))
async def test_real_vendor_file_full_update(tmp_path, case, layer):
    real, behaviour, zigbee = CASES[case]
    if layer == "generated":  # the same quirks on every clone (tests/fixtures_gen.py)
        gen = next(g for g in GENERATED if g.real_name == real.name)
        image = tmp_path / gen.name
        image.write_bytes(gen.build())
        facts = (gen.manufacturer, gen.image_type, gen.file_version)
    else:
        image = need(real)
        facts = VENDOR[real]
    data = image.read_bytes()
    mfr, itype, version = facts
    clock = ManualClock()
    dev = sim_device(1, clock, facts, behaviour=behaviour)
    stack = await make_stack(tmp_path, [dev], [image], clock=clock, zigbee=zigbee)
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

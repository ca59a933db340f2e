"""Full OTA of the vendor-shaped files through otagw's Zigbee adapter, unmodified bellows and the simulated NCP.

Each real vendor file in ../shared/fixtures/zigbee (an extra layer, skipped with the allow-listed reason when
absent) and each generated stand-in from tests/fixtures_gen.py (EBL, signed GBL, binary header string, rebuilt
at odd sizes so the last block is short) is imported through the store (payload validation included), served
over ASH/EZSP, must arrive byte-exact at the simulated device, and the record must reach `updated` with the new
version read back from the device after it rebooted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.zigbee.sim.device import Behaviour, SimOtaDevice
from gateway.formats import parse_ota_image
from tests.fixtures_gen import BY_NAME, ebl_file, filler, gbl_signed_file
from tests.zigbee.ncp.test_ota_over_ncp import OtaRig, ota_rig

FIXTURES = Path(__file__).resolve().parents[3] / ".." / "shared" / "fixtures" / "zigbee"
VENDOR_FILES = [
    "1135-0000-201000A0-FLS-PP3_RGBW.zigbee",  # binary header string, vendor payload format
    "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota",  # EBL
    "ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota",  # signed GBL
]
BLOCK = 80  # largest block whose sendUnicast still fits one ASH DATA frame; fewer round trips keep this fast

# the generated stand-ins rebuilt at odd sizes: every one ends in a short block
ODD = {
    "gen-binary-header.zigbee": dataclasses.replace(
        BY_NAME["gen-binary-header.zigbee"],
        payload=bytes.fromhex("edfefeca01000000") + filler("fls-odd", 7_001),
    ),
    "gen-ebl.ota": dataclasses.replace(
        BY_NAME["gen-ebl.ota"], payload=ebl_file(program_bytes=4 * 2048 + 777)
    ),
    "gen-gbl-signed.ota": dataclasses.replace(
        BY_NAME["gen-gbl-signed.ota"], payload=gbl_signed_file(program_bytes=9_001)
    ),
}


@pytest.fixture
async def ota(tmp_path: Path) -> AsyncIterator[OtaRig]:
    async with ota_rig(tmp_path, "00:0b:57:ff:fe:00:cc:07", default_max_block_bytes=BLOCK) as rig:
        yield rig
    assert rig.ncp.errors == [] and rig.ncp.unmodelled == []


async def update_with(ota: OtaRig, data: bytes, name: str, n: int, behaviour: Behaviour) -> SimOtaDevice:
    image = parse_ota_image(data)
    hdr = image.header  # type: ignore[union-attr]
    added = await ota.store.add_bytes(data, file_name=name)
    assert added.entry.payload_check != "invalid"
    await ota.core.catalog_changed()
    dev = SimOtaDevice(
        f"00:0d:6f:00:00:00:07:{n:02x}", 0x4700 + n, ota.clock,
        manufacturer_code=hdr.manufacturer_code, image_type=hdr.image_type, file_version=hdr.file_version - 1,
        behaviour=behaviour, seed=n,
    )  # fmt: skip
    ota.air.add(dev)
    dev.start()
    await ota.join(dev)
    await ota.run_until(lambda: dev.file_version == hdr.file_version)
    assert dev.completed_images[-1] == data  # byte-exact on the device side
    key = ota.record_key(dev)
    await ota.run_until(lambda: ota.state(key) == "updated")
    rec = ota.core.get_device(key)
    assert rec is not None and rec.current_version == hdr.file_version  # read back after the reboot
    assert dev.stats.unexpected_responses == []
    return dev


@pytest.mark.parametrize("name", sorted(ODD))
async def test_generated_vendor_quirk_files_at_odd_sizes(ota: OtaRig, name: str) -> None:
    data = ODD[name].build()
    assert len(data) % BLOCK != 0 and len(data) % 64 != 0  # the last block is short at either block size
    if name != "gen-ebl.ota":  # an EBL is 0xFF-padded to 64 bytes by its format: its file size stays even
        assert len(data) % 2 == 1
    dev = await update_with(ota, data, name, 1, Behaviour(max_data_size=BLOCK))
    assert dev.stats.block_requests >= len(data) // BLOCK


@pytest.mark.parametrize("name", VENDOR_FILES)
async def test_real_vendor_files(ota: OtaRig, name: str) -> None:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip("shared fixtures not present")
    data = path.read_bytes()
    # page mode: the server pushes each page's blocks, half the frames of Image Block mode for these large files
    await update_with(ota, data, name, 2, Behaviour(page_mode=True, page_size=4096, max_data_size=BLOCK))

"""Images another process adds or approves (`otagw image add/approve` from the CLI, `docker exec`) reach the
running core at its next change check (CHANGE_POLL_S), not only at the periodic catalog refresh."""

from __future__ import annotations

from pathlib import Path

from gateway.clock import ManualClock
from gateway.core.interface import Available, NotAvailable
from gateway.core.service import CATALOG_REFRESH_S, CHANGE_POLL_S, UpdateCore
from gateway.formats import build_matter_image
from gateway.store.store import ImageStore
from tests.core.conftest import config, matter_dev


def _matter_file(version: int) -> bytes:
    return build_matter_image(
        bytes(range(256)) * 8,
        vendor_id=0xFFF1,
        product_id=0x8001,
        software_version=version,
        software_version_string=f"{version}.0",
    )


async def test_image_approved_by_another_process_is_offered_within_the_change_poll(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = ImageStore(tmp_path / "images")
    await store.open()
    # explicit approval (the default): an added image is offered only once approved
    core = UpdateCore(config(tmp_path, auto_approve=False), store, clock, auto_sweep=False)
    cli = ImageStore(tmp_path / "images")  # the CLI's own connection to the same catalog
    await cli.open()
    try:
        await core.start()
        assert isinstance(await core.query(matter_dev(1)), NotAvailable)

        added = (await cli.add_bytes(_matter_file(2), file_name="fw2.ota")).entry
        await cli.approve(added.image_id, by="cli")

        assert CHANGE_POLL_S < CATALOG_REFRESH_S
        await clock.advance(CHANGE_POLL_S)  # well before the periodic catalog refresh
        got = await core.query(matter_dev(1))
        assert isinstance(got, Available) and got.image.image_id == added.image_id
    finally:
        await core.stop()
        await cli.close()
        await store.close()

"""python-matter-server (7.0.1, pip-installed without its chip-server dependencies) reading otagw's published update
documents with its own code: `load_local_updates` over the update directory, `check_for_update` answering from
it, and `ExternalOtaProvider.fetch_update` downloading the image from otagw and verifying `otaChecksum`."""

from __future__ import annotations

import importlib
import logging
import pathlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gateway.formats import build_matter_image
from tests.publish.conftest import PublishHarness


def matter_server_ota() -> tuple[Any, Any]:
    """Its `ota` package and provider module. `matter_server.server/__init__` starts the whole websocket server
    (chip controller, async_timeout...), so the package is entered below that file; the modules are unmodified."""
    import matter_server

    root = pathlib.Path(matter_server.__file__).parent
    if "matter_server.server" not in sys.modules:
        pkg = types.ModuleType("matter_server.server")
        pkg.__path__ = [str(root / "server")]
        sys.modules["matter_server.server"] = pkg
    return (
        importlib.import_module("matter_server.server.ota"),
        importlib.import_module("matter_server.server.ota.provider"),
    )


async def sync_update_dir(pub: PublishHarness, directory: Path) -> list[str]:
    """What a user's sync job does: fetch the published documents into matter-server's --ota-provider-dir."""
    for old in directory.glob("*.json"):
        old.unlink()
    s = pub.client.session
    listing = await (await s.get(f"{pub.root('mattersrv')}/index.json")).json()
    for name, url in zip(listing["files"], listing["urls"], strict=True):
        resp = await s.get(url)
        assert resp.status == 200
        (directory / name).write_bytes(await resp.read())
    return list(listing["files"])


async def test_matter_server_loads_checks_and_downloads(pub: PublishHarness, tmp_path: Path) -> None:
    ota, provider = matter_server_ota()
    data = build_matter_image(
        bytes(range(200)) * 30, vendor_id=0xFFF1, product_id=0x8001, software_version=3, software_version_string="3.0"
    )
    res = await pub.store.add_bytes(data, file_name="light-v3.ota", source="cli")
    await pub.core.catalog_changed()
    updates = tmp_path / "updates"
    updates.mkdir()
    assert await sync_update_dir(pub, updates) == []  # not approved: nothing published

    await pub.store.approve(res.entry.image_id)
    assert await sync_update_dir(pub, updates) == ["fff1-8001.json"]
    ota._local_updates.clear()
    await ota.load_local_updates(updates)
    log = logging.LoggerAdapter(logging.getLogger("matter-server-test"), {})
    source, update = await ota.check_for_update(log, 0xFFF1, 0x8001, 1)
    assert str(source.value if hasattr(source, "value") else source).lower() == "local"
    assert update["softwareVersion"] == 3 and update["softwareVersionString"] == "3.0"

    work = tmp_path / "provider"
    prov = provider.ExternalOtaProvider(0xFFF1, tmp_path, work)
    await prov.initialize()
    await prov.fetch_update(update)  # downloads from otagw and checks base64(SHA-256) against otaChecksum
    assert (work / "light-v3.ota").read_bytes() == data

    # the check is real: a wrong checksum is refused by matter-server
    with pytest.raises(Exception, match="Checksum mismatch"):
        await prov.fetch_update({**update, "otaChecksum": "A" * 44})

    await pub.store.revoke(res.entry.image_id)
    assert await sync_update_dir(pub, updates) == []

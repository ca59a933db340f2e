"""zigpy's own OTA providers (unmodified RemoteZ2MProvider and RemoteZigpyProvider) against otagw's published
catalogs: they load the index and fetch the images, which zigpy validates (size, checksum, OTA parse); staging
per controller (approval, device filter, rollout wave, revoke), the catalog-read token's reach and metrics."""

from __future__ import annotations

from zigpy.ota.providers import RemoteZ2MProvider, RemoteZigpyProvider

from gateway.api.credentials import CredentialStore
from gateway.core.interface import DeviceInfo, DeviceKey
from gateway.formats import build_zigbee_image
from tests.publish.conftest import ADMIN, PublishHarness


def image(version: int, manufacturer: int = 0x1135, image_type: int = 0x0001, size: int = 5000) -> bytes:
    payload = bytes((i * 7 + version) & 0xFF for i in range(size))
    return build_zigbee_image(
        payload, manufacturer_code=manufacturer, image_type=image_type, file_version=version, header_string="otagw test"
    )


async def z2m_metas(pub: PublishHarness, controller: str = "z2m-home") -> list:
    return list(await RemoteZ2MProvider(url=f"{pub.root(controller)}/index.json").load_index() or [])


async def zigpy_metas(pub: PublishHarness, controller: str = "zha-garage") -> list:
    return list(await RemoteZigpyProvider(url=f"{pub.root(controller)}/index.json").load_index() or [])


async def test_staging_per_controller_and_real_zigpy_fetch(pub: PublishHarness) -> None:
    data = image(0x200)
    image_id = await pub.add_zigbee(data, "lamp-0200.ota")
    entry = await pub.store.get(image_id)
    # added but not approved: absent everywhere, the image URL is a 404 too
    assert await z2m_metas(pub) == [] and await zigpy_metas(pub) == []
    url = f"{pub.root('z2m-home')}/images/{entry.sha256}/lamp-0200.ota"
    assert (await pub.client.session.get(url)).status == 404

    # approved for the z2m-home network only: z2m-home sees it, zha-garage does not
    await pub.store.approve(image_id, selector={"networks": ["z2m-home"]})
    metas = await z2m_metas(pub)
    assert [(m.manufacturer_id, m.image_type, m.file_version, m.file_size) for m in metas] == [
        (0x1135, 0x0001, 0x200, len(data))
    ]
    assert metas[0].checksum.startswith("sha512:")
    fetched = await metas[0].fetch()  # zigpy downloads, checks size + sha512, parses the OTA file
    assert fetched.serialize() == data
    assert await zigpy_metas(pub) == []

    # approved for every device: the zigpy-format controller sees it, with zigpy's sha3-256 checksum
    await pub.store.approve(image_id)
    zmetas = await zigpy_metas(pub)
    assert len(zmetas) == 1 and zmetas[0].checksum.startswith("sha3-256:")
    assert (await zmetas[0].fetch()).serialize() == data

    # metrics: bytes served per image and controller, downloads started/completed
    resp = await pub.client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    text = await resp.text()
    assert f'otagw_publish_bytes_served_total{{controller="z2m-home",image="{image_id}"}} {float(len(data))}' in text
    assert f'otagw_publish_downloads_completed_total{{controller="zha-garage",image="{image_id}"}} 1.0' in text
    assert f'otagw_publish_downloads_started_total{{controller="z2m-home",image="{image_id}"}} 1.0' in text

    # revoked: gone from both, and the image URL stops serving
    await pub.store.revoke(image_id)
    assert await z2m_metas(pub) == [] and await zigpy_metas(pub) == []
    assert (await pub.client.session.get(url)).status == 404


async def test_newest_offered_version_first_and_identity_filters(pub: PublishHarness) -> None:
    old = await pub.add_zigbee(image(0x100), "a-0100.ota")
    new = await pub.add_zigbee(image(0x300), "a-0300.ota")
    other = await pub.add_zigbee(image(0x050, manufacturer=0x117C, image_type=0x2101), "ikea.ota")
    for i in (old, new, other):
        await pub.store.approve(i)
    metas = await z2m_metas(pub)
    assert sorted((m.manufacturer_id, m.file_version) for m in metas) == [(0x1135, 0x300), (0x117C, 0x050)]
    # a device-level filter (model) selects the network only through an observed device of that network
    await pub.store.approve(other, selector={"model": ["TRADFRI*"]})
    assert {m.manufacturer_id for m in await z2m_metas(pub)} == {0x1135}
    await pub.core.observe(
        DeviceInfo(DeviceKey("zigbee", "z2m-home", "00:11:22:33:44:55:66:77", 1), 0x117C, 0x2101,
                   model="TRADFRI bulb", current_version=0x10)
    )
    assert {m.manufacturer_id for m in await z2m_metas(pub)} == {0x1135, 0x117C}
    assert {m.manufacturer_id for m in await zigpy_metas(pub)} == {0x1135}  # no such device on zha-garage


async def test_rollout_wave_reaching_the_network_stages_the_image(pub: PublishHarness) -> None:
    image_id = await pub.add_zigbee(image(0x400), "r.ota")
    for n in range(4):
        await pub.core.observe(
            DeviceInfo(DeviceKey("zigbee", "zha-garage", f"00:00:00:00:00:00:00:0{n}", 1), 0x1135, 0x0001,
                       current_version=0x100)
        )
    assert await zigpy_metas(pub) == []
    r = await pub.core.create_rollout(image_id, selector={"networks": ["zha-garage"]}, waves=["1", "100%"])
    await pub.store.approve_for_rollout(image_id, r.selector, r.rollout_id)
    await pub.core.catalog_changed()
    assert [m.file_version for m in await zigpy_metas(pub)] == [0x400]
    assert await z2m_metas(pub) == []  # the rollout's selector does not reach z2m-home's network
    await pub.core.pause_rollout(r.rollout_id)
    assert await zigpy_metas(pub) == []  # a paused rollout offers nothing (its approval is not general yet)
    await pub.core.abort_rollout(r.rollout_id)
    await pub.store.revoke_approval_of(image_id, f"rollout {r.rollout_id}", by="test")
    assert await zigpy_metas(pub) == []


async def test_catalog_read_token_reads_index_and_images_and_nothing_else(pub: PublishHarness) -> None:
    image_id = await pub.add_zigbee(image(0x200), "x.ota")
    await pub.store.approve(image_id)
    entry = await pub.store.get(image_id)
    s = pub.client.session
    tok = pub.tokens["z2m-home"]
    assert (await s.get(f"{pub.root('z2m-home')}/index.json")).status == 200
    assert (await s.get(f"{pub.root('z2m-home')}/images/{entry.sha256}/x.ota")).status == 200
    # the same token on another controller's catalog, on the admin API, or as a bearer for the API: refused
    r = await s.get(f"{pub.root('zha-garage', tok)}/index.json")
    assert r.status == 403 and "zha-garage" in (await r.json())["error"]["message"]
    for path in ("/api/v1/images", "/api/v1/devices", "/metrics"):
        r = await pub.client.get(path, headers={"Authorization": f"Bearer {tok}"})
        assert r.status == 403, path
    # the admin token is never accepted in a catalog URL; unknown tokens are 401; open controllers need none
    r = await s.get(f"{pub.root('z2m-home', ADMIN)}/index.json")
    assert r.status == 403 and "admin token" in (await r.json())["error"]["message"]
    assert (await s.get(f"{pub.root('z2m-home', 'otagw_nope')}/index.json")).status == 401
    assert (await s.get(f"{pub.base}/publish/z2m-open/open/index.json")).status == 200
    assert (await s.get(f"{pub.base}/publish/z2m-home/open/index.json")).status == 401
    assert (await s.get(f"{pub.base}/publish/nosuch/open/index.json")).status == 404
    # the image list in the index carries the same token (Z2M and ZHA know only URLs)
    body = await (await s.get(f"{pub.root('z2m-home')}/index.json")).json()
    assert body[0]["url"].startswith(f"{pub.root('z2m-home')}/images/")
    # revoking the credential closes the catalog at once (index and image URLs)
    CredentialStore(pub.config.data_dir).revoke("z2m-home")
    assert (await s.get(f"{pub.root('z2m-home')}/index.json")).status == 401
    assert (await s.get(body[0]["url"])).status == 401

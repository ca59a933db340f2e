"""Importers: files and directories, the CHIP otaImageList, Zigbee2MQTT indexes (generated and real data)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from store_helpers import FIXTURES, matter_image, zigbee_image

from gateway.config import ImagesConfig
from gateway.store.errors import ImportListError
from gateway.store.importers import (
    import_configured_sources,
    import_ota_image_list,
    import_paths,
    import_z2m_index,
)
from gateway.store.model import DeviceDescriptor
from gateway.store.selection import select_image
from gateway.store.store import ImageStore
from tests.fixtures_gen import IMAGES as GENERATED_IMAGES
from tests.fixtures_gen import INDEX_REMOTE_ENTRIES, write_fixtures

REAL_INDEX = FIXTURES / "z2m_index.json"
REAL_INDEX_ENTRIES = 353


@dataclass(frozen=True)
class FixtureLayer:
    """Where the vendor-like Zigbee files are: generated (every clone) or the real ones in ../shared."""

    directory: Path
    index_entries: int
    names: dict[str, str]  # real vendor file name -> the name in this layer


@pytest.fixture(params=["generated", "real"])
def vendor_layer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FixtureLayer:
    if request.param == "generated":
        directory = write_fixtures(tmp_path_factory.mktemp("generated-fixtures"))
        return FixtureLayer(
            directory, INDEX_REMOTE_ENTRIES + 1, {g.real_name: g.name for g in GENERATED_IMAGES}
        )
    if not REAL_INDEX.exists():
        pytest.skip("shared fixtures not present")
    return FixtureLayer(FIXTURES, REAL_INDEX_ENTRIES, {n: n for n in REAL_FILES})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    s = ImageStore(tmp_path / "data")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: importers must never fetch."""

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("importer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ------------------------------------------------------------------------------------------- paths
async def test_import_directory_recursively_reports_each_file(store: ImageStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "matter" / "deep").mkdir(parents=True)
    (src / "zigbee").mkdir()
    (src / "matter" / "a.ota").write_bytes(matter_image(version=1))
    (src / "matter" / "deep" / "b.ota").write_bytes(matter_image(version=2))
    (src / "zigbee" / "c.zigbee").write_bytes(zigbee_image())
    (src / "README.txt").write_text("not firmware")
    broken = bytearray(zigbee_image(version=7))
    broken[-3:] = b""  # truncated
    (src / "zigbee" / "broken.ota").write_bytes(bytes(broken))
    (src / ".hidden.ota").write_bytes(matter_image(version=9))

    report = await import_paths(store, [src])
    by_name = {Path(r.item).name: r for r in report.results}
    assert set(by_name) == {"a.ota", "b.ota", "c.zigbee", "README.txt", "broken.ota"}
    assert [by_name[n].status for n in ("a.ota", "b.ota", "c.zigbee")] == ["created"] * 3
    assert by_name["README.txt"].status == "skipped"
    assert by_name["broken.ota"].status == "failed"
    assert "broken.ota" in (by_name["broken.ota"].message or "")
    assert "at byte" in (by_name["broken.ota"].message or "")
    assert not report.ok and report.summary() == "3 created, 0 exists, 1 skipped, 1 failed"
    assert len(await store.list()) == 3

    again = await import_paths(
        store, [src / "matter" / "a.ota", tmp_path / "missing.ota", src / "README.txt"]
    )
    assert [r.status for r in again.results] == ["exists", "failed", "failed"]
    assert "no such file" in (again.results[1].message or "")
    assert "neither Matter OTA" in (again.results[2].message or "")


# ------------------------------------------------------------------------------------------- otaImageList
# Verbatim from reference 002, with each otaURL made relative to the list file.
SDK_EXAMPLE = """{ "foo": 1, // ignored by parser
  "deviceSoftwareVersionModel":
  [
      { "vendorId": 1, "productId": 1, "softwareVersion": 10, "softwareVersionString": "1.0.0", "cDVersionNumber": 18, "softwareVersionValid": true, "minApplicableSoftwareVersion": 0, "maxApplicableSoftwareVersion": 100, "otaURL": "ota_v10.bin" },
      { "vendorId": 1, "productId": 1, "softwareVersion": 20, "softwareVersionString": "1.0.1", "cDVersionNumber": 18, "softwareVersionValid": false, "minApplicableSoftwareVersion": 0, "maxApplicableSoftwareVersion": 100, "otaURL": "ota_v20.bin" },
      { "vendorId": 1, "productId": 1, "softwareVersion": 30, "softwareVersionString": "1.0.2", "cDVersionNumber": 18, "softwareVersionValid": true, "minApplicableSoftwareVersion": 0, "maxApplicableSoftwareVersion": 100, "otaURL": "ota_v30.bin" },
      { "vendorId": 1, "productId": 1, "softwareVersion": 40, "softwareVersionString": "1.1.0", "cDVersionNumber": 18, "softwareVersionValid": true, "minApplicableSoftwareVersion": 0, "maxApplicableSoftwareVersion": 100, "otaURL": "ota_v40.bin" },
      { "vendorId": 1, "productId": 1, "softwareVersion": 50, "softwareVersionString": "1.1.1", "cDVersionNumber": 18, "softwareVersionValid": false, "minApplicableSoftwareVersion": 0, "maxApplicableSoftwareVersion": 100, "otaURL": "ota_v50.bin" }
  ]
}
"""

SDK_VERSIONS = {10: "1.0.0", 20: "1.0.1", 30: "1.0.2", 40: "1.1.0", 50: "1.1.1"}


def _write_sdk_images(folder: Path, **kw: Any) -> None:
    for v, vs in SDK_VERSIONS.items():
        (folder / f"ota_v{v}.bin").write_bytes(matter_image(1, 1, v, vs, **kw))


async def test_sdk_example_list_imports_with_valid_flags(store: ImageStore, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_sdk_images(lists)
    (lists / "list.json").write_text(SDK_EXAMPLE)
    report = await import_ota_image_list(store, lists / "list.json")
    assert report.ok, report.results
    assert [r.status for r in report.results] == ["created"] * 5
    entries = {e.numeric_version: e for e in await store.list()}
    assert {v: e.valid for v, e in entries.items()} == {10: True, 20: False, 30: True, 40: True, 50: False}
    assert {(e.min_applicable, e.max_applicable) for e in entries.values()} == {(0, 100)}
    assert entries[10].source == "otaImageList:list.json"
    # The newest *valid* version is the one served, as in the SDK's provider.
    best = select_image(entries.values(), DeviceDescriptor("matter", 1, 1, 5))
    assert best is not None and best.numeric_version == 40
    # Importing the same list again changes nothing.
    again = await import_ota_image_list(store, lists / "list.json")
    assert [r.status for r in again.results] == ["exists"] * 5


async def test_list_mismatches_name_entry_and_field(store: ImageStore, tmp_path: Path) -> None:
    _write_sdk_images(tmp_path, min_applicable_version=1, max_applicable_version=100)
    (tmp_path / "zb.ota").write_bytes(zigbee_image())
    base = {"vendorId": 1, "productId": 1, "softwareVersionValid": True}
    models = [
        {**base, "softwareVersion": 10, "softwareVersionString": "1.0.0", "otaURL": "ota_v10.bin"},
        {
            **base,
            "productId": 2,
            "softwareVersion": 20,
            "softwareVersionString": "1.0.1",
            "otaURL": "ota_v20.bin",
        },
        {**base, "softwareVersion": 31, "softwareVersionString": "1.0.2", "otaURL": "ota_v30.bin"},
        {**base, "softwareVersion": 40, "softwareVersionString": "1.1", "otaURL": "ota_v40.bin"},
        {
            **base,
            "softwareVersion": 50,
            "softwareVersionString": "1.1.1",
            "minApplicableSoftwareVersion": 0,
            "otaURL": "ota_v50.bin",
        },
        {**base, "softwareVersion": 60, "softwareVersionString": "6", "otaURL": "missing.bin"},
        {**base, "softwareVersion": 70, "softwareVersionString": "7", "otaURL": "zb.ota"},
        {**base, "vendorId": "1", "softwareVersion": 80, "softwareVersionString": "8", "otaURL": "x"},
        {**base, "vendorId": 70000, "softwareVersion": 80, "softwareVersionString": "8", "otaURL": "x"},
        {**base, "softwareVersion": 90, "softwareVersionString": "9"},
        {**base, "softwareVersion": 91, "softwareVersionString": "9", "otaURL": "https://example.com/fw.bin"},
        "not an object",
    ]
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"deviceSoftwareVersionModel": models}))
    report = await import_ota_image_list(store, path)
    r = report.results
    where = f"{path}: deviceSoftwareVersionModel"
    assert r[0].status == "created"
    assert r[1].message == f"{where}[1].productId: list says 2, image header says 1"
    assert r[2].message == f"{where}[2].softwareVersion: list says 31, image header says 30"
    assert r[3].message == f'{where}[3].softwareVersionString: list says "1.1", image header says "1.1.0"'
    assert r[4].message == f"{where}[4].minApplicableSoftwareVersion: list says 0, image header says 1"
    assert r[5].message == f"{where}[5].otaURL: no such file: {tmp_path / 'missing.bin'}"
    assert r[6].message == f"{where}[6]: otaURL names a Zigbee OTA file, not a Matter OTA image"
    assert r[7].message == f'{where}[7].vendorId: expected int, got "1"'
    assert r[8].message == f"{where}[8].vendorId: 70000 is outside 0..65535"
    assert r[9].message == f"{where}[9].otaURL: missing"
    assert r[10].status == "skipped" and "remote URL not fetched" in (r[10].message or "")
    assert r[11].message == f'{where}[11]: expected an object, got "not an object"'
    assert [x.status for x in r].count("failed") == 10
    assert [e.numeric_version for e in await store.list()] == [10]


async def test_list_only_applicability_restricts_the_image(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(matter_image(1, 1, 10, "1.0"))  # header without min/max applicable
    doc = {
        "deviceSoftwareVersionModel": [
            {
                "vendorId": 1,
                "productId": 1,
                "softwareVersion": 10,
                "softwareVersionString": "1.0",
                "minApplicableSoftwareVersion": 3,
                "maxApplicableSoftwareVersion": 8,
                "otaURL": f"file://{tmp_path / 'a.bin'}",
            }
        ]
    }
    (tmp_path / "l.json").write_text(json.dumps(doc))
    (e,) = [r.entry for r in (await import_ota_image_list(store, tmp_path / "l.json")).results]
    assert e is not None and (e.min_applicable, e.max_applicable) == (3, 8)
    assert select_image([e], DeviceDescriptor("matter", 1, 1, 2)) is None
    assert select_image([e], DeviceDescriptor("matter", 1, 1, 3)) == e


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"deviceSoftwareVersionModel": [\n  {"vendorId": 1,,}]}',
            r"l\.json: invalid JSON at line 2, column 18",
        ),
        ("[1, 2]", "expected an object with deviceSoftwareVersionModel"),
        (
            '{"deviceSoftwareVersionModel": {}}',
            "deviceSoftwareVersionModel: expected a list of entries, a dict",
        ),
        ("{}", "deviceSoftwareVersionModel: expected a list of entries, missing"),
    ],
)
async def test_malformed_list_files(store: ImageStore, tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "l.json").write_text(text)
    with pytest.raises(ImportListError, match=message):
        await import_ota_image_list(store, tmp_path / "l.json")


async def test_comments_inside_strings_are_kept(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "fw.bin").write_bytes(matter_image(1, 1, 10, "1.0"))
    text = (
        '/* block\n comment */ {"deviceSoftwareVersionModel": [ // line\n'
        '{"vendorId": 1, "productId": 1, "softwareVersion": 10, "softwareVersionString": "1.0", '
        '"note": "/* not a comment */ \\" // nor this", "otaURL": "sub//fw.bin"}]}'
    )
    (tmp_path / "l.json").write_text(text)
    report = await import_ota_image_list(store, tmp_path / "l.json")
    assert [r.status for r in report.results] == ["created"], report.results


# ------------------------------------------------------------------------------------------- zigbee2mqtt
def _z2m_entry(path: Path, rel: str, **fields: Any) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "fileSize": len(data),
        "sha512": hashlib.sha512(data).hexdigest(),
        "url": f"https://github.com/Koenkk/zigbee-OTA/raw/master/{rel}",
        "path": rel,
        **fields,
    }


async def test_generated_index_resolves_checks_and_carries_fields(
    store: ImageStore, tmp_path: Path, no_network: None
) -> None:
    root = tmp_path / "ota"
    (root / "images" / "Lumi").mkdir(parents=True)
    lumi = root / "images" / "Lumi" / "hvac.ota"
    lumi.write_bytes(zigbee_image(4447, 257, 30, min_hw=1, max_hw=9))
    other = root / "images" / "x.ota"
    other.write_bytes(zigbee_image(4448, 3, 9))
    by_basename = root / "basename.ota"
    by_basename.write_bytes(zigbee_image(4449, 4, 1))
    ident = {"manufacturerCode": 4447, "imageType": 257, "fileVersion": 30}
    index = [
        _z2m_entry(lumi, "images/Lumi/hvac.ota", **ident, modelId="lumi.ctrl_hvac.es1", hardwareVersionMin=3),
        _z2m_entry(lumi, "images/Lumi/hvac.ota", **ident, modelId="lumi.airrtc.tcpecn01", releaseNotes="https://n"),
        _z2m_entry(other, "images/x.ota", manufacturerCode=4448, imageType=3, fileVersion=9, minFileVersion=2,
                   maxFileVersion=8),
        {**_z2m_entry(by_basename, "gone/basename.ota", manufacturerCode=4449, imageType=4, fileVersion=1)},
        {**_z2m_entry(other, "images/x.ota", manufacturerCode=4448, imageType=3, fileVersion=9), "sha512": "0" * 128},
        {**_z2m_entry(other, "images/x.ota", manufacturerCode=4448, imageType=3, fileVersion=9), "fileSize": 5},
        _z2m_entry(other, "images/x.ota", manufacturerCode=4448, imageType=4, fileVersion=9),
        _z2m_entry(other, "images/x.ota", manufacturerCode=4448, imageType=3, fileVersion=9,
                   manufacturerName=["_TZ3000_abc"]),
        {"manufacturerCode": 1, "imageType": 1, "fileVersion": 1, "url": "https://example.com/only-remote.ota"},
        {"manufacturerCode": 1, "imageType": 1, "url": "https://example.com/x.ota"},
    ]  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    report = await import_z2m_index(store, root / "index.json")
    r = report.results
    assert [x.status for x in r] == [
        "created", "created", "created", "created", "failed", "failed", "failed", "skipped", "skipped", "failed",
    ]  # fmt: skip
    where = f"{root / 'index.json'}: "
    assert r[4].message is not None and r[4].message.startswith(where + "[4].sha512: does not match")
    assert r[5].message == f"{where}[5].fileSize: index says 5, {other} has {other.stat().st_size}"
    assert r[6].message == f"{where}[6].imageType: index says 4 (0x4), image header says 3 (0x3)"
    assert "manufacturerName" in (r[7].message or "")
    assert r[8].message == "URL-only entry, not fetched: https://example.com/only-remote.ota"
    assert r[9].message == f"{where}[9].fileVersion: missing"

    e0, e1, e2, e3 = (x.entry for x in r[:4])
    assert e0 is not None and e1 is not None and e2 is not None and e3 is not None
    assert e0.sha256 == e1.sha256 and e0.image_id != e1.image_id  # one file, two model restrictions
    assert (e0.model_ids, e0.min_hw, e0.max_hw) == (("lumi.ctrl_hvac.es1",), 3, 9)  # hw range intersected
    assert (e1.model_ids, e1.release_notes_url, e1.min_hw) == (("lumi.airrtc.tcpecn01",), "https://n", 1)
    assert (e2.min_applicable, e2.max_applicable) == (2, 8)
    assert e3.source == "z2m:index.json"
    dev = DeviceDescriptor("zigbee", 4447, 257, 20, hardware_version=2, model="lumi.airrtc.tcpecn01")
    assert select_image(await store.entries_for("zigbee", 4447, 257), dev) == e1
    again = await import_z2m_index(store, root / "index.json")
    assert [x.status for x in again.results[:4]] == ["exists"] * 4


async def test_malformed_index(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "i.json").write_text('{"not": "a list"}')
    with pytest.raises(ImportListError, match="expected a list of image entries, got dict"):
        await import_z2m_index(store, tmp_path / "i.json")


async def test_real_index_alone_is_all_skipped_and_nothing_fetched(
    store: ImageStore, tmp_path: Path, no_network: None, vendor_layer: FixtureLayer
) -> None:
    index = tmp_path / "z2m_index.json"
    source = vendor_layer.directory / "z2m_index.json"
    shutil.copyfile(source, index)
    report = await import_z2m_index(store, index)
    assert len(report.results) == len(json.loads(source.read_text())) == vendor_layer.index_entries
    assert {r.status for r in report.results} == {"skipped"}
    assert all((r.message or "").startswith("URL-only entry, not fetched: https://") for r in report.results)
    assert await store.list() == []


async def test_real_index_in_place_finds_the_vendor_file_by_url_basename(
    store: ImageStore, no_network: None, vendor_layer: FixtureLayer
) -> None:
    report = await import_z2m_index(store, vendor_layer.directory / "z2m_index.json")
    created = [r for r in report.results if r.status == "created"]
    assert report.ok
    assert len(created) == 1  # the Sengled RDL2016091 file sits next to the index; its sha512 matches
    e = created[0].entry
    assert e is not None
    assert (e.vendor_id, e.product_id, e.numeric_version, e.file_name) == (
        4448,
        3,
        9,
        vendor_layer.names["RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota"],
    )


REAL_FILES = {
    # file name -> (manufacturerCode, imageType, fileVersion, modelId) as published for these vendors
    "1135-0000-201000A0-FLS-PP3_RGBW.zigbee": (4405, 0, 537919648, None),
    "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota": (4448, 3, 9, None),
    "ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota": (4476, 10242, 268572245, "TRADFRI bulb E27 CWS 806lm"),
}


async def test_real_vendor_files_via_copied_index(
    store: ImageStore, tmp_path: Path, no_network: None, vendor_layer: FixtureLayer
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    index = []
    for real_name, (mfr, itype, version, model) in REAL_FILES.items():
        name = vendor_layer.names[real_name]
        shutil.copyfile(vendor_layer.directory / name, images / name)
        fields: dict[str, Any] = {"manufacturerCode": mfr, "imageType": itype, "fileVersion": version}
        if model:
            fields["modelId"] = model
        index.append(_z2m_entry(images / name, f"images/{name}", **fields))
    (tmp_path / "index.json").write_text(json.dumps(index))
    report = await import_z2m_index(store, tmp_path / "index.json")
    assert [r.status for r in report.results] == ["created"] * 3, report.results
    entries = {e.file_name: e for e in await store.list()}
    ikea = entries[vendor_layer.names["ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota"]]
    assert (ikea.vendor_id, ikea.product_id, ikea.version_string, ikea.description) == (
        4476,
        10242,
        "0x10021655",
        "GBL Signed OTA",
    )
    assert ikea.model_ids == ("TRADFRI bulb E27 CWS 806lm",)
    binary = entries[vendor_layer.names["1135-0000-201000A0-FLS-PP3_RGBW.zigbee"]]
    assert binary.description is None  # binary header string
    for name, e in entries.items():
        with store.open_reader(e) as reader:
            assert reader.read(0, reader.size) == (vendor_layer.directory / name).read_bytes()
    # An IKEA bulb on an older firmware gets the file; another model does not.
    bulb = DeviceDescriptor("zigbee", 4476, 10242, 0x10010000, model="TRADFRI bulb E27 CWS 806lm")
    assert select_image(await store.entries_for("zigbee", 4476, 10242), bulb) == ikea
    other = DeviceDescriptor("zigbee", 4476, 10242, 0x10010000, model="TRADFRI remote")
    assert select_image(await store.entries_for("zigbee", 4476, 10242), other) is None


async def test_configured_sources(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.ota").write_bytes(matter_image(version=4))
    _write_sdk_images(tmp_path)
    (tmp_path / "list.json").write_text(SDK_EXAMPLE)
    (tmp_path / "broken.json").write_text("[")
    cfg = ImagesConfig(
        directories=[tmp_path / "dir"],
        ota_image_lists=[tmp_path / "list.json"],
        z2m_indexes=[tmp_path / "broken.json"],
    )
    report = await import_configured_sources(store, cfg)
    assert [r.status for r in report.results] == ["created"] * 6 + ["failed"]
    assert "broken.json: invalid JSON" in (report.results[-1].message or "")

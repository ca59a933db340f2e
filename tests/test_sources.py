"""Firmware sources (issue 12) against a local upstream: zigpy's own provider classes through otagw's source
configuration, the DCL, PAA certificates, verification failures, conditional requests, errors and the schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sources_upstream import Upstream, dcl_version, z2m_item
from store_helpers import FIXTURES, matter_image, zigbee_image

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.records import DeviceRecord
from gateway.sources.manager import SourceManager
from gateway.sources.model import SourceError
from gateway.store.store import ImageStore

T0 = 1_700_000_000.0


def zdev(
    n: int, version: int, mfr: int = 0x117C, itype: int = 0x2811, model: str | None = None
) -> DeviceRecord:
    ieee = ":".join(f"{b:02x}" for b in n.to_bytes(8, "big"))
    return DeviceRecord(
        f"zigbee:pan:1a2b:{ieee}:1", "zigbee", "pan:1a2b", ieee, 1, T0, T0,
        vendor_id=mfr, product_id=itype, current_version=version, model=model,
    )  # fmt: skip


def mdev(n: int, version: int, vid: int = 0xFFF1, pid: int = 0x8001) -> DeviceRecord:
    return DeviceRecord(
        f"matter:fabric:aa:{n:016X}:0", "matter", "fabric:aa", f"{n:016X}", 0, T0, T0,
        vendor_id=vid, product_id=pid, current_version=version,
    )  # fmt: skip


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.close()


class Env:
    def __init__(
        self, tmp: Path, sources: list[dict[str, Any]], fleet: list[DeviceRecord], **policy: Any
    ) -> None:
        self.config = parse_config({"data_dir": str(tmp / "data"), "sources": sources, "policy": policy})
        self.clock = ManualClock(T0)
        self.store = ImageStore(self.config.data_dir, clock=self.clock)
        self.fleet = fleet
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.catalog_changes = 0

        async def changed() -> None:
            self.catalog_changes += 1

        self.manager = SourceManager(
            self.config,
            self.store,
            self.clock,
            fleet=lambda: self.fleet,
            on_catalog_change=changed,
            publish=lambda kind, data: self.events.append((kind, data)),
            rng=random.Random(7),
        )

    async def __aenter__(self) -> Env:
        await self.store.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.stop()
        await self.store.close()


# ------------------------------------------------------------------------------------------ no network by default
async def test_nothing_is_contacted_unless_enabled(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path)})
    assert cfg.sources and not any(s.enabled for s in cfg.sources)  # the shipped list: all disabled
    assert {s.type for s in cfg.sources} >= {
        "z2m",
        "zigpy_ota",
        "ikea",
        "ledvance",
        "sonoff",
        "dcl",
        "dcl_paa",
    }
    store = ImageStore(cfg.data_dir)
    await store.open()
    manager = SourceManager(cfg, store, ManualClock(T0))
    try:
        await manager.start()
        assert manager._task is None and manager._session is None
        with pytest.raises(SourceError, match="source z2m is disabled: set `enabled: true`"):
            await manager.check("z2m")
        assert manager._session is None
    finally:
        await manager.stop()
        await store.close()


# ------------------------------------------------------------------------------------------ Zigbee2MQTT index
def _z2m_upstream(up: Upstream) -> tuple[bytes, bytes, bytes]:
    old = zigbee_image(0x117C, 0x2811, 0x100)
    new = zigbee_image(0x117C, 0x2811, 0x200, min_hw=1, max_hw=3)
    other = zigbee_image(0x1234, 0x0001, 0x300)
    up.files["/fw/old.ota"], up.files["/fw/new.ota"], up.files["/fw/other.ota"] = old, new, other
    up.put_json(
        "/index.json",
        [
            z2m_item(up.url("/fw/old.ota"), old, 0x117C, 0x2811, 0x100),
            z2m_item(
                up.url("/fw/new.ota"), new, 0x117C, 0x2811, 0x200, hardwareVersionMin=1, hardwareVersionMax=3
            ),
            z2m_item(
                up.url("/fw/other.ota"), other, 0x1234, 0x0001, 0x300, modelId="OTHER", minFileVersion=0x10
            ),
        ],
    )
    return old, new, other


async def test_z2m_check_downloads_only_what_the_fleet_uses(tmp_path: Path, upstream: Upstream) -> None:
    _, new, _ = _z2m_upstream(upstream)
    src = {"name": "koenkk", "type": "z2m", "enabled": True, "url": upstream.url("/index.json")}
    async with Env(tmp_path, [src], [zdev(1, 0x100), zdev(2, 0x150)]) as env:
        report = await env.manager.check("koenkk")
        assert report.errors == [] and report.rejected == [] and report.entries == 3
        assert len(report.imported) == 1  # only the newest applicable image; nothing for 0x1234
        assert upstream.hits["/fw/new.ota"] == 1 and upstream.hits["/fw/old.ota"] == 0
        assert upstream.hits["/fw/other.ota"] == 0
        (entry,) = await env.store.list()
        assert entry.sha256 == hashlib.sha256(new).hexdigest()
        assert (entry.source, entry.approval) == ("source:koenkk", "available")
        assert env.catalog_changes == 1
        assert [e[1]["event"] for e in env.events] == ["checked", "imported"]

        # metadata again: the server answers 304, nothing is downloaded twice
        again = await env.manager.check("koenkk")
        assert again.not_modified and again.imported == [] and again.entries == 3
        assert upstream.not_modified["/index.json"] == 1 and upstream.hits["/fw/new.ota"] == 1
        status = env.manager.statuses()[0]
        assert (status.checks, status.errors, status.downloads, status.not_modified) == (2, 0, 1, 1)
        state = tmp_path / "data" / "sources" / "koenkk.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
        assert env.manager.metrics()["koenkk"]["entries"] == 3


async def test_trusted_source_images_start_approved(tmp_path: Path, upstream: Upstream) -> None:
    _z2m_upstream(upstream)
    src = {"name": "koenkk", "type": "z2m", "enabled": True, "url": upstream.url("/index.json")}
    async with Env(tmp_path, [src], [zdev(1, 0x100)], auto_approve_sources=["koenkk"]) as env:
        await env.manager.check("koenkk")
        (entry,) = await env.store.list()
        assert (entry.approval, entry.approved_by) == ("approved", "policy.auto_approve_sources")


async def test_manual_download_mode_and_fetch_on_request(tmp_path: Path, upstream: Upstream) -> None:
    _z2m_upstream(upstream)
    src = {
        "name": "k",
        "type": "z2m",
        "enabled": True,
        "url": upstream.url("/index.json"),
        "download": "manual",
    }
    async with Env(tmp_path, [src], [zdev(1, 0x100)]) as env:
        report = await env.manager.check("k")
        assert report.imported == [] and await env.store.list() == []
        got = await env.manager.fetch("1234:0001:00000300:OTHER")
        (entry,) = await env.store.list()
        assert (
            got.imported == [entry.image_id]
            and entry.model_ids == ("OTHER",)
            and entry.min_applicable == 0x10
        )
        with pytest.raises(SourceError, match="no index entry"):
            await env.manager.fetch("nope")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda item: item.update(sha512="00" * 64), "sha512"),
        (lambda item: item.update(fileSize=item["fileSize"] + 1), "size"),
        (lambda item: item.update(imageType=0x2812), "image_type"),
        (lambda item: item.update(manufacturerCode=0x117D), "manufacturer"),
        (lambda item: item.update(fileVersion=0x201), "version"),
        (lambda item: item.update(hardwareVersionMin=2), "min_hardware_version"),
    ],
)
async def test_mismatching_downloads_never_enter_the_catalog(
    tmp_path: Path, upstream: Upstream, mutate: Any, field: str
) -> None:
    _z2m_upstream(upstream)
    index = json.loads(upstream.files["/index.json"])
    mutate(index[1])
    if field in ("image_type", "manufacturer"):  # keep a matching device for the changed identity
        fleet = [zdev(1, 0x100, mfr=index[1]["manufacturerCode"], itype=index[1]["imageType"])]
    else:
        fleet = [zdev(1, 0x100)]
    if field == "version":
        index[0]["fileVersion"] = 0x1  # so the mutated entry is the best one
    upstream.put_json("/index.json", index)
    src = {"name": "k", "type": "z2m", "enabled": True, "url": upstream.url("/index.json")}
    async with Env(tmp_path, [src], fleet) as env:
        report = await env.manager.check("k")
        assert len(report.rejected) == 1, report
        assert f": {field}: " in report.rejected[0] and report.rejected[0].startswith("k entry ")
        assert await env.store.list() == []
        assert env.manager.statuses()[0].rejected == 1
        assert env.events[-1][1]["event"] == "rejected" and env.events[-1][1]["field"] == field
        assert not list((tmp_path / "data" / "blobs").rglob("*.ota"))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda up: up.status.update({"/index.json": 404}), "HTTP 404"),
        (lambda up: up.status.update({"/index.json": 503}), "HTTP 503"),
        (lambda up: up.truncate.add("/index.json"), "truncated"),
        (lambda up: up.hang.add("/index.json"), "no complete answer within 0.2 s"),
        (lambda up: up.put_json("/index.json", [{"fileVersion": "x"}]), "index rejected by zigpy"),
    ],
)
async def test_index_failures_are_reported_and_backed_off(
    tmp_path: Path, upstream: Upstream, setup: Any, message: str
) -> None:
    _z2m_upstream(upstream)
    setup(upstream)
    src = {"name": "k", "type": "z2m", "enabled": True, "url": upstream.url("/index.json"), "timeout_s": 0.2}
    async with Env(tmp_path, [src], [zdev(1, 0x100)]) as env:
        report = await env.manager.check("k")
        assert len(report.errors) == 1 and message in report.errors[0]
        assert report.errors[0].startswith(upstream.url("/index.json")) or "source k:" in report.errors[0]
        status = env.manager.statuses()[0]
        assert (
            status.errors == 1 and status.consecutive_failures == 1 and message in (status.last_error or "")
        )
        # backoff: about 60 s (+/- 10 % jitter), doubling
        assert 54 <= (status.next_check or 0) - T0 <= 66
        await env.manager.check("k")
        assert 108 <= (env.manager.statuses()[0].next_check or 0) - T0 <= 132
        assert await env.store.list() == []


async def test_redirects_are_followed(tmp_path: Path, upstream: Upstream) -> None:
    _z2m_upstream(upstream)
    upstream.redirects["/moved.json"] = "/index.json"
    upstream.redirects["/fw/moved.ota"] = "/fw/new.ota"
    index = json.loads(upstream.files["/index.json"])
    index[1]["url"] = upstream.url("/fw/moved.ota")
    upstream.put_json("/index.json", index)
    src = {"name": "k", "type": "z2m", "enabled": True, "url": upstream.url("/moved.json")}
    async with Env(tmp_path, [src], [zdev(1, 0x100)]) as env:
        report = await env.manager.check("k")
        assert report.errors == [] and len(report.imported) == 1


async def test_schedule_with_jitter_on_the_injected_clock(tmp_path: Path, upstream: Upstream) -> None:
    _z2m_upstream(upstream)
    src = {
        "name": "k",
        "type": "z2m",
        "enabled": True,
        "url": upstream.url("/index.json"),
        "check_interval_s": 3600,
    }
    async with Env(tmp_path, [src], [zdev(1, 0x100)]) as env:
        await env.manager.start()
        await env.clock.advance(0)
        for _ in range(50):  # the first check runs at once (real I/O against the local server)
            if upstream.hits["/index.json"]:
                break
            await asyncio.sleep(0.01)
        assert upstream.hits["/index.json"] == 1
        first_next = env.manager.statuses()[0].next_check or 0
        assert 3240 <= first_next - T0 <= 3960
        await env.clock.advance(3000)
        assert upstream.hits["/index.json"] == 1  # not due yet
        await env.clock.advance(1000)
        for _ in range(50):
            if upstream.hits["/index.json"] == 2:
                break
            await asyncio.sleep(0.01)
        assert upstream.hits["/index.json"] == 2 and upstream.not_modified["/index.json"] == 1


async def test_real_z2m_index_parses_every_entry(tmp_path: Path, upstream: Upstream) -> None:
    """The real Koenkk index when ../shared is present, and a generated one with every field kind always."""
    generated = [
        z2m_item("https://example.invalid/a.ota", b"a", 4476, 1, 2),
        z2m_item(
            "https://example.invalid/b.ota", b"b", 4107, 2, 3, modelId="M", manufacturerName=["Signify"]
        ),
        z2m_item("https://example.invalid/c.ota", b"c", 4447, 3, 4, minFileVersion=1, maxFileVersion=3),
        z2m_item(
            "https://example.invalid/d.ota", b"d", 4417, 4, 5, hardwareVersionMin=1, hardwareVersionMax=2
        ),
        z2m_item("https://example.invalid/e.ota", b"e", 4417, 4, 5, path="images/e.ota", releaseNotes="fix"),
    ]
    indexes = {"/generated.json": generated}
    real = FIXTURES / "z2m_index.json"
    if real.exists():
        indexes["/real.json"] = json.loads(real.read_text())
    for path, data in indexes.items():
        upstream.put_json(path, data)
    sources = [
        {"name": f"z{i}", "type": "z2m", "enabled": True, "url": upstream.url(p), "download": "manual"}
        for i, p in enumerate(indexes)
    ]
    async with Env(tmp_path, sources, []) as env:
        for i, data in enumerate(indexes.values()):
            report = await env.manager.check(f"z{i}")
            assert report.errors == [] and report.entries == len(data)
            entries = env.manager.entries(f"z{i}")
            assert [(e.vendor_id, e.product_id, e.version) for e in entries] == [
                (d["manufacturerCode"], d["imageType"], d["fileVersion"]) for d in data
            ]
            assert all(e.checksum_type == "sha512" and e.url for e in entries)


# ------------------------------------------------------------------------------------------ zigpy's other providers
async def test_zigpy_provider_json(tmp_path: Path, upstream: Upstream) -> None:
    img = zigbee_image(0x1141, 0x0022, 0x30)
    upstream.files["/z/fw.ota"] = img
    upstream.put_json(
        "/zigpy.json",
        {
            "firmwares": [
                {
                    "binary_url": upstream.url("/z/fw.ota"),
                    "file_version": 0x30,
                    "file_size": len(img),
                    "image_type": 0x22,
                    "manufacturer_id": 0x1141,
                    "checksum": "sha3-256:" + hashlib.sha3_256(img).hexdigest(),  # zigpy's schema: sha3-256
                    "release_notes": "better",
                    "release_url": "https://example.invalid/rn",
                }
            ]
        },
    )
    src = {"name": "zp", "type": "zigpy", "enabled": True, "url": upstream.url("/zigpy.json")}
    async with Env(tmp_path, [src], [zdev(1, 0x10, mfr=0x1141, itype=0x22)]) as env:
        report = await env.manager.check("zp")
        assert report.errors == [] and len(report.imported) == 1
        (entry,) = await env.store.list()
        assert entry.release_notes_url == "https://example.invalid/rn" and entry.description == "better"


async def test_zigpy_ota_channel_ledvance_ikea_and_sonoff_via_mirror(
    tmp_path: Path, upstream: Upstream
) -> None:
    z = zigbee_image(0x1002, 0x0001, 0x11)
    led = zigbee_image(4489, 0x0005, 0x01020304)
    ikea = zigbee_image(4476, 0x4203, 0x11)
    son = zigbee_image(4742, 0x0007, 0x9)
    upstream.files.update({"/zo/fw.ota": z, "/led/dl": led, "/ikea/fw_v17_x.ota": ikea, "/son/fw.ota": son})
    upstream.put_json(
        "/zo/stable.json", {"schemas": {"zigpy_v2": {"version": "1", "url": upstream.url("/zo/index.json")}}}
    )
    upstream.put_json(
        "/zo/index.json",
        {
            "firmwares": [
                {
                    "binary_url": upstream.url("/zo/fw.ota"),
                    "file_version": 0x11,
                    "file_size": len(z),
                    "image_type": 1,
                    "manufacturer_id": 0x1002,
                    "checksum": "sha3-256:" + hashlib.sha3_256(z).hexdigest(),
                }
            ]
        },
    )
    upstream.put_json(
        "/led/firmwares",
        {
            "firmwares": [
                {
                    "blob": None,
                    "identity": {
                        "company": 4489,
                        "product": 5,
                        "version": {"major": 1, "minor": 2, "build": 3, "revision": 4},
                    },
                    "releaseNotes": "notes",
                    "shA256": hashlib.sha256(led).hexdigest(),
                    "name": "A19 RGBW",
                    "productName": "A19 RGBW",
                    "fullName": "A19 RGBW/01020304",
                    "extension": ".ota",
                    "released": "2023-01-01T00:00:00",
                    "salesRegion": "us",
                    "length": len(led),
                }
            ]
        },
    )
    upstream.put_json(
        "/ikea/version_info.json",
        [
            {"fw_type": 3, "fw_sha3_256": "00", "fw_binary_url": "https://gw.invalid/gw.raw"},
            {
                "fw_image_type": 0x4203,
                "fw_type": 2,
                "fw_sha3_256": hashlib.sha3_256(ikea).hexdigest(),
                "fw_binary_url": upstream.url("/ikea/fw_v17_x.ota"),
            },
        ],
    )
    upstream.put_json(
        "/son/upgrade.json",
        [
            {
                "fw_binary_url": upstream.url("/son/fw.ota"),
                "fw_file_version": 9,
                "fw_filesize": len(son),
                "fw_image_type": 7,
                "fw_manufacturer_id": 4742,
                "model_id": "ZBMINI",
            }
        ],
    )
    sources = [
        {"name": "zo", "type": "zigpy_ota", "enabled": True, "url": upstream.url("/zo/stable.json")},
        {"name": "led", "type": "ledvance", "enabled": True, "url": upstream.url("/led/firmwares"),
         "mirror": {"https://api.update.ledvance.com/v1/zigbee/firmwares/download": upstream.url("/led/dl")}},
        {"name": "ikea", "type": "ikea", "enabled": True, "url": upstream.url("/ikea/version_info.json")},
        # zigpy hard-codes Sonoff's URL: a mirror points it here, as an air-gapped user would
        {"name": "son", "type": "sonoff", "enabled": True,
         "mirror": {"https://zigbee-ota.sonoff.tech/releases/": upstream.url("/son/")}},
    ]  # fmt: skip
    fleet = [
        zdev(1, 0x1, mfr=0x1002, itype=1),
        zdev(2, 0x1, mfr=4489, itype=5, model="A19 RGBW"),
        zdev(3, 0x1, mfr=4476, itype=0x4203),
        zdev(4, 0x1, mfr=4742, itype=7, model="ZBMINI"),
    ]
    async with Env(tmp_path, sources, fleet) as env:
        for name in ("zo", "led", "ikea", "son"):
            report = await env.manager.check(name)
            assert report.errors == [] and report.rejected == [] and len(report.imported) == 1, (name, report)
        assert upstream.hits["/led/dl?Company=4489&Product=5&Version=1.2.3.4"] == 1
        assert len(await env.store.list()) == 4


# ------------------------------------------------------------------------------------------ Matter DCL
async def test_dcl_versions_for_the_fleet(tmp_path: Path, upstream: Upstream) -> None:
    v2 = matter_image(0xFFF1, 0x8001, 2, vs="1.0.2", max_applicable_version=1)
    v3 = matter_image(0xFFF1, 0x8001, 3, vs="1.0.3", max_applicable_version=2)
    upstream.files["/ota/v2.ota"], upstream.files["/ota/v3.ota"] = v2, v3
    base = "/dcl/model/versions/65521/32769"
    upstream.put_json(base, {"modelVersions": {"vid": 65521, "pid": 32769, "softwareVersions": [1, 2, 3]}})
    upstream.put_json(
        base + "/1", {"modelVersion": {"vid": 65521, "pid": 32769, "softwareVersion": 1, "otaUrl": ""}}
    )
    upstream.put_json(base + "/2", dcl_version(65521, 32769, 2, upstream.url("/ota/v2.ota"), v2))
    # v3: the ledger says a different size than the file has: refused, the fleet gets v2
    bad = dcl_version(65521, 32769, 3, upstream.url("/ota/v3.ota"), v3)
    bad["modelVersion"]["otaFileSize"] = "12"
    upstream.put_json(base + "/3", bad)
    src = {"name": "dcl", "type": "dcl", "enabled": True, "url": upstream.base, "models": ["131B:0002"]}
    async with Env(tmp_path, [src], [mdev(1, 1), mdev(2, 2)]) as env:
        report = await env.manager.check("dcl")
        assert report.errors == [], report
        assert report.entries == 2  # version 1 has no otaUrl; 131B:0002 answers 404 (not on the ledger)
        assert upstream.hits["/dcl/model/versions/4891/2"] == 1
        assert (
            len(report.rejected) == 1
            and "fff1:8001:3" in report.rejected[0]
            and ": size: " in report.rejected[0]
        )
        (entry,) = await env.store.list()
        assert (entry.numeric_version, entry.source) == (2, "source:dcl")
        assert entry.release_notes_url == "https://example.invalid/notes/2"
        # details are immutable: a second check only revalidates the versions list
        await env.manager.check("dcl")
        assert upstream.hits[base + "/2"] == 1 and upstream.not_modified[base] == 1


async def test_dcl_checksum_and_header_mismatch(tmp_path: Path, upstream: Upstream) -> None:
    v2 = matter_image(0xFFF1, 0x8001, 2, vs="1.0.2")
    upstream.files["/ota/v2.ota"] = v2
    base = "/dcl/model/versions/65521/32769"
    upstream.put_json(base, {"modelVersions": {"vid": 65521, "pid": 32769, "softwareVersions": [2]}})
    record = dcl_version(65521, 32769, 2, upstream.url("/ota/v2.ota"), v2, softwareVersionString="2.0")
    upstream.put_json(base + "/2", record)
    src = {"name": "dcl", "type": "dcl", "enabled": True, "url": upstream.base}
    async with Env(tmp_path, [src], [mdev(1, 1)]) as env:
        report = await env.manager.check("dcl")
        assert len(report.rejected) == 1 and ": version_string: the file says '1.0.2'" in report.rejected[0]
    record["modelVersion"]["softwareVersionString"] = "1.0.2"
    record["modelVersion"]["otaChecksum"] = "AAAA"
    upstream.put_json(base + "/2", record)
    async with Env(tmp_path / "2", [src], [mdev(1, 1)]) as env:
        report = await env.manager.check("dcl")
        assert len(report.rejected) == 1 and ": sha256: " in report.rejected[0]
        assert await env.store.list() == []


# ------------------------------------------------------------------------------------------ PAA certificates
async def test_paa_certificates_from_the_dcl(tmp_path: Path, upstream: Upstream) -> None:
    def cert(cn: str) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(dt.datetime(2023, 1, 1))
            .not_valid_after(dt.datetime(2099, 1, 1))
            .sign(key, hashes.SHA256())
        )

    certs = [cert("Matter PAA 1"), cert("Matter PAA 2")]
    idents = [
        {"subject": "TUFUVEVSIFBBQSAx/w==", "subjectKeyId": "AB:CD:01"},
        {"subject": "MATTER2", "subjectKeyId": "AB:CD:02"},
    ]
    upstream.put_json(
        "/dcl/pki/root-certificates",
        {"approvedRootCertificates": {"certs": [*idents, {"subject": "X", "subjectKeyId": "EE"}]}},
    )
    for ident, c in zip(idents, certs, strict=True):
        path = f"/dcl/pki/certificates/{ident['subject']}/{ident['subjectKeyId']}"  # as the server decodes it
        pem = c.public_bytes(serialization.Encoding.PEM).decode()
        upstream.put_json(
            path, {"approvedCertificates": {**ident, "certs": [{"pemCert": pem, "isRoot": True}]}}
        )
    src = {"name": "paa", "type": "dcl_paa", "enabled": True, "url": upstream.base}
    async with Env(tmp_path, [src], []) as env:
        report = await env.manager.check("paa")
        assert len(report.errors) == 1 and "HTTP 404" in report.errors[0]  # the third is not served
        d = tmp_path / "data" / "paa-certificates"
        files = sorted(d.iterdir())
        assert [f.name for f in files] == ["paa-abcd01.der", "paa-abcd02.der"]
        assert files[0].read_bytes() == certs[0].public_bytes(serialization.Encoding.DER)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        assert env.manager.statuses()[0].downloads == 2
        await env.manager.check("paa")
        assert env.manager.statuses()[0].downloads == 2  # unchanged files are not rewritten


# ------------------------------------------------------------------------------------------ API and CLI
async def test_api_sources_routes_metrics_and_events(tmp_path: Path, upstream: Upstream) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.api.app import ApiServices, create_app
    from gateway.core.service import UpdateCore
    from tests.core.conftest import zigbee_dev

    _z2m_upstream(upstream)
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": [{"name": "k", "type": "z2m", "enabled": True, "url": upstream.url("/index.json")}],
        }
    )
    clock = ManualClock(T0)
    store = ImageStore(cfg.data_dir, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    await core.observe(zigbee_dev(1, version=0x100))
    app = create_app(
        ApiServices(core=core, store=store, config=cfg, token="t" * 32, clock=clock, progress_interval=0)
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    auth = {"Authorization": "Bearer " + "t" * 32}
    seen: list[tuple[str, Any]] = []
    core.events.add_listener(lambda ev: seen.append((ev.kind, ev.data.get("event"))))
    try:
        resp = await client.get("/api/v1/sources", headers=auth)
        assert resp.status == 200 and [s["name"] for s in await resp.json()] == ["k"]
        resp = await client.post("/api/v1/sources/k/check", headers=auth)
        body = await resp.json()
        assert resp.status == 200 and len(body["imported"]) == 1 and body["entries"] == 3
        image_id = body["imported"][0]
        # plan: the update is named, with its source and the approve command
        resp = await client.get("/api/v1/plan", headers=auth)
        text = json.dumps(await resp.json())
        assert "available from source k, not approved" in text and f"otagw image approve {image_id}" in text
        resp = await client.post("/api/v1/sources/nope/check", headers=auth)
        assert resp.status == 404
        resp = await client.post("/api/v1/sources/fetch", json={"entry": "zz"}, headers=auth)
        assert resp.status == 404
        resp = await client.get("/metrics", headers=auth)
        metrics = await resp.text()
        assert 'otagw_source_entries{source="k"} 3.0' in metrics
        assert 'otagw_source_downloads{source="k"} 1.0' in metrics
        assert ("source", "checked") in seen and ("source", "imported") in seen
    finally:
        await client.close()
        await core.stop()
        await store.close()


def test_cli_sources_list_check_fetch(tmp_path: Path) -> None:
    import threading

    from click.testing import CliRunner

    from gateway.cli import main

    loop = asyncio.new_event_loop()
    up = Upstream()
    loop.run_until_complete(up.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        _z2m_upstream(up)
        cfg = tmp_path / "otagw.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "data_dir": str(tmp_path / "data"),
                    "sources": [
                        {"name": "k", "type": "z2m", "enabled": True, "url": up.url("/index.json")},
                        {"name": "off", "type": "dcl"},
                    ],
                }
            )
        )
        runner = CliRunner()
        out = runner.invoke(main, ["-c", str(cfg), "sources", "check", "off"])
        assert out.exit_code == 2 and "source off is disabled" in out.output
        out = runner.invoke(main, ["-c", str(cfg), "sources", "check"])
        assert out.exit_code == 0, out.output
        assert out.output.startswith("k: 3 entries; 0 imported, 0 rejected")  # no devices recorded here
        out = runner.invoke(main, ["-c", str(cfg), "sources", "list", "--entries"])
        assert "k:117c:2811:00000200" in out.output and "yes" in out.output
        out = runner.invoke(main, ["-c", str(cfg), "sources", "fetch", "k:117c:2811:00000200"])
        assert out.exit_code == 0 and "1 imported" in out.output and "otagw image approve" in out.output
        out = runner.invoke(main, ["-c", str(cfg), "image", "list"])
        assert "available" in out.output and "0x00000200" in out.output
    finally:
        asyncio.run_coroutine_threadsafe(up.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_source_config_errors_name_the_key(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"sources\[0\]\.models: .*got .nope."):
        parse_config({"sources": [{"name": "d", "type": "dcl", "models": ["nope"]}]})
    with pytest.raises(ConfigError, match="expected an http"):
        parse_config({"sources": [{"name": "d", "type": "dcl", "url": "ftp://x"}]})
    with pytest.raises(ConfigError, match="is used by an earlier source"):
        parse_config({"sources": [{"name": "d", "type": "dcl"}, {"name": "d", "type": "z2m"}]})
    with pytest.raises(ConfigError, match="'nope' is not the name of a source"):
        parse_config({"policy": {"auto_approve_sources": ["nope"]}})

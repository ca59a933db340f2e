"""Pre-flight payload check (issue 18): zigpy's EBL/GBL validators at import and before every offer.

Generated Silicon Labs EBL/GBL payloads (good, bad CRC, truncated), the real vendor files where present (with a
corrupted copy of each), the catalog verdict and its migration, the policy for unknown formats, a blob corrupted
after import caught before a block is sent, and a Matter header that disagrees with its catalog entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.clock import ManualClock
from gateway.core.interface import Available, NotAvailable, UnknownToken
from gateway.core.service import UpdateCore
from gateway.formats import build_matter_image, build_zigbee_image, parse_ota_image
from gateway.formats.payload_check import check_payload
from gateway.store.blobs import BlobStore
from gateway.store.catalog import MIGRATIONS, Catalog
from gateway.store.errors import ImageRejectedError
from gateway.store.store import ImageStore, entry_from_image
from tests.core.conftest import T0, config, matter_dev, zigbee_dev
from tests.fixtures_gen import BY_NAME, GeneratedImage

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "zigbee"
EBL, GBL, BINARY = BY_NAME["gen-ebl.ota"], BY_NAME["gen-gbl-signed.ota"], BY_NAME["gen-binary-header.zigbee"]


def with_payload(g: GeneratedImage, payload: bytes) -> bytes:
    return build_zigbee_image(
        payload,
        manufacturer_code=g.manufacturer,
        image_type=g.image_type,
        file_version=g.file_version,
        header_string=g.header,
    )


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x5A
    return bytes(b)


# the firmware's own bytes: a program-data record in the middle, which only the CRC-32 protects
BAD_CRC_EBL = with_payload(EBL, flip(EBL.payload, 4000))
BAD_CRC_GBL = with_payload(GBL, flip(GBL.payload, 20_000))
TRUNCATED_EBL = with_payload(EBL, EBL.payload[: len(EBL.payload) - 256])  # ends before the end tag
TRUNCATED_GBL = with_payload(GBL, GBL.payload[:-100])


def verdict(data: bytes) -> tuple[str, str, int | None]:
    v = check_payload(data, parse_ota_image(data))
    return v.status, v.reason, v.offset


@pytest.mark.parametrize(
    ("data", "status", "why"),
    [
        (EBL.build(), "valid", "EBL/GBL"),
        (GBL.build(), "valid", "EBL/GBL"),
        (BINARY.build(), "unknown", "not a Silicon Labs"),
        (BAD_CRC_EBL, "invalid", "CRC-32 is invalid"),
        (BAD_CRC_GBL, "invalid", "CRC-32 is invalid"),
        (TRUNCATED_EBL, "invalid", "truncated"),
        (TRUNCATED_GBL, "invalid", "truncated"),
    ],
    ids=["ebl", "gbl", "unknown", "ebl-bad-crc", "gbl-bad-crc", "ebl-truncated", "gbl-truncated"],
)
def test_generated_payload_verdicts(data: bytes, status: str, why: str) -> None:
    got_status, reason, offset = verdict(data)
    assert got_status == status and why in reason
    if status == "invalid":
        assert offset == parse_ota_image(data).subelements[0].offset  # type: ignore[union-attr]


def test_matter_payload_is_valid_by_its_digest() -> None:
    data = build_matter_image(
        b"x" * 500, vendor_id=1, product_id=2, software_version=3, software_version_string="3"
    )
    status, reason, _ = verdict(data)
    assert status == "valid" and "digest" in reason


async def test_import_refuses_an_invalid_payload_and_stores_nothing(tmp_path: Path) -> None:
    async with ImageStore(tmp_path) as store:
        for bad, name in ((BAD_CRC_EBL, "bad-crc.ota"), (TRUNCATED_GBL, "cut.ota")):
            with pytest.raises(
                ImageRejectedError, match=rf"{name}: invalid payload: upgrade image: .* at byte 62"
            ):
                await store.add_bytes(bad, file_name=name)
        assert await store.list() == []
        assert list(store.blobs.iter_shas()) == []
        ok = (await store.add_bytes(EBL.build(), file_name="ebl.ota")).entry
        unknown = (await store.add_bytes(BINARY.build(), file_name="bin.zigbee")).entry
        assert (ok.payload_check, unknown.payload_check) == ("valid", "unknown")
        stored = {e.image_id: e for e in await store.list()}
        assert stored[ok.image_id].payload_check == "valid"
        assert "zigpy validators" in (stored[ok.image_id].payload_reason or "")
        assert stored[unknown.image_id].payload_check == "unknown"


REAL = {
    "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota": "valid",  # EBL
    "ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota": "valid",  # GBL
    "1135-0000-201000A0-FLS-PP3_RGBW.zigbee": "unknown",  # a vendor format zigpy has no validator for
}


@pytest.mark.parametrize("name", sorted(REAL))
async def test_real_vendor_files_and_a_corrupted_copy(name: str, tmp_path: Path) -> None:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip("shared fixtures not present")
    data = path.read_bytes()
    assert verdict(data)[0] == REAL[name]
    image = parse_ota_image(data)
    sub = image.subelements[0]  # type: ignore[union-attr]
    corrupted = flip(data, sub.offset + sub.length // 2)
    async with ImageStore(tmp_path) as store:
        assert (await store.add_bytes(data, file_name=name)).entry.payload_check == REAL[name]
        if REAL[name] == "valid":
            assert verdict(corrupted)[0] == "invalid"
            with pytest.raises(ImageRejectedError, match="invalid payload"):
                await store.add_bytes(corrupted, file_name="corrupted-" + name)
        else:
            # nothing inside an unknown format can be checked: it stays "unknown", offered only where policy
            # allows (below); the blob digest still catches any change after import
            assert verdict(corrupted)[0] == "unknown"


async def test_unknown_format_is_offered_only_where_policy_allows(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with ImageStore(tmp_path / "images") as store:
        await store.add_bytes(BINARY.build(), file_name="bin.zigbee")
        dev = zigbee_dev(1, manuf=BINARY.manufacturer, itype=BINARY.image_type)
        other = zigbee_dev(2, manuf=BINARY.manufacturer, itype=BINARY.image_type, tags=("lab",))
        cfg = config(
            tmp_path,
            allow_unvalidated_payload=False,
            rules=[{"match": {"tags": ["lab"]}, "allow_unvalidated_payload": True}],
        )
        core = UpdateCore(cfg, store, clock, auto_sweep=False)
        await core.start()
        try:
            res = await core.query(dev)
            assert isinstance(res, NotAvailable)
            assert "not validated" in res.reason and "allow_unvalidated_payload is false" in res.reason
            plan = {p.device_id: p for p in core.plan()}
            assert "not validated" in plan[dev.key.device_id].reason
            assert isinstance(await core.query(other), Available)  # the lab rule allows it
        finally:
            await core.stop()
        core = UpdateCore(
            config(tmp_path), store, clock, auto_sweep=False
        )  # default: allowed, like z2m/zigpy
        await core.start()
        try:
            assert isinstance(await core.query(dev), Available)
        finally:
            await core.stop()


async def test_catalog_rows_from_before_the_check_are_checked_on_open(tmp_path: Path) -> None:
    """Migration 3: rows imported before the check are 'unchecked' until the store checks their blobs."""
    # the catalog as an older otagw left it: schema 2, and a file it accepted whose payload is broken
    blobs = BlobStore(tmp_path / "blobs")
    blobs.prepare()
    cat = Catalog(tmp_path / "catalog.db", migrations=MIGRATIONS[:2])
    await cat.open()
    shas: dict[str, str] = {}
    for name, data in (("good", EBL.build()), ("bad", BAD_CRC_GBL)):
        sha = shas[name] = blobs.put(data)
        e = entry_from_image(
            parse_ota_image(data), sha256=sha, size=len(data), file_name=name, source="old", added_at=T0
        )
        cols = [c for c in e.__dataclass_fields__ if not c.startswith("payload")]
        values = {c: getattr(e, c) for c in cols}
        values.update(model_ids="[]", valid=1)
        await cat.db.execute(
            f"INSERT INTO images ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            tuple(values[c] for c in cols),
        )
    await cat.close()
    blobs.close_all()
    async with ImageStore(tmp_path) as store:
        assert await store.catalog.schema_version() == 3
        by_sha = {e.sha256: e for e in await store.list()}
        assert by_sha[shas["good"]].payload_check == "valid"
        assert by_sha[shas["bad"]].payload_check == "invalid"
        assert "CRC-32" in (by_sha[shas["bad"]].payload_reason or "")
        core = UpdateCore(config(tmp_path / "core"), store, ManualClock(T0), auto_sweep=False)
        await core.start()
        try:
            res = await core.query(zigbee_dev(1, manuf=GBL.manufacturer, itype=GBL.image_type))
            assert (
                isinstance(res, NotAvailable) and "payload of image" in res.reason and "invalid" in res.reason
            )
        finally:
            await core.stop()


async def test_blob_corrupted_after_import_is_caught_before_an_offer(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with ImageStore(tmp_path / "images") as store:
        entry = (await store.add_bytes(EBL.build(), file_name="ebl.ota")).entry
        core = UpdateCore(config(tmp_path), store, clock, auto_sweep=False)
        await core.start()
        try:
            dev = zigbee_dev(1, manuf=EBL.manufacturer, itype=EBL.image_type)
            first = await core.query(dev)
            assert isinstance(first, Available)
            assert core.open_image(first.token).read(0, 4)
            # the file rots on disk: a payload byte changes (so does its hash)
            store.blobs.path_for(entry.sha256).write_bytes(BAD_CRC_EBL)
            other = zigbee_dev(2, manuf=EBL.manufacturer, itype=EBL.image_type)
            res = await core.query(other)
            assert isinstance(res, NotAvailable) and "invalid" in res.reason  # no token: no block can be sent
            rec = core.get_device(other.key.device_id)
            assert rec is not None and rec.token is None
            assert core.metrics()["images_invalidated"] == {"zigbee": 1}
            with pytest.raises(UnknownToken):  # the first device's offer ended too
                await core.progress(first.token, 0, 64)
            await core.sweep()
            assert (await store.get(entry.image_id)).valid is False
        finally:
            await core.stop()


async def test_matter_header_disagreeing_with_its_catalog_entry_is_refused(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    data = build_matter_image(
        b"\x42" * 3000,
        vendor_id=0xFFF1,
        product_id=0x8001,
        software_version=3,
        software_version_string="3.0",
        min_applicable_version=1,
    )
    async with ImageStore(tmp_path / "images") as store:
        entry = (await store.add_bytes(data, file_name="fw3.ota")).entry
        # the catalog row says something the header does not (an edited or mis-migrated row)
        await store.catalog.db.execute(
            "UPDATE images SET version_string = '3.1', min_applicable = 0 WHERE image_id = ?",
            (entry.image_id,),
        )
        await store.catalog.db.commit()
        core = UpdateCore(config(tmp_path), store, clock, auto_sweep=False)
        await core.start()
        try:
            res = await core.query(matter_dev(1))
            assert isinstance(res, NotAvailable)
            rec = core.get_device(matter_dev(1).key.device_id)
            assert rec is not None and rec.token is None
            await core.sweep()
            stored = await store.get(entry.image_id)
            assert stored.valid is False
            events = await core.history(matter_dev(1).key.device_id)
            assert all(h.new_state != "querying" for h in events)
        finally:
            await core.stop()
        # the refusal names every disagreement
        with pytest.raises(
            Exception, match=r"version '3.0' \(3\), catalog '3.1'.*MinApplicableSoftwareVersion 1"
        ):
            store.open_reader(await store.get(entry.image_id))


def test_inspect_and_list_show_the_verdict(tmp_path: Path) -> None:
    good, bad = tmp_path / "ebl.ota", tmp_path / "bad.ota"
    good.write_bytes(EBL.build())
    bad.write_bytes(BAD_CRC_EBL)
    runner = CliRunner()
    out = runner.invoke(main, ["image", "inspect", "--json", str(good)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["payload_check"] == "valid"
    out = runner.invoke(main, ["image", "inspect", str(bad)], catch_exceptions=False)
    assert out.exit_code == 2
    assert "payload_check: invalid" in out.output and "CRC-32 is invalid" in out.output
    data = tmp_path / "data"
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(f"data_dir: {data}\n")
    shutil.copy(good, tmp_path / "copy.ota")
    out = runner.invoke(main, ["--config", str(cfg), "image", "add", str(good)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["--config", str(cfg), "image", "list"], catch_exceptions=False)
    assert "PAYLOAD" in out.output and "valid" in out.output
    out = runner.invoke(main, ["--config", str(cfg), "image", "add", str(bad)], catch_exceptions=False)
    assert out.exit_code != 0 and "invalid payload" in out.output

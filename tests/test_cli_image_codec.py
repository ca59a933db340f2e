"""`otagw image inspect|create-matter|create-zigbee` through click's CliRunner on the real `main` group."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.formats import build_matter_image, build_zigbee_image, parse_matter_image, parse_zigbee_image
from tests.fixtures_gen import BY_NAME as GENERATED

REPO = Path(__file__).resolve().parent.parent

FIXTURE = REPO / ".." / "shared" / "fixtures" / "zigbee" / "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["image", *args], catch_exceptions=False)


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(os.urandom(3000))
    return path


def test_create_matter_then_inspect(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "fw.ota"
    result = run(
        "create-matter",
        "--vendor-id",
        "0xFFF1",
        "--product-id",
        "32769",
        "--version",
        "0x00010203",
        "--version-string",
        "1.2.3",
        "--min-applicable",
        "0x10",
        "--max-applicable",
        "0x00010202",
        "--release-notes-url",
        "https://example.com/1.2.3",
        "--digest",
        "sha3-256",
        str(payload),
        str(out),
    )
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() in result.stdout
    h = parse_matter_image(data).header
    assert (h.vendor_id, h.product_id, h.software_version, h.software_version_string) == (
        0xFFF1,
        32769,
        0x00010203,
        "1.2.3",
    )
    assert (h.min_applicable_version, h.max_applicable_version) == (0x10, 0x00010202)
    assert h.release_notes_url == "https://example.com/1.2.3" and h.digest_type == 10
    assert bytes(parse_matter_image(data).payload(data)) == payload.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw.bin", "fw.ota"]  # no temp file left

    text = run("inspect", str(out))
    assert text.exit_code == 0, text.output
    assert "protocol: matter" in text.stdout and "vendor_id: 65521 (0xfff1)" in text.stdout
    assert "digest_check: ok" in text.stdout and "digest_name: sha3-256" in text.stdout
    as_json = run("inspect", "--json", str(out))
    report = json.loads(as_json.stdout)
    assert report["protocol"] == "matter" and report["digest_ok"] is True
    assert report["software_version"] == 0x00010203 and report["release_notes_url"] == h.release_notes_url
    assert report["digest"] == h.digest.hex() and report["size"] == len(data)
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["payload_offset"] + h.payload_size == report["total_size"] == len(data)


def test_create_zigbee_then_inspect(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "fw.zigbee"
    result = run(
        "create-zigbee",
        "--manufacturer",
        "0x1037",
        "--image-type",
        "0xFFC1",
        "--version",
        "0x01020304",
        "--stack-version",
        "2",
        "--header-string",
        "otagw test",
        "--min-hw",
        "1",
        "--max-hw",
        "0x0a",
        "--destination",
        "00:0d:6f:00:0a:bc:de:f1",
        "--security-credential",
        "1",
        str(payload),
        str(out),
    )
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    image = parse_zigbee_image(data)
    h = image.header
    assert (h.manufacturer_code, h.image_type, h.file_version, h.stack_version) == (
        0x1037,
        0xFFC1,
        0x01020304,
        2,
    )
    assert (h.min_hardware_version, h.max_hardware_version, h.security_credential_version) == (1, 10, 1)
    assert h.upgrade_file_destination == "00:0d:6f:00:0a:bc:de:f1" and h.header_text == "otagw test"
    assert bytes(image.subelements[0].data(data)) == payload.read_bytes()

    report = json.loads(run("inspect", "--json", str(out)).stdout)
    assert report["protocol"] == "zigbee" and report["image_type_name"] == "client configuration"
    assert report["upgrade_file_destination"] == "00:0d:6f:00:0a:bc:de:f1"
    assert report["subelements"] == [{"tag": 0, "name": "upgrade image", "offset": 75, "length": 3000}]
    text = run("inspect", str(out)).stdout
    assert "manufacturer_code: 4151 (0x1037)" in text and "tag 0x0000 (upgrade image): 3000 bytes" in text


@pytest.mark.parametrize("layer", ["generated", "real"])
def test_inspect_real_vendor_file(layer: str, tmp_path: Path) -> None:
    if layer == "generated":  # the same EBL quirks, on every clone (tests/fixtures_gen.py)
        gen = GENERATED["gen-ebl.ota"]
        path, size = tmp_path / gen.name, len(gen.build())
        path.write_bytes(gen.build())
    else:
        if not FIXTURE.is_file():
            pytest.skip("shared fixtures not present")
        path, size = FIXTURE, 116478
    report = json.loads(run("inspect", "--json", str(path)).stdout)
    assert (report["manufacturer_code"], report["image_type"], report["file_version"]) == (0x1160, 3, 9)
    assert report["header_string"] == "EBL ElementClassic_E11GX3" and report["size"] == size
    assert report["subelements"] == [{"tag": 0, "name": "upgrade image", "offset": 62, "length": size - 62}]


def test_inspect_bad_files(tmp_path: Path) -> None:
    good = build_matter_image(
        b"p" * 100, vendor_id=1, product_id=2, software_version=3, software_version_string="3"
    )
    cut = tmp_path / "cut.ota"
    cut.write_bytes(good[:-10])
    line = _one_error_line(run("inspect", str(cut)))
    assert line.endswith(f"at byte {len(good) - 10}") and "cut.ota" in line

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 not an ota file")
    assert "at byte 0" in _one_error_line(run("inspect", "--json", str(junk)))

    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert "at byte 0" in _one_error_line(run("inspect", str(empty)))

    zigbee = bytearray(build_zigbee_image(b"z" * 20, manufacturer_code=1, image_type=1, file_version=1))
    zigbee[60] = 0xFF  # sub-element length now overruns the image
    bad_zigbee = tmp_path / "bad.zigbee"
    bad_zigbee.write_bytes(bytes(zigbee))
    assert "sub-element" in _one_error_line(run("inspect", str(bad_zigbee)))


def test_inspect_digest_mismatch_reports_then_fails(tmp_path: Path) -> None:
    data = bytearray(
        build_matter_image(
            b"p" * 100, vendor_id=1, product_id=2, software_version=3, software_version_string="3"
        )
    )
    data[-1] ^= 1
    path = tmp_path / "tampered.ota"
    path.write_bytes(bytes(data))
    result = run("inspect", "--json", str(path))
    assert json.loads(result.stdout)["digest_ok"] is False
    assert "does not match" in _one_error_line(result)
    text = run("inspect", str(path))
    assert "digest_check: FAILED" in text.stdout
    _one_error_line(text)


@pytest.mark.parametrize(
    "args",
    [
        ["--vendor-id", "0x10000"],  # out of range for u16
        ["--vendor-id", "twelve"],
        ["--digest", "md5"],
        ["--min-applicable", "5", "--max-applicable", "4"],  # builder refuses: one line, no traceback
        ["--version-string", "x" * 65],
    ],
)
def test_create_matter_bad_options(tmp_path: Path, payload: Path, args: list[str]) -> None:
    base = {"--vendor-id": "1", "--product-id": "2", "--version": "3", "--version-string": "3.0"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [item for pair in base.items() for item in pair]
    result = run("create-matter", *argv, str(payload), str(tmp_path / "out.ota"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.ota").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--min-hw", "1"],
        ["--destination", "00:11"],
        ["--header-string", "y" * 33],
        ["--security-credential", "256"],
        ["--image-type", "-1"],
    ],
)
def test_create_zigbee_bad_options(tmp_path: Path, payload: Path, args: list[str]) -> None:
    argv = ["--manufacturer", "1", "--image-type", "2", "--version", "3", *args]
    result = run("create-zigbee", *argv, str(payload), str(tmp_path / "out.zigbee"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.zigbee").exists()


def test_create_into_missing_directory_is_one_line(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "no" / "such" / "dir.ota"
    result = run(
        "create-matter",
        "--vendor-id",
        "1",
        "--product-id",
        "1",
        "--version",
        "1",
        "--version-string",
        "1",
        str(payload),
        str(out),
    )
    assert "cannot write" in _one_error_line(result)


def test_create_replaces_existing_output(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "fw.zigbee"
    out.write_bytes(b"old contents")
    result = run(
        "create-zigbee", "--manufacturer", "1", "--image-type", "2", "--version", "3", str(payload), str(out)
    )
    assert result.exit_code == 0, result.output
    assert parse_zigbee_image(out.read_bytes()).header.file_version == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw.bin", "fw.zigbee"]


def test_real_entry_point_bad_file_is_one_line(tmp_path: Path) -> None:
    """Through `python -m gateway` (run_cli): exit 2 and exactly one stderr line, no traceback."""
    bad = tmp_path / "bad.ota"
    bad.write_bytes(b"\x1e\xf1\xee\x1b" + b"\x00" * 8)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "image", "inspect", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: data ends inside the 16-byte Matter OTA fixed header at byte 12"
    ]

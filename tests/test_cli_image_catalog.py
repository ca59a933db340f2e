"""`otagw image add|list|remove|import-list|import-z2m-index` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_helpers import matter_image, zigbee_image

from gateway.cli import main


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "otagw.yaml"
    path.write_text("data_dir: data\n")
    return path


def run(cfg: Path, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["-c", str(cfg), "image", *args], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_add_list_remove_roundtrip(cfg: Path, tmp_path: Path) -> None:
    m = tmp_path / "m.ota"
    m.write_bytes(matter_image(0xFFF1, 0x8001, 3))
    z = tmp_path / "z.ota"
    z.write_bytes(zigbee_image(0x117C, 0x2811, 0x10021655))

    code, out, _ = run(cfg, "add", str(m), str(z))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "STATUS",
        "ID",
        "PROTO",
        "VENDOR",
        "PRODUCT",
        "VERSION",
        "FILE",
        "/",
        "MESSAGE",
    ]
    assert lines[1].split()[:6][0] == "created" and "0xFFF1" in lines[1] and "1.0.3" in lines[1]
    assert lines[-1] == "2 created, 0 exists, 0 skipped, 0 failed"
    assert (tmp_path / "data" / "catalog.db").exists()

    code, out, _ = run(cfg, "add", "--json", str(m))
    doc = json.loads(out)
    assert code == 0 and doc["summary"]["exists"] == 1 and doc["results"][0]["status"] == "exists"
    image_id = doc["results"][0]["image_id"]

    code, out, _ = run(cfg, "list", "--json")
    listed = json.loads(out)
    assert code == 0 and {e["protocol"] for e in listed} == {"matter", "zigbee"}
    assert {e["image_id"] for e in listed} >= {image_id}
    code, out, _ = run(cfg, "list", "--protocol", "zigbee")
    assert code == 0 and "0x10021655" in out and "matter" not in out

    code, out, _ = run(cfg, "remove", image_id[:10])
    assert code == 0 and out.startswith(f"removed {image_id} matter:fff1:8001:3:")
    code, out, _ = run(cfg, "list", "--json")
    assert [e["protocol"] for e in json.loads(out)] == ["zigbee"]


def test_errors_are_one_line_exit_2(cfg: Path, tmp_path: Path) -> None:
    code, out, err = run(cfg, "remove", "0123456789abcdef")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and err.startswith("error: image '0123456789abcdef': no image")
    code, _, err = run(cfg, "add", str(tmp_path / "nope.ota"))
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope.ota'}: no such file or directory"
    (tmp_path / "bad.json").write_text("{oops")
    code, _, err = run(cfg, "import-list", str(tmp_path / "bad.json"))
    assert code == 2 and err.startswith(f"error: {tmp_path / 'bad.json'}: invalid JSON at line 1, column 2")
    code, _, err = run(cfg, "import-z2m-index", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err


def test_partial_import_prints_every_result_and_exits_1(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "good.ota").write_bytes(matter_image())
    (tmp_path / "bad.ota").write_bytes(b"\x1e\xf1\xee\x0b" + b"\x00" * 10)
    code, out, _ = run(cfg, "add", str(tmp_path / "good.ota"), str(tmp_path / "bad.ota"))
    assert code == 1
    assert "created" in out and "failed" in out and "bad.ota" in out
    assert out.splitlines()[-1] == "1 created, 0 exists, 0 skipped, 1 failed"


def test_import_list_and_index(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "v2.bin").write_bytes(matter_image(1, 1, 2, "2.0"))
    (tmp_path / "list.json").write_text(
        json.dumps(
            {
                "deviceSoftwareVersionModel": [
                    {"vendorId": 1, "productId": 1, "softwareVersion": 2, "softwareVersionString": "2.0",
                     "softwareVersionValid": False, "otaURL": "v2.bin"},
                ]
            }
        )
    )  # fmt: skip
    code, out, _ = run(cfg, "import-list", "--json", str(tmp_path / "list.json"))
    assert code == 0 and json.loads(out)["summary"]["created"] == 1
    code, out, _ = run(cfg, "list")
    assert code == 0 and out.splitlines()[1].split()[7] == "no"  # VALID column

    (tmp_path / "index.json").write_text(
        json.dumps(
            [{"manufacturerCode": 1, "imageType": 1, "fileVersion": 1, "url": "https://example.com/a.ota"}]
        )
    )
    code, out, _ = run(cfg, "import-z2m-index", str(tmp_path / "index.json"))
    assert code == 0 and "URL-only entry, not fetched" in out
    assert out.splitlines()[-1] == "0 created, 0 exists, 1 skipped, 0 failed"

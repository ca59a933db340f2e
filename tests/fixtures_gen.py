"""Generated stand-ins for the vendor Zigbee OTA files in ../shared/fixtures/zigbee, so every clone runs those paths.

The vendor files cannot ship with the repo; these deterministic equivalents reproduce what makes them awkward
(read from the real files with `otagw image inspect` and their sub-element layout):

- `gen-binary-header.zigbee` (like 1135-0000-201000A0-FLS-PP3_RGBW.zigbee): a 32-byte header string that is
  binary (NULs, bytes >= 0x80, no terminator) rather than text, and a payload opening with a vendor magic.
- `gen-ebl.ota` (like Sengled RDL2016091...ota): header string "EBL ElementClassic_E11GX3" NUL-padded; the upgrade
  image is a Silicon Labs EBL file: big-endian tag/length records (header tag 0x0000 of 140 bytes, program-data
  tags 0xFD03 of 2052 bytes), the end tag 0xFC04 carrying a CRC-32, then 0xFF padding to a 64-byte boundary.
- `gen-gbl-signed.ota` (like the IKEA mgm210l file): header string "GBL Signed OTA"; the upgrade image is a signed
  GBL file: little-endian tag/length records (header 0x03A617EB, application 0xF40A0AF4, LZ4 program data
  0xFD0303FD, ECDSA signature 0xF70A0AF7 of 64 bytes, end 0xFC0404FC with a CRC-32), nothing after it.
- `z2m_index.json`: a Zigbee2MQTT index with every entry shape of the real one (URL-only, `path`, `modelId`,
  `minFileVersion`, `maxFileVersion`, `manufacturerName`), all remote, except one entry whose URL basename names
  `gen-ebl.ota` next to the index with its real sha512.

Same bytes on every run (content comes from SHA-256 counters, no randomness, no clock).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from gateway.formats import build_zigbee_image


def filler(label: str, n: int) -> bytes:
    """`n` deterministic pseudo-random bytes (SHA-256 in counter mode over `label`)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def ebl_file(program_bytes: int = 24 * 2048) -> bytes:
    """A Silicon Labs EBL container: big-endian records, CRC-32 end tag, 0xFF padding to 64 bytes."""

    def rec(tag: int, data: bytes) -> bytes:
        return struct.pack(">HH", tag, len(data)) + data

    body = rec(0x0000, filler("ebl-header", 140))
    data = filler("ebl-program", program_bytes)
    addr = 0x08000000
    for off in range(0, len(data), 2048):
        chunk = data[off : off + 2048]
        body += rec(0xFD03, struct.pack(">I", addr + off) + chunk)
    body += struct.pack(">HH", 0xFC04, 4)
    body += struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    return body + b"\xff" * (-len(body) % 64)


def gbl_signed_file(program_bytes: int = 40_000) -> bytes:
    """A signed GBL container: little-endian records, 64-byte ECDSA signature record, CRC-32 end record."""

    def rec(tag: int, data: bytes) -> bytes:
        return struct.pack("<II", tag, len(data)) + data

    body = rec(0x03A617EB, struct.pack("<II", 0x03000000, 0x00000100))
    body += rec(0xF40A0AF4, struct.pack("<IIII", 0x00000001, 0x10021655, 0, 0) + b"\x00" * 12)
    body += rec(0xFD0303FD, filler("gbl-lz4", program_bytes))
    body += rec(0xF70A0AF7, filler("gbl-signature", 64))
    body += struct.pack("<II", 0xFC0404FC, 4)
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


BINARY_HEADER = bytes.fromhex("5a757d364000603e400013704000010000009f364000b015400020904000ffff")


@dataclass(frozen=True)
class GeneratedImage:
    name: str
    real_name: str  # the vendor file it stands in for
    manufacturer: int
    image_type: int
    file_version: int
    header: bytes
    header_text: str | None  # what the parser should show as text (None: binary, no text)
    payload: bytes

    def build(self) -> bytes:
        return build_zigbee_image(
            self.payload,
            manufacturer_code=self.manufacturer,
            image_type=self.image_type,
            file_version=self.file_version,
            header_string=self.header,
        )


IMAGES = [
    GeneratedImage(
        "gen-binary-header.zigbee",
        "1135-0000-201000A0-FLS-PP3_RGBW.zigbee",
        0x1135,
        0x0000,
        0x201000A0,
        BINARY_HEADER,
        None,
        bytes.fromhex("edfefeca01000000") + filler("fls-pp3", 30_000),
    ),
    GeneratedImage(
        "gen-ebl.ota",
        "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota",
        0x1160,
        0x0003,
        0x00000009,
        b"EBL ElementClassic_E11GX3".ljust(32, b"\x00"),
        "EBL ElementClassic_E11GX3",
        ebl_file(),
    ),
    GeneratedImage(
        "gen-gbl-signed.ota",
        "ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota",
        0x117C,
        0x2802,
        268572245,
        b"GBL Signed OTA".ljust(32, b"\x00"),
        "GBL Signed OTA",
        gbl_signed_file(),
    ),
]
BY_NAME = {g.name: g for g in IMAGES}
INDEX_NAME = "z2m_index.json"
INDEX_REMOTE_ENTRIES = 24  # URL-only entries in the generated index (the real one has 353)


def z2m_index(local: GeneratedImage, local_data: bytes) -> list[dict[str, object]]:
    """Remote entries of every shape the real index has, plus one naming `local` by URL basename."""
    entries: list[dict[str, object]] = []
    for i in range(INDEX_REMOTE_ENTRIES):
        e: dict[str, object] = {
            "fileVersion": 0x100 + i,
            "fileSize": 100_000 + i,
            "manufacturerCode": 4107 + i % 5,
            "imageType": i,
            "sha512": hashlib.sha512(f"remote-{i}".encode()).hexdigest(),
            "url": f"https://example.invalid/images/v{i}/remote-{i}.ota",
        }
        shape = i % 6
        if shape == 1:
            e["path"] = f"images/Vendor/remote-{i}.ota"
        elif shape == 2:
            e["modelId"] = f"lumi.model.{i}"
            e["path"] = f"images/Lumi/remote-{i}.ota"
        elif shape == 3:
            e["minFileVersion"] = 0x10
        elif shape == 4:
            e["maxFileVersion"] = 0xFF
        elif shape == 5:
            e["manufacturerName"] = ["Vendor"]
            e["path"] = f"images/Vendor/remote-{i}.ota"
        entries.append(e)
    entries.insert(
        4,
        {
            "fileVersion": local.file_version,
            "fileSize": len(local_data),
            "manufacturerCode": local.manufacturer,
            "imageType": local.image_type,
            "sha512": hashlib.sha512(local_data).hexdigest(),
            "url": f"https://example.invalid/images/Sengled/{local.name}",
            "path": f"images/Sengled/{local.name}",
        },
    )
    return entries


def write_fixtures(directory: Path) -> Path:
    """Write the three images and the index into `directory` (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for g in IMAGES:
        (directory / g.name).write_bytes(g.build())
    ebl = BY_NAME["gen-ebl.ota"]
    index = z2m_index(ebl, (directory / ebl.name).read_bytes())
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=1))
    return directory

"""`otagw image inspect|create-matter|create-zigbee`: look inside OTA files and make new ones from a payload.

Thin click layer over `gateway.formats`: reads files, calls the pure codecs, writes the output atomically,
and turns every `OtaFormatError` into a one-line `UserError` (exit code 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from gateway.cli import UserError, image
from gateway.formats import (
    DIGEST_TYPES,
    MatterOtaImage,
    OtaFormatError,
    ZigbeeOtaImage,
    build_matter_image,
    build_zigbee_image,
    detect_protocol,
    digest_name_to_type,
    parse_matter_image,
    parse_zigbee_image,
    verify_matter_digest,
)
from gateway.formats.payload_check import check_payload
from gateway.formats.zigbee_ota import IMAGE_TYPE_SPECIAL

__all__ = ["AnyInt", "describe_image", "write_atomic"]


class AnyInt(click.ParamType):
    """An integer in decimal or with a 0x / 0o / 0b prefix, optionally bounded."""

    name = "integer"

    def __init__(self, low: int = 0, high: int | None = None) -> None:
        self.low = low
        self.high = high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip().replace("_", "")
            try:
                number = int(text, 0)
            except ValueError:
                try:
                    number = int(text, 10)  # "010": base-0 parsing refuses leading zeros
                except ValueError:
                    self.fail(f"{value!r} is not an integer (decimal or 0x hex)", param, ctx)
        if number < self.low or (self.high is not None and number > self.high):
            high = "" if self.high is None else f"0x{self.high:X}"
            self.fail(f"{value!r} is out of range {self.low}..{high}", param, ctx)
        return number


U8, U16, U32 = AnyInt(0, 0xFF), AnyInt(0, 0xFFFF), AnyInt(0, 0xFFFF_FFFF)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename, so readers never
    see a half-written file and a failure leaves any previous file intact."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file 0600; an image is not secret, so give it the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def _matter_report(data: bytes, parsed: MatterOtaImage) -> tuple[dict[str, Any], OtaFormatError | None]:
    header = parsed.header
    digest_error: OtaFormatError | None = None
    try:
        verify_matter_digest(data, parsed)
    except OtaFormatError as exc:
        digest_error = exc
    report: dict[str, Any] = {
        "protocol": "matter",
        "vendor_id": header.vendor_id,
        "product_id": header.product_id,
        "software_version": header.software_version,
        "software_version_string": header.software_version_string,
        "payload_size": header.payload_size,
        "min_applicable_version": header.min_applicable_version,
        "max_applicable_version": header.max_applicable_version,
        "release_notes_url": header.release_notes_url,
        "digest_type": header.digest_type,
        "digest_name": header.digest_name,
        "digest": header.digest.hex(),
        "digest_ok": digest_error is None,
        "header_size": parsed.header_size,
        "payload_offset": parsed.payload_offset,
        "total_size": parsed.total_size,
    }
    return report, digest_error


def _zigbee_report(parsed: ZigbeeOtaImage) -> dict[str, Any]:
    header = parsed.header
    return {
        "protocol": "zigbee",
        "header_version": header.header_version,
        "header_length": header.header_length,
        "field_control": header.field_control,
        "manufacturer_code": header.manufacturer_code,
        "image_type": header.image_type,
        "image_type_name": IMAGE_TYPE_SPECIAL.get(header.image_type),
        "file_version": header.file_version,
        "stack_version": header.stack_version,
        "header_string": header.header_text,
        "header_string_hex": header.header_string.hex(),
        "total_image_size": header.total_image_size,
        "security_credential_version": header.security_credential_version,
        "upgrade_file_destination": header.upgrade_file_destination,
        "min_hardware_version": header.min_hardware_version,
        "max_hardware_version": header.max_hardware_version,
        "subelements": [
            {"tag": s.tag, "name": s.name, "offset": s.offset, "length": s.length} for s in parsed.subelements
        ],
    }


def describe_image(data: bytes) -> tuple[dict[str, Any], OtaFormatError | None]:
    """A JSON-ready description of an OTA file plus the digest error, if any (Matter only).

    Structural defects raise `OtaFormatError`; a digest mismatch is reported, not raised, so the header
    can still be shown.
    """
    protocol = detect_protocol(data)
    digest_error: OtaFormatError | None = None
    parsed: MatterOtaImage | ZigbeeOtaImage
    if protocol == "matter":
        parsed = parse_matter_image(data, verify_digest=False)
        report, digest_error = _matter_report(data, parsed)
    else:
        parsed = parse_zigbee_image(data)
        report = _zigbee_report(parsed)
    if digest_error is None:
        verdict = check_payload(data, parsed)
        report["payload_check"] = verdict.status
        report["payload_check_reason"] = verdict.reason + (
            f" (sub-element data at byte {verdict.offset})" if verdict.offset is not None else ""
        )
    else:
        report["payload_check"] = "invalid"
        report["payload_check_reason"] = f"payload digest does not match the header: {digest_error}"
    report["size"] = len(data)
    report["sha256"] = hashlib.sha256(data).hexdigest()
    return report, digest_error


_HEX_FIELDS = {
    "vendor_id": 4,
    "product_id": 4,
    "manufacturer_code": 4,
    "image_type": 4,
    "file_version": 8,
    "header_version": 4,
    "field_control": 4,
    "stack_version": 4,
    "min_hardware_version": 4,
    "max_hardware_version": 4,
}


def _text_lines(path: Path, report: dict[str, Any], digest_error: OtaFormatError | None) -> list[str]:
    lines = [f"file: {path}"]
    for key, value in report.items():
        if key == "subelements":
            lines.append(f"subelements: {len(value)}")
            for sub in value:
                lines.append(
                    f"  tag 0x{sub['tag']:04x} ({sub['name']}): {sub['length']} bytes at offset {sub['offset']}"
                )
        elif key == "digest_ok":
            lines.append("digest_check: ok" if value else f"digest_check: FAILED ({digest_error})")
        elif value is None:
            lines.append(f"{key}: -")
        elif key in _HEX_FIELDS and isinstance(value, int):
            lines.append(f"{key}: {value} (0x{value:0{_HEX_FIELDS[key]}x})")
        else:
            lines.append(f"{key}: {value}")
    return lines


@image.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect_cmd(file: Path, as_json: bool) -> None:
    """Show the protocol, every header field, size, SHA-256 and digest check / sub-elements of FILE."""
    data = _read(file)
    try:
        report, digest_error = describe_image(data)
    except OtaFormatError as exc:
        raise UserError(f"{file}: {exc}") from None
    if as_json:
        click.echo(json.dumps({"file": str(file), **report}, indent=2))
    else:
        click.echo("\n".join(_text_lines(file, report, digest_error)))
    if digest_error is not None:
        raise UserError(f"{file}: {digest_error}")
    if report["payload_check"] == "invalid":
        raise UserError(f"{file}: invalid payload: {report['payload_check_reason']}")


def _digest_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return digest_name_to_type(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@image.command("create-matter")
@click.option("--vendor-id", type=U16, required=True, help="VendorID (0x hex accepted).")
@click.option("--product-id", type=U16, required=True, help="ProductID.")
@click.option("--version", "software_version", type=U32, required=True, help="SoftwareVersion (numeric).")
@click.option("--version-string", required=True, help="SoftwareVersionString, 1..64 bytes.")
@click.option("--min-applicable", type=U32, default=None, help="MinApplicableSoftwareVersion.")
@click.option("--max-applicable", type=U32, default=None, help="MaxApplicableSoftwareVersion.")
@click.option("--release-notes-url", default=None, help="ReleaseNotesURL (https), 1..256 bytes.")
@click.option(
    "--digest",
    default="sha256",
    show_default=True,
    callback=_digest_option,
    help=f"Payload digest algorithm: {', '.join(DIGEST_TYPES.values())}.",
)
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def create_matter_cmd(
    vendor_id: int,
    product_id: int,
    software_version: int,
    version_string: str,
    min_applicable: int | None,
    max_applicable: int | None,
    release_notes_url: str | None,
    digest: int,
    payload: Path,
    out: Path,
) -> None:
    """Wrap PAYLOAD in a Matter OTA header and write the image to OUT."""
    try:
        data = build_matter_image(
            _read(payload),
            vendor_id=vendor_id,
            product_id=product_id,
            software_version=software_version,
            software_version_string=version_string,
            min_applicable_version=min_applicable,
            max_applicable_version=max_applicable,
            release_notes_url=release_notes_url,
            digest_type=digest,
        )
    except OtaFormatError as exc:
        raise UserError(exc.defect) from None
    _write(out, data)


@image.command("create-zigbee")
@click.option("--manufacturer", type=U16, required=True, help="Manufacturer code (0x hex accepted).")
@click.option("--image-type", type=U16, required=True, help="Image type.")
@click.option("--version", "file_version", type=U32, required=True, help="File version (32-bit).")
@click.option("--stack-version", type=U16, default=2, show_default=True, help="Zigbee stack version.")
@click.option("--header-string", default="", help="Header string, at most 32 bytes.")
@click.option("--min-hw", type=U16, default=None, help="Minimum hardware version (with --max-hw).")
@click.option("--max-hw", type=U16, default=None, help="Maximum hardware version (with --min-hw).")
@click.option("--destination", default=None, help="IEEE address of the one device this file is for.")
@click.option("--security-credential", type=U8, default=None, help="Security credential version.")
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def create_zigbee_cmd(
    manufacturer: int,
    image_type: int,
    file_version: int,
    stack_version: int,
    header_string: str,
    min_hw: int | None,
    max_hw: int | None,
    destination: str | None,
    security_credential: int | None,
    payload: Path,
    out: Path,
) -> None:
    """Wrap PAYLOAD as the upgrade-image sub-element of a Zigbee OTA file and write it to OUT."""
    try:
        data = build_zigbee_image(
            _read(payload),
            manufacturer_code=manufacturer,
            image_type=image_type,
            file_version=file_version,
            stack_version=stack_version,
            header_string=header_string,
            security_credential_version=security_credential,
            destination=destination,
            min_hw=min_hw,
            max_hw=max_hw,
        )
    except OtaFormatError as exc:
        raise UserError(exc.defect) from None
    _write(out, data)


def _write(out: Path, data: bytes) -> None:
    try:
        write_atomic(out, data)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")

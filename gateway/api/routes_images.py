"""Image routes: upload (streamed into the store, validated, deduplicated), list, show, delete, download.

Uploads never touch a user-supplied path: the body streams into `ImageStore.add_stream`, which hashes, validates
and size-limits it and writes nothing visible unless the whole image is valid. Deleting an image that a transfer,
rollout or pending update still uses is refused with 409.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.auth import principal
from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, Model, Resp, RouteTable, err, parse_body, parse_query, reply
from gateway.config import PolicySelector
from gateway.core.interface import ImageReader, UnknownToken, Wait
from gateway.store.errors import (
    AmbiguousRefError,
    CorruptBlobError,
    ImageNotFoundError,
    ImageRejectedError,
    ImageTooLargeError,
    InvalidFileNameError,
    StoreError,
)
from gateway.store.model import CatalogEntry

CHUNK = 64 * 1024


class PackageManifest(BaseModel):
    """The neutral package manifest of the OTA Device Version Query (reference 003)."""

    package_id: str
    bucket: str
    file_name: str
    manifest_version: str
    name: str
    version: str
    description: str | None
    size: int
    license: str | None
    license_url: str | None
    copyright: str | None
    owner: str | None
    packager: str
    release_date: str | None
    content_type: str
    sha256: str = Field(description="SHA-256 of the file, 64 hex digits")


class ImageOut(PackageManifest):
    """A catalog entry: the manifest plus the protocol fields used for selection."""

    image_id: str
    protocol: Literal["matter", "zigbee"]
    vendor_id: int
    product_id: int
    numeric_version: int
    version_string: str
    min_applicable: int | None
    max_applicable: int | None
    min_hw: int | None
    max_hw: int | None
    destination: str | None
    digest_type: int | None
    digest: str | None
    release_notes_url: str | None
    source: str
    valid: bool
    model_ids: list[str]
    added_at: float
    approval: Literal["available", "approved"] = Field(
        description="approved images are offered without a rollout (to approved_for, or every device)"
    )
    approved_for: str | None = Field(None, description="JSON device filter the approval is limited to")
    approved_by: str | None = None
    approved_at: float | None = None
    payload_check: Literal["valid", "invalid", "unknown", "unchecked"] = Field(
        "unchecked",
        description="pre-flight check of the firmware inside the file (Zigbee: zigpy's EBL/GBL validators): "
        "invalid is never offered, unknown only where policy.allow_unvalidated_payload allows",
    )
    payload_reason: str | None = Field(None, description="what the payload check found")
    in_use: bool | None = Field(None, description="a transfer, rollout or pending update uses it (show only)")


class UploadResult(BaseModel):
    created: bool = Field(description="false when the same content was already stored (deduplicated)")
    image: ImageOut


class ImageListQuery(Model):
    protocol: Literal["matter", "zigbee"] | None = None


class DownloadQuery(Model):
    transfer: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{16,128}$",
        description="the transfer token from /api/v1/query (hex): the download then counts as that device's "
        "transfer (progress, budget, completion), as over Matter or Zigbee",
    )


class UploadQuery(Model):
    file_name: str = Field(
        min_length=1, max_length=255, description="the file's name (a plain name, no path)"
    )


def manifest(entry: CatalogEntry) -> PackageManifest:
    return PackageManifest.model_validate(dataclasses.asdict(entry))


def image_out(entry: CatalogEntry, in_use: bool | None = None) -> ImageOut:
    data = dataclasses.asdict(entry)
    data["model_ids"] = list(entry.model_ids)
    data["in_use"] = in_use
    return ImageOut.model_validate(data)


def store_error(exc: StoreError, field: str = "ref") -> ApiError:
    """The HTTP answer for a store error."""
    if isinstance(exc, ImageNotFoundError):
        return ApiError(404, "not_found", str(exc), field=field)
    if isinstance(exc, AmbiguousRefError):
        return ApiError(409, "ambiguous_ref", str(exc), field=field)
    if isinstance(exc, ImageTooLargeError):
        return ApiError(413, "too_large", str(exc), field="body", max_size=exc.max_size)
    if isinstance(exc, InvalidFileNameError):
        return ApiError(422, "invalid_file_name", str(exc), field="file_name")
    if isinstance(exc, ImageRejectedError):
        return ApiError(422, "invalid_image", str(exc), field="body", defect=exc.defect, offset=exc.offset)
    if isinstance(exc, CorruptBlobError):
        return ApiError(500, "corrupt_blob", str(exc))
    return ApiError(400, "store_error", str(exc), field=field)


async def lookup(request: web.Request) -> CatalogEntry:
    ref = request.match_info["ref"]
    try:
        entry: CatalogEntry = await services(request).store.get(ref)
    except StoreError as exc:
        raise store_error(exc) from None
    return entry


# ------------------------------------------------------------------------------------------------ handlers
async def list_images(request: web.Request) -> web.Response:
    """Every catalog entry, optionally of one protocol."""
    q = parse_query(request, ImageListQuery)
    entries = await services(request).store.list(protocol=q.protocol)
    return reply([image_out(e) for e in entries])


async def upload_image(request: web.Request) -> web.Response:
    """Upload an OTA file as the raw request body (Matter or Zigbee; the format is detected).

    Streamed into the store with the configured size limit (`images.max_upload_mib`); identical content is
    stored once (200 with `created: false`); a new image answers 201."""
    svc = services(request)
    q = parse_query(request, UploadQuery)
    max_size = svc.config.images.max_upload_mib * 1024 * 1024
    if request.content_length is not None and request.content_length > max_size:
        raise ApiError(
            413,
            "too_large",
            f"image larger than the maximum of {max_size} bytes",
            field="body",
            max_size=max_size,
        )

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    try:
        result = await svc.store.add_stream(chunks(), file_name=q.file_name, source="api", max_size=max_size)
    except StoreError as exc:
        raise store_error(exc, field="body") from None
    if result.created:
        await svc.core.catalog_changed()
    body = UploadResult(created=result.created, image=image_out(result.entry))
    resp = reply(body, status=201 if result.created else 200)
    resp.headers["Location"] = f"{API_PREFIX}/images/{result.entry.image_id}"
    return resp


async def show_image(request: web.Request) -> web.Response:
    """One image by id (16 hex digits) or a unique SHA-256 prefix."""
    entry = await lookup(request)
    in_use = bool(services(request).core.image_in_use(entry.image_id))
    return reply(image_out(entry, in_use=in_use))


async def delete_image(request: web.Request) -> web.Response:
    """Remove an image from the catalog; 409 while a transfer, rollout or pending update uses it."""
    svc = services(request)
    entry = await lookup(request)
    users = svc.core.image_users(entry.image_id)
    if users:
        raise ApiError(
            409, "image_in_use", f"image {entry.image_id} is in use by {', '.join(users)}", field="ref"
        )
    try:
        await svc.store.remove(entry.image_id)
    except StoreError as exc:
        raise store_error(exc) from None
    await svc.core.catalog_changed()
    return web.Response(status=204)


class ApproveBody(Model):
    selector: PolicySelector | None = Field(
        None, description="only devices this filter matches (null: every device the image applies to)"
    )


async def approve_image(request: web.Request) -> web.Response:
    """Approve an image: devices it applies to (all, or those the selector matches) are offered it."""
    svc = services(request)
    body = await parse_body(request, ApproveBody)
    entry = await lookup(request)
    try:
        entry = await svc.store.approve(entry.image_id, selector=body.selector, by="api")
    except StoreError as exc:
        raise store_error(exc) from None
    await svc.core.catalog_changed()
    return reply(image_out(entry))


async def revoke_image(request: web.Request) -> web.Response:
    """Withdraw an image's approval: it is offered only through rollouts again."""
    svc = services(request)
    entry = await lookup(request)
    try:
        entry = await svc.store.revoke(entry.image_id, by="api")
    except StoreError as exc:
        raise store_error(exc) from None
    await svc.core.catalog_changed()
    return reply(image_out(entry))


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "image.ota"


def _parse_range(header: str | None, size: int) -> tuple[int, int, bool]:
    """(start, end inclusive, partial) for a single `bytes=` range."""
    if not header:
        return 0, size - 1, False
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise ApiError(416, "bad_range", "expected Range: bytes=START-END", field="Range")
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start > end or start >= size:
        raise ApiError(
            416,
            "bad_range",
            f"range outside the image of {size} bytes",
            field="Range",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end, True


async def download_image(request: web.Request) -> web.StreamResponse:
    """The image file, with its SHA-256 as ETag; a single `Range: bytes=a-b` is honoured (206).

    With `?transfer=<token>` (an IP device that got the token from /api/v1/query) every chunk is reported to the
    core as transfer progress, so budgets, pausing, the dashboard and metrics see it like a Zigbee or Matter
    transfer; a paused or over-budget transfer gets 503 with Retry-After before any byte is sent."""
    svc = services(request)
    q = parse_query(request, DownloadQuery)
    entry = await lookup(request)
    start, end, partial = _parse_range(request.headers.get("Range"), entry.size)
    token = bytes.fromhex(q.transfer) if q.transfer else None
    who = principal(request)
    if who.device is not None and token is None:
        raise ApiError(
            403,
            "forbidden",
            f"credential {who.name!r} is bound to a device: download with the transfer token of its offer",
            field="transfer",
        )
    reader: ImageReader
    if token is not None:
        try:
            reader = svc.core.open_image(token)
        except UnknownToken as exc:
            raise ApiError(409, "unknown_transfer", str(exc), field="transfer") from None
        info = next(
            (d for d in svc.core.list_devices({"image_id": entry.image_id}) if d.token == token), None
        )
        if info is None:
            raise ApiError(
                409, "unknown_transfer", f"the transfer is not for image {entry.image_id}", field="transfer"
            )
        who.check_device(info.device_id, field="transfer")
        decision = await svc.core.progress(token, start, 0)
        if isinstance(decision, Wait):
            retry = max(1, math.ceil(decision.retry_after_s))
            raise ApiError(
                503,
                "wait",
                decision.reason or "transfer held back",
                field="transfer",
                headers={"Retry-After": str(retry)},
            )
    else:
        try:
            reader = await asyncio.to_thread(svc.store.open_reader, entry)
        except StoreError as exc:
            raise store_error(exc) from None
    resp = web.StreamResponse(status=206 if partial else 200)
    resp.content_type = entry.content_type or "application/octet-stream"
    resp.content_length = end - start + 1
    resp.headers["ETag"] = f'"{entry.sha256}"'
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["Content-Disposition"] = f'attachment; filename="{_safe_name(entry.file_name)}"'
    if partial:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    try:
        await resp.prepare(request)
        offset = start
        while offset <= end:
            data = await asyncio.to_thread(reader.read, offset, min(CHUNK, end - offset + 1))
            if not data:
                break
            if token is not None and isinstance(await svc.core.progress(token, offset, len(data)), Wait):
                break  # paused mid-way: the client resumes with a Range request later
            await resp.write(data)
            offset += len(data)
        if token is not None and offset == entry.size:
            await svc.core.download_complete(token)
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()
    await resp.write_eof()
    return resp


def declare(t: RouteTable) -> None:
    p = f"{API_PREFIX}/images"
    t.op(
        "GET",
        p,
        summary="List images",
        tag="images",
        query=ImageListQuery,
        responses={200: Resp("catalog entries", ImageOut, many=True)},
    )(list_images)
    t.op(
        "POST",
        p,
        summary="Upload an image",
        tag="images",
        query=UploadQuery,
        raw_body="application/octet-stream",
        responses={
            200: Resp("already stored (deduplicated)", UploadResult),
            201: Resp("stored", UploadResult),
            413: err("too large"),
        },
    )(upload_image)
    t.op(
        "GET",
        p + "/{ref}",
        summary="Show an image",
        tag="images",
        responses={200: Resp("the entry", ImageOut), 404: err("no such image")},
    )(show_image)
    t.op(
        "DELETE",
        p + "/{ref}",
        summary="Delete an image",
        tag="images",
        responses={204: Resp("deleted"), 404: err("no such image"), 409: err("in use")},
    )(delete_image)
    t.op(
        "POST",
        p + "/{ref}/approve",
        summary="Approve an image",
        tag="images",
        body=ApproveBody,
        responses={200: Resp("the entry", ImageOut), 404: err("no such image")},
    )(approve_image)
    t.op(
        "POST",
        p + "/{ref}/revoke",
        summary="Revoke an image's approval",
        tag="images",
        responses={200: Resp("the entry", ImageOut), 404: err("no such image")},
    )(revoke_image)
    t.op(
        "GET",
        p + "/{ref}/download",
        summary="Download an image",
        tag="images",
        query=DownloadQuery,
        responses={
            200: Resp("the file", content_type="application/octet-stream"),
            206: Resp("part of the file", content_type="application/octet-stream"),
            409: err("transfer token not live or not for this image"),
            416: err("bad range"),
            503: err("transfer held back (Retry-After)"),
        },
        scope="download",
    )(download_image)

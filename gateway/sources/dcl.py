"""Matter: the CSA Distributed Compliance Ledger REST API (what python-matter-server and matter.js use).

    GET {base}/dcl/model/versions/{vid}/{pid}
        {"modelVersions": {"vid": 4447, "pid": 8194, "softwareVersions": [1, 2, 3]}}      (404: model not listed)
    GET {base}/dcl/model/versions/{vid}/{pid}/{softwareVersion}
        {"modelVersion": {"vid", "pid", "softwareVersion", "softwareVersionString", "softwareVersionValid",
                          "otaUrl", "otaFileSize", "otaChecksum" (base64), "otaChecksumType" (IANA hash id),
                          "minApplicableSoftwareVersion", "maxApplicableSoftwareVersion", "releaseNotesUrl"}}

Base URLs: main net https://on.dcl.csa-iot.org, test net https://on.test-net.dcl.csa-iot.org. Which models are
looked up: the VID/PID of every Matter device of the fleet plus the source's `models` list. A version's record is
immutable on the ledger, so details already known are not fetched again; the versions list is fetched with
If-None-Match / If-Modified-Since. Versions without an otaUrl are skipped (nothing to download).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from gateway.config import SourceConfig
from gateway.sources.http import HttpFetcher, NotModified
from gateway.sources.model import SourceEntry, SourceError

__all__ = ["CHECKSUM_TYPES", "DCL_MAIN_NET", "DCL_TEST_NET", "load_dcl_index", "parse_models"]

DCL_MAIN_NET = "https://on.dcl.csa-iot.org"
DCL_TEST_NET = "https://on.test-net.dcl.csa-iot.org"

# IANA "Named Information Hash Algorithm Registry" ids used by otaChecksumType (Matter spec 11.22.4.1)
CHECKSUM_TYPES = {
    1: "sha256",
    7: "sha384",
    8: "sha512",
    10: "sha3_224",
    11: "sha3_256",
    12: "sha3_384",
    13: "sha3_512",
}


def parse_models(items: Iterable[str], where: str) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for i, text in enumerate(items):
        vid, sep, pid = text.partition(":")
        try:
            if not sep:
                raise ValueError
            out.add((int(vid, 16), int(pid, 16)))
        except ValueError:
            raise SourceError(
                f"{where}.models[{i}]: expected VID:PID in hex like 131B:0002, got {text!r}"
            ) from None
    return out


def _int(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> int | None:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise SourceError(f"{where}: {key}: missing")
        return None
    if (
        isinstance(value, str) and value.isdigit()
    ):  # cosmos JSON writes 64-bit integers (otaFileSize) as strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SourceError(f"{where}: {key}: expected a non-negative integer, got {value!r}")
    return value


def _entry(name: str, url: str, record: Any) -> SourceEntry | None:
    if not isinstance(record, dict) or not isinstance(record.get("modelVersion"), dict):
        raise SourceError(f"{url}: expected an object with 'modelVersion'")
    mv = record["modelVersion"]
    vid = _int(mv, "vid", url, required=True)
    pid = _int(mv, "pid", url, required=True)
    sv = _int(mv, "softwareVersion", url, required=True)
    assert vid is not None and pid is not None and sv is not None
    ota_url = mv.get("otaUrl") or ""
    if not ota_url:
        return None
    checksum_type = checksum = None
    if mv.get("otaChecksum"):
        ctype = _int(mv, "otaChecksumType", url, required=True)
        if ctype not in CHECKSUM_TYPES:
            raise SourceError(f"{url}: otaChecksumType: unknown hash id {ctype}")
        try:
            checksum = base64.b64decode(str(mv["otaChecksum"]), validate=True).hex()
        except (binascii.Error, ValueError):
            raise SourceError(f"{url}: otaChecksum: not base64") from None
        checksum_type = CHECKSUM_TYPES[ctype]
    return SourceEntry(
        source=name,
        key=f"{vid:04x}:{pid:04x}:{sv}",
        protocol="matter",
        vendor_id=vid,
        product_id=pid,
        version=sv,
        url=ota_url,
        version_string=mv.get("softwareVersionString") or None,
        size=_int(mv, "otaFileSize", url),
        checksum_type=checksum_type,
        checksum=checksum,
        min_applicable=_int(mv, "minApplicableSoftwareVersion", url),
        max_applicable=_int(mv, "maxApplicableSoftwareVersion", url),
        release_notes_url=mv.get("releaseNotesUrl") or None,
        valid=bool(mv.get("softwareVersionValid", True)),
    )


async def load_dcl_index(
    cfg: SourceConfig,
    fetcher: HttpFetcher,
    models: set[tuple[int, int]],
    previous: list[SourceEntry],
) -> list[SourceEntry]:
    """Every OTA-capable software version of `models` on the ledger (previous details are reused)."""
    base = (cfg.url or DCL_MAIN_NET).rstrip("/")
    known = {e.key: e for e in previous}
    out: list[SourceEntry] = []
    for vid, pid in sorted(models):
        list_url = f"{base}/dcl/model/versions/{vid}/{pid}"
        try:
            body = await fetcher.get(list_url, max_bytes=cfg.max_index_bytes, conditional=True)
        except NotModified:
            out.extend(e for e in previous if (e.vendor_id, e.product_id) == (vid, pid))
            continue
        except SourceError as exc:
            if "HTTP 404" in str(exc):  # the model is not on the ledger: nothing to offer, not a failure
                continue
            raise
        data = await body.json()
        versions = (
            (data.get("modelVersions") or {}).get("softwareVersions") if isinstance(data, dict) else None
        )
        if not isinstance(versions, list) or not all(isinstance(v, int) for v in versions):
            raise SourceError(f"{list_url}: expected modelVersions.softwareVersions as a list of integers")
        for sv in versions:
            key = f"{vid:04x}:{pid:04x}:{sv}"
            if key in known:
                out.append(known[key])
                continue
            detail_url = f"{list_url}/{sv}"
            record = await (await fetcher.get(detail_url, max_bytes=cfg.max_index_bytes)).json()
            entry = _entry(cfg.name, detail_url, record)
            if entry is not None:
                out.append(entry)
    return out

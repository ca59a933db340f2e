"""Zigbee source types, all through zigpy's own provider classes (`zigpy.ota.providers`), never re-implemented.

| type          | zigpy class          | index                                                        |
|---------------|----------------------|--------------------------------------------------------------|
| z2m           | RemoteZ2MProvider    | Koenkk/zigbee-OTA index.json (sha512, modelId, min/maxFileVersion) |
| zigpy         | RemoteZigpyProvider  | a zigpy provider JSON (`firmwares`, checksum "sha256:...")   |
| zigpy_ota     | ZigpyOtaProvider     | zigpy-ota version file -> channel index                      |
| ikea          | Tradfri              | IKEA DIRIGERA / TRÅDFRI version_info.json (sha3-256, signed containers) |
| ledvance      | Ledvance             | Ledvance firmware API                                        |
| sonoff        | Sonoff               | upgrade.json (zigpy hard-codes its URL: use `mirror` to redirect) |
| salus, thirdreality, inovelli | zigpy's stubs | no index (kept for configurations that name them)    |

The provider's `_load_index(session)` runs with a `ZigpySession`, so its requests go through otagw's fetcher
(limits, ETag/If-Modified-Since, mirrors) and zigpy validates the JSON against its schemas. Each zigpy
`BaseOtaImageMetadata` becomes a `SourceEntry`.
"""

from __future__ import annotations

from typing import Any

import zigpy.ota.providers as zp

from gateway.config import SourceConfig
from gateway.sources.http import HttpFetcher, NotModified, ZigpySession
from gateway.sources.model import SourceEntry, SourceError

__all__ = ["PROVIDERS", "load_zigbee_index", "make_provider", "zigpy_ssl_context"]

PROVIDERS: dict[str, type[zp.BaseOtaProvider]] = {
    "z2m": zp.RemoteZ2MProvider,
    "zigpy": zp.RemoteZigpyProvider,
    "zigpy_ota": zp.ZigpyOtaProvider,
    "ikea": zp.Tradfri,
    "ledvance": zp.Ledvance,
    "sonoff": zp.Sonoff,
    "salus": zp.Salus,
    "thirdreality": zp.ThirdReality,
    "inovelli": zp.Inovelli,
}


def make_provider(cfg: SourceConfig) -> zp.BaseOtaProvider:
    cls = PROVIDERS[cfg.type]
    if cls is zp.RemoteZigpyProvider and not cfg.url:
        raise SourceError(f"source {cfg.name}: type zigpy needs a url (the provider JSON)")
    if cls is zp.ZigpyOtaProvider:
        return zp.ZigpyOtaProvider(url=cfg.url, channel=cfg.channel)
    return cls(url=cfg.url)


def zigpy_ssl_context(cfg: SourceConfig) -> Any:
    """The TLS trust zigpy uses for this vendor (IKEA and Hue run their own CAs), or None for the default."""
    cls = PROVIDERS.get(cfg.type)
    return getattr(cls, "SSL_CTX", None)


def _checksum(text: str | None) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    algo, _, digest = text.partition(":")
    return algo.lower().replace("-", "_"), digest.lower()


def _entry(source: str, meta: Any, seen: dict[str, int]) -> SourceEntry | None:
    url = getattr(meta, "url", None)
    if url is None or meta.manufacturer_id is None or meta.image_type is None:
        return None
    key = f"{meta.manufacturer_id:04x}:{meta.image_type:04x}:{meta.file_version:08x}"
    if meta.model_names:
        key += ":" + ",".join(meta.model_names)
    n = seen.get(key, 0)
    seen[key] = n + 1
    if n:
        key += f"#{n + 1}"
    algo, digest = _checksum(meta.checksum)
    signed = isinstance(meta, zp.SignedIkeaRemoteOtaImageMetadata)
    return SourceEntry(
        source=source,
        key=key,
        protocol="zigbee",
        vendor_id=meta.manufacturer_id,
        product_id=meta.image_type,
        version=meta.file_version,
        url=url,
        version_string=f"0x{meta.file_version:08X}",
        size=meta.file_size,
        size_of="image" if signed else "file",
        container="ikea-signed" if signed else None,
        checksum_type=algo,
        checksum=digest,
        min_applicable=meta.min_current_file_version,
        max_applicable=meta.max_current_file_version,
        min_hw=meta.min_hardware_version,
        max_hw=meta.max_hardware_version,
        model_ids=tuple(meta.model_names),
        release_notes=meta.release_notes or meta.changelog,
        release_notes_url=meta.release_url,
    )


async def load_zigbee_index(cfg: SourceConfig, fetcher: HttpFetcher) -> list[SourceEntry]:
    """Run the zigpy provider's index loader through `fetcher` (raises NotModified on 304)."""
    provider = make_provider(cfg)
    session = ZigpySession(fetcher, cfg.max_index_bytes)
    seen: dict[str, int] = {}
    out: list[SourceEntry] = []
    try:
        async for meta in provider._load_index(session):  # type: ignore[arg-type]
            entry = _entry(cfg.name, meta, seen)
            if entry is not None:
                out.append(entry)
    except (SourceError, NotModified):
        raise
    except Exception as exc:  # zigpy raises jsonschema / KeyError / ValueError on a malformed index
        first_line = (str(exc).splitlines() or [""])[0]  # jsonschema appends the whole schema
        path = "/".join(str(p) for p in getattr(exc, "absolute_path", ()))
        where = f" at {path}" if path else ""
        raise SourceError(
            f"source {cfg.name}: index rejected by zigpy{where}: {type(exc).__name__}: {first_line}"
        ) from None
    return out

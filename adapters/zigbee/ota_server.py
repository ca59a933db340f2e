"""Sans-I/O decisions of the Zigbee OTA server: per-device transfer records, block sizing, learned caps, stalls.

Nothing here sends a frame, sleeps or touches the core: the sans-I/O server (protocol/server.py) keeps its
transfers here and asks it for block sizes, pacing, learned caps and stalls, with clock readings passed in. Keeping
this pure makes block sizing and stall detection testable with plain numbers.

Terms follow reference 004: an `OtaDevice` is the OTA_Device record (address, endpoint, status, bytes
downloaded, which over-counts duplicate and overlapping requests) plus the highest offset acknowledged.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ZigbeeConfig
from gateway.core.interface import DeviceKey, ImageReader
from gateway.store.model import CatalogEntry

# ZCL UTCTime counts seconds from 2000-01-01T00:00:00Z, Unix time from 1970.
ZCL_EPOCH_OFFSET = 946_684_800
# Upgrade End Response upgrade_time meaning "wait for a later Upgrade End Response from the server".
UPGRADE_TIME_WAIT = 0xFFFFFFFF
# bytes read from the store at once per transfer: small enough to keep 200 transfers cheap, large enough
# that a 50-byte-block transfer touches the store once per ~80 blocks
READ_AHEAD = 4096


# ZCL header of an Image Block Response: cluster-specific frame, server->client, default response disabled
# (what zigpy's `Cluster.reply` writes for a client cluster), then the TSN and command id 0x05.
_IBR_FRAME_CONTROL = 0x01 | 0x08 | 0x10
IMAGE_BLOCK_RESPONSE_ID = 0x05
_IBR_HEAD = struct.Struct("<BBBBHHII")  # frame control, tsn, command, status, mfr, type, version, offset


def encode_image_block_response(
    tsn: int, manufacturer_code: int, image_type: int, file_version: int, file_offset: int, data: bytes
) -> bytes:
    """The ZCL frame of an Image Block Response with status SUCCESS, byte for byte what zigpy's codec writes.

    zigpy builds and validates a ZCLHeader and a CommandSchema struct per reply, which costs more than the rest
    of serving a block; the layout is fixed (ZCL 11.13.8.1), so the server packs it directly. Checked against
    zigpy's codec in tests/zigbee/test_ota_server.py.
    """
    if len(data) > 0xFF:
        raise ValueError(f"image block of {len(data)} bytes does not fit an octet-string length")
    return (
        _IBR_HEAD.pack(
            _IBR_FRAME_CONTROL,
            tsn,
            IMAGE_BLOCK_RESPONSE_ID,
            0,
            manufacturer_code,
            image_type,
            file_version,
            file_offset,
        )
        + bytes((len(data),))
        + data
    )


def zcl_utc(unix_time: float) -> int:
    """Unix seconds -> ZCL UTCTime (uint32, seconds since 2000)."""
    return max(0, min(0xFFFFFFFE, int(unix_time) - ZCL_EPOCH_OFFSET))


class TransferStatus(enum.Enum):
    DOWNLOADING = "downloading"
    COMPLETE = "complete"  # Upgrade End SUCCESS received
    AWAITING_APPLY = "awaiting_apply"  # told "wait" (0xFFFFFFFF); a later Upgrade End Response triggers it
    APPLY_SCHEDULED = "apply_scheduled"
    APPLIED = "applied"  # the device runs the new version (reported or read back after the apply)
    FAILED = "failed"


@dataclass
class OtaDevice:
    """One OTA client endpoint's transfer, as the server sees it (reference 004 OTA_Device + our bookkeeping)."""

    key: DeviceKey
    token: bytes
    image: CatalogEntry
    reader: ImageReader
    started_mono: float
    manufacturer_code: int
    image_type: int
    file_version: int
    model: str | None = None
    status: TransferStatus = TransferStatus.DOWNLOADING
    bytes_downloaded: int = 0  # every byte sent, duplicates included (reference 004 semantics)
    highest_offset: int = 0  # highest end offset (offset + length) served
    last_activity_mono: float = 0.0
    last_block_size: int = 0
    not_before_wall: float = 0.0  # Available.delay_s: blocks before this get WAIT_FOR_DATA
    paced: bool = False  # configured MinimumBlockPeriod already pushed to the device
    device_min_block_period_ms: int = 0
    resumed: bool = False
    refused: bool = False  # policy discontinued it at Upgrade End: the device gets ABORT if it asks again
    failure: str | None = None
    _cache_offset: int = -1
    _cache: bytes = b""

    def read(self, offset: int, length: int) -> bytes:
        """Image bytes from the store, read ahead in READ_AHEAD chunks (one pread per ~100 blocks, not per block)."""
        end = offset + length
        if not (self._cache_offset <= offset and end <= self._cache_offset + len(self._cache)):
            self._cache = self.reader.read(offset, min(max(length, READ_AHEAD), self.size - offset))
            self._cache_offset = offset
        start = offset - self._cache_offset
        return self._cache[start : start + length]

    @property
    def size(self) -> int:
        return self.reader.size

    def matches(self, manufacturer_code: int, image_type: int, file_version: int) -> bool:
        """Whether a block/end request names this transfer's image (0xFFFF wildcards in the image match all)."""
        return (
            (self.manufacturer_code in (manufacturer_code, 0xFFFF))
            and (self.image_type in (image_type, 0xFFFF))
            and self.file_version == file_version
        )


@dataclass
class OtaServerState:
    """The server's memory: transfers by device key, caps learned per model, and the configuration it obeys."""

    config: ZigbeeConfig
    transfers: dict[DeviceKey, OtaDevice] = field(default_factory=dict)
    learned_caps: dict[tuple[int, str], int] = field(default_factory=dict)

    # ------------------------------------------------------------------ block sizing
    def configured_cap(self, manufacturer_code: int, model: str | None) -> int:
        """The configured cap: a model rule beats a manufacturer rule beats the default."""
        best: int | None = None
        for rule in self.config.block_size_caps:
            if rule.manufacturer != manufacturer_code:
                continue
            if rule.model is not None:
                if rule.model == model:
                    return rule.max_block_bytes
                continue
            best = rule.max_block_bytes if best is None else min(best, rule.max_block_bytes)
        return best if best is not None else self.config.default_max_block_bytes

    def block_size(self, manufacturer_code: int, model: str | None, requested: int) -> int:
        """min(requested, configured cap, learned cap for this model)."""
        cap = self.configured_cap(manufacturer_code, model)
        learned = self.learned_caps.get((manufacturer_code, model or ""))
        if learned is not None:
            cap = min(cap, learned)
        return max(0, min(requested, cap))

    def learn_failure(self, manufacturer_code: int, model: str | None, served_size: int) -> int | None:
        """A device failed while being served `served_size`-byte blocks: lower its model's cap.

        Returns the new learned cap, or None when already at the floor (nothing learned).
        """
        floor = self.config.min_learned_block_bytes
        if served_size <= floor:
            return None
        new_cap = max(floor, (served_size * 3) // 4)
        k = (manufacturer_code, model or "")
        if self.learned_caps.get(k, 256) <= new_cap:
            return None
        self.learned_caps[k] = new_cap
        return new_cap

    def caps_to_json(self) -> str:
        rows = [
            {"manufacturer": m, "model": mo, "max_block_bytes": c}
            for (m, mo), c in sorted(self.learned_caps.items())
        ]
        return json.dumps(rows, indent=1)

    def caps_from_json(self, text: str) -> None:
        """Load learned caps; rows that are not well-formed are skipped (the file is a cache, not config)."""
        try:
            rows: Any = json.loads(text)
        except ValueError:
            return
        if not isinstance(rows, list):
            return
        for row in rows:
            if not isinstance(row, dict):
                continue
            m, mo, c = row.get("manufacturer"), row.get("model"), row.get("max_block_bytes")
            if isinstance(m, int) and isinstance(mo, str) and isinstance(c, int) and 1 <= c <= 255:
                self.learned_caps[(m, mo)] = c

    # ------------------------------------------------------------------ stalls
    def stall_timeout(self, manufacturer_code: int) -> float:
        for rule in self.config.stall_timeouts:
            if rule.manufacturer == manufacturer_code:
                return rule.timeout_s
        return self.config.stall_timeout_s

    def min_stall_timeout(self) -> float:
        return min([self.config.stall_timeout_s, *(r.timeout_s for r in self.config.stall_timeouts)])

    def stalled(self, now_mono: float) -> list[OtaDevice]:
        """Downloading transfers silent for longer than their manufacturer's stall timeout."""
        return [
            tr
            for tr in self.transfers.values()
            if tr.status is TransferStatus.DOWNLOADING
            and now_mono - tr.last_activity_mono > self.stall_timeout(tr.manufacturer_code)
        ]

    # ------------------------------------------------------------------ accounting
    @staticmethod
    def record_block(tr: OtaDevice, offset: int, length: int, now_mono: float) -> None:
        tr.bytes_downloaded += length
        tr.highest_offset = max(tr.highest_offset, offset + length)
        tr.last_activity_mono = now_mono
        tr.last_block_size = length

    def pacing_period_ms(self, tr: OtaDevice) -> int:
        """The MinimumBlockPeriod to hand a device in WAIT_FOR_DATA: ours when pacing, never below its own."""
        return max(self.config.min_block_period_ms, tr.device_min_block_period_ms)

    def needs_pacing_push(self, tr: OtaDevice) -> bool:
        """Pacing is configured and this device has not yet been told a period at least that long."""
        return (
            not tr.paced
            and self.config.min_block_period_ms > 0
            and tr.device_min_block_period_ms < self.config.min_block_period_ms
        )

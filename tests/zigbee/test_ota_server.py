"""Sans-I/O decisions of the OTA server: block caps (config, model rules, learned), stalls, accounting."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zigpy.zcl import foundation
from zigpy.zcl.clusters.general import Ota

from adapters.zigbee.ota_server import (
    OtaDevice,
    OtaServerState,
    TransferStatus,
    encode_image_block_response,
    zcl_utc,
)
from gateway.config import parse_config
from gateway.core.interface import DeviceKey
from tests.store_helpers import entry


class Reader:
    size = 1000

    def read(self, offset: int, length: int) -> bytes:
        return bytes(min(length, self.size - offset))


def zigpy_image_block_response(
    tsn: int, mfr: int, itype: int, version: int, offset: int, data: bytes
) -> bytes:
    """What zigpy's Cluster.reply writes for the Image Block Response of a client Ota cluster."""
    cmd = Ota.ClientCommandDefs.image_block_response
    fc = foundation.FrameControl(
        frame_type=foundation.FrameType.CLUSTER_COMMAND,
        is_manufacturer_specific=False,
        direction=foundation.Direction.Server_to_Client,
        disable_default_response=True,
        reserved=0b000,
    )
    hdr = foundation.ZCLHeader(frame_control=fc, manufacturer=None, tsn=tsn, command_id=cmd.id)
    payload = cmd.schema(
        status=foundation.Status.SUCCESS,
        manufacturer_code=mfr,
        image_type=itype,
        file_version=version,
        file_offset=offset,
        image_data=data,
    )
    return hdr.serialize() + payload.serialize()


def state(**zigbee: Any) -> OtaServerState:
    return OtaServerState(parse_config({"zigbee": zigbee}).zigbee)


def transfer(**kw: Any) -> OtaDevice:
    e = entry("zigbee", 0x1234, 1, 5)
    base: dict[str, Any] = dict(
        key=DeviceKey("zigbee", "pan:0001", "aa:bb:cc:dd:ee:ff:00:11", 1),
        token=b"t" * 16,
        image=e,
        reader=Reader(),
        started_mono=0.0,
        manufacturer_code=0x1234,
        image_type=1,
        file_version=5,
    )
    return OtaDevice(**{**base, **kw})


def test_block_size_rules():
    st = state(
        default_max_block_bytes=64,
        block_size_caps=[
            {"manufacturer": 4474, "max_block_bytes": 40},
            {"manufacturer": 4474, "model": "Big", "max_block_bytes": 100},
        ],
    )
    assert st.block_size(1, None, 50) == 50
    assert st.block_size(1, None, 200) == 64
    assert st.block_size(4474, "Other", 200) == 40
    assert st.block_size(4474, "Big", 200) == 100
    assert st.block_size(4474, "Big", 20) == 20


def test_learned_caps_shrink_to_the_floor_and_roundtrip():
    st = state(min_learned_block_bytes=32)
    assert st.learn_failure(7, "M", 64) == 48
    assert st.block_size(7, "M", 64) == 48 and st.block_size(7, "N", 64) == 64
    assert st.learn_failure(7, "M", 48) == 36
    assert st.learn_failure(7, "M", 36) == 32
    assert st.learn_failure(7, "M", 32) is None
    again = state()
    again.caps_from_json(st.caps_to_json())
    assert again.learned_caps == {(7, "M"): 32}
    again.caps_from_json("not json")
    again.caps_from_json('[{"manufacturer": 1, "model": "x", "max_block_bytes": 999}, 3]')
    assert again.learned_caps == {(7, "M"): 32}


def test_stall_detection_per_manufacturer():
    st = state(stall_timeout_s=60, stall_timeouts=[{"manufacturer": 0x1234, "timeout_s": 10}])
    a = transfer(last_activity_mono=100.0)
    b = transfer(manufacturer_code=0x9999, last_activity_mono=100.0)
    st.transfers = {a.key: a, DeviceKey("zigbee", "pan:0001", "x", 1): b}
    assert st.stalled(105.0) == []
    assert st.stalled(111.0) == [a]
    assert st.stalled(161.0) == [a, b]
    a.status = TransferStatus.COMPLETE
    assert st.stalled(1000.0) == [b]
    assert st.min_stall_timeout() == 10


def test_accounting_over_counts_duplicates_like_ota_device():
    tr = transfer()
    OtaServerState.record_block(tr, 0, 50, 1.0)
    OtaServerState.record_block(tr, 0, 50, 2.0)  # duplicate
    OtaServerState.record_block(tr, 25, 50, 3.0)  # overlap
    assert tr.bytes_downloaded == 150 and tr.highest_offset == 75 and tr.last_activity_mono == 3.0


def test_pacing_push_only_when_configured_and_needed():
    st = state(min_block_period_ms=250)
    tr = transfer(device_min_block_period_ms=0)
    assert st.needs_pacing_push(tr) and st.pacing_period_ms(tr) == 250
    tr.device_min_block_period_ms = 500
    assert not st.needs_pacing_push(tr) and st.pacing_period_ms(tr) == 500
    assert not state().needs_pacing_push(transfer())


def test_zcl_utc():
    assert zcl_utc(946_684_800) == 0
    assert zcl_utc(1_700_000_000) == 753_315_200


@settings(max_examples=150, deadline=None)
@given(
    tsn=st.integers(0, 0xFF),
    mfr=st.integers(0, 0xFFFF),
    itype=st.integers(0, 0xFFFF),
    version=st.integers(0, 0xFFFFFFFF),
    offset=st.integers(0, 0xFFFFFFFF),
    data=st.binary(max_size=255),
)
def test_packed_image_block_response_is_byte_identical_to_zigpys(tsn, mfr, itype, version, offset, data):
    ours = encode_image_block_response(tsn, mfr, itype, version, offset, data)
    assert ours == zigpy_image_block_response(tsn, mfr, itype, version, offset, data)
    hdr, rest = foundation.ZCLHeader.deserialize(ours)  # and zigpy reads it back as what was meant
    cmd, left = Ota.ClientCommandDefs.image_block_response.schema.deserialize(rest)
    assert (hdr.tsn, hdr.command_id, hdr.direction) == (tsn, 0x05, foundation.Direction.Server_to_Client)
    assert (cmd.status, cmd.file_offset, cmd.image_data, left) == (
        foundation.Status.SUCCESS,
        offset,
        data,
        b"",
    )


def test_packed_image_block_response_refuses_oversized_blocks():
    with pytest.raises(ValueError, match="256 bytes"):
        encode_image_block_response(1, 1, 1, 1, 0, bytes(256))

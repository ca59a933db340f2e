"""The OTA Provider logic (adapters/matter/provider.py) against the real UpdateCore and image store, driven through
M3's IM server (cluster 0x0029 codecs, ACL) and BDX sender with the BDX receiver as the requestor; no I/O, no sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.matter.bdx.messages import BdxStatus, TransferControl
from adapters.matter.bdx.receiver import BdxReceiver
from adapters.matter.interaction.acl import AccessControl
from adapters.matter.interaction.clusters import (
    OTA_PROVIDER_CLUSTER,
    ApplyUpdateAction,
    ApplyUpdateRequest,
    ApplyUpdateResponse,
    NotifyUpdateApplied,
    OtaCommand,
    OtaStatus,
    QueryImage,
    QueryImageResponse,
    build_provider_node,
)
from adapters.matter.interaction.messages import (
    CommandData,
    CommandPath,
    CommandStatus,
    InvokeRequest,
    InvokeResponse,
    Opcode,
    decode_message,
)
from adapters.matter.interaction.server import IMServer
from adapters.matter.provider import MatterOtaProvider, ProviderFabric, matter_device_key
from adapters.matter.transport.exchange import SessionContext
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.formats import build_matter_image
from gateway.formats.tlv import Struct
from gateway.store.store import ImageStore

PROVIDER_NODE = 0x0A11_0001
CFID = 0x1122_3344_5566_7788
ADMIN = 112233
VID, PID = 0xFFF1, 0x8000


def payload(n: int, seed: int) -> bytes:
    return bytes((i * 131 + seed * 7 + 1) & 0xFF for i in range(n))


def image(version: int, size: int = 5000, pid: int = PID, **kw: Any) -> bytes:
    return build_matter_image(
        payload(size, version),
        vendor_id=VID,
        product_id=pid,
        software_version=version,
        software_version_string=f"1.{version}.0",
        **kw,
    )


@dataclass
class Env:
    core: UpdateCore
    store: ImageStore
    clock: ManualClock
    provider: MatterOtaProvider
    im: IMServer
    images: dict[int, bytes]


async def make_env(
    tmp_path: Path,
    *,
    matter: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    images: dict[int, bytes] | None = None,
) -> Env:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path),
            "matter": matter or {},
            "policy": {"auto_approve": True, **(policy or {})},
        }
    )
    store = ImageStore(tmp_path)
    await store.open()
    imgs = images if images is not None else {2: image(2)}
    for v, data in imgs.items():
        await store.add_bytes(data, file_name=f"fw-{v}.ota")
    clock = ManualClock()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    provider = MatterOtaProvider(
        core,
        [ProviderFabric(1, PROVIDER_NODE, CFID)],
        clock=clock,
        config=cfg.matter,
        busy_retry_s=cfg.policy.busy_retry_s,
    )
    registry, _ = build_provider_node(delegate=provider, acl=AccessControl.default([1], {1: [ADMIN]}))
    im = IMServer(registry, now=clock.monotonic)
    return Env(core, store, clock, provider, im, imgs)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path)
    yield e
    await e.provider.close()
    await e.core.stop()
    await e.store.close()


def session(node: int, fabric: int = 1) -> SessionContext:
    return SessionContext(fabric, node, (), 7, True)


async def invoke(im: IMServer, node: int, command: int, fields: Struct, fabric: int = 1) -> Any:
    ex = im(session(node, fabric))
    req = InvokeRequest([CommandData(CommandPath(0, OTA_PROVIDER_CLUSTER, command), fields)])
    out = await ex.receive(Opcode.INVOKE_REQUEST, req.encode())
    (msg,) = out
    resp = decode_message(msg.opcode, msg.payload)
    assert isinstance(resp, InvokeResponse)
    (item,) = resp.invoke_responses
    if isinstance(item, CommandStatus):
        return item.status.status
    assert isinstance(item, CommandData) and item.fields is not None
    if command == OtaCommand.QUERY_IMAGE:
        return QueryImageResponse.from_fields(item.fields)
    return ApplyUpdateResponse.from_fields(item.fields)


async def query(env: Env, node: int, version: int = 1, **kw: Any) -> Any:
    q = QueryImage(kw.pop("vid", VID), kw.pop("pid", PID), version, kw.pop("protocols", (0,)), **kw)
    return await invoke(env.im, node, OtaCommand.QUERY_IMAGE, q.to_fields())


def designator_of(resp: QueryImageResponse) -> bytes:
    assert resp.image_uri is not None
    prefix = f"bdx://{PROVIDER_NODE:016X}/"
    assert resp.image_uri.startswith(prefix), resp.image_uri
    return resp.image_uri[len(prefix) :].encode()


async def download(
    env: Env,
    node: int,
    designator: bytes,
    *,
    start: int = 0,
    stop_after: int | None = None,
    mode: TransferControl = TransferControl.RECEIVER_DRIVE,
) -> tuple[BdxReceiver, Any]:
    """Run a BDX download through the provider's handler; `stop_after` blocks -> the receiver goes silent."""
    handler = env.provider.bdx_factory(session(node))
    rx = BdxReceiver(designator, now=env.clock.monotonic, start_offset=start, mode=mode)
    msgs = rx.start()
    blocks = 0
    while msgs and not handler.done:
        replies = []
        for m in msgs:
            replies += await handler.receive(m.opcode, m.payload, m.protocol_id)
        msgs = []
        for r in replies:
            msgs += rx.receive(r.opcode, r.payload, r.protocol_id)
            if r.opcode in (0x11, 0x12):
                blocks += 1
        if stop_after is not None and blocks >= stop_after:
            return rx, handler  # the requestor goes silent: its next query is never sent
    for m in msgs:  # BlockAckEOF
        await handler.receive(m.opcode, m.payload, m.protocol_id)
    return rx, handler


def record(env: Env, node: int) -> Any:
    rec = env.core.get_device(matter_device_key(CFID, node).device_id)
    assert rec is not None
    return rec


# ------------------------------------------------------------------------------------------------ the flow


async def test_query_download_apply_notify_updates_the_device(env: Env) -> None:
    node = 0x5001
    resp = await query(env, node, 1, hardware_version=3, location="DE")
    assert resp.status == OtaStatus.UPDATE_AVAILABLE
    assert resp.software_version == 2 and resp.software_version_string == "1.2.0"
    assert resp.update_token is not None and len(resp.update_token) >= 8
    assert resp.user_consent_needed is None and resp.delayed_action_time == 0
    rec = record(env, node)
    assert (rec.state.value, rec.hardware_version, rec.extra["location"]) == ("querying", 3, "DE")

    rx, handler = await download(env, node, designator_of(resp))
    assert not rx.failed and bytes(rx.data) == env.images[2]
    assert handler.done and not handler.sender.failed
    rec = record(env, node)
    assert rec.state.value == "downloaded" and rec.acked_offset == len(env.images[2])

    ap = await invoke(
        env.im, node, OtaCommand.APPLY_UPDATE_REQUEST, ApplyUpdateRequest(resp.update_token, 2).to_fields()
    )
    assert ap == ApplyUpdateResponse(ApplyUpdateAction.PROCEED, 0)
    assert record(env, node).state.value == "applying"

    status = await invoke(
        env.im, node, OtaCommand.NOTIFY_UPDATE_APPLIED, NotifyUpdateApplied(resp.update_token, 2).to_fields()
    )
    assert status == 0  # SUCCESS
    rec = record(env, node)
    assert (rec.state.value, rec.current_version) == ("updated", 2)


async def test_notify_is_verified_by_a_read_back_when_the_admin_is_there(env: Env) -> None:
    node = 0x5002
    reads: list[str] = []

    async def verify(key: Any) -> None:
        reads.append(key.device_id)
        await env.core.report_version(key, 2, "1.2.0")

    env.provider.verify = verify
    resp = await query(env, node, 1)
    await download(env, node, designator_of(resp))
    await invoke(
        env.im, node, OtaCommand.APPLY_UPDATE_REQUEST, ApplyUpdateRequest(resp.update_token, 2).to_fields()
    )
    await invoke(
        env.im, node, OtaCommand.NOTIFY_UPDATE_APPLIED, NotifyUpdateApplied(resp.update_token, 2).to_fields()
    )
    assert record(env, node).state.value == "verifying"  # the device's word alone is not the end
    await asyncio.gather(*env.provider._tasks)
    assert reads == [matter_device_key(CFID, node).device_id]
    assert record(env, node).state.value == "updated"


async def test_notify_with_a_foreign_token_is_refused(env: Env) -> None:
    """NotifyUpdateApplied carries the UpdateToken: another node's token (or a made-up one) records nothing."""
    node, other = 0x5004, 0x5005
    resp = await query(env, node, 1)
    theirs = await query(env, other, 1)
    await download(env, node, designator_of(resp))
    await invoke(
        env.im, node, OtaCommand.APPLY_UPDATE_REQUEST, ApplyUpdateRequest(resp.update_token, 2).to_fields()
    )
    assert theirs.update_token is not None and theirs.update_token != resp.update_token
    for token in (theirs.update_token, b"\x42" * 16):
        await invoke(env.im, node, OtaCommand.NOTIFY_UPDATE_APPLIED, NotifyUpdateApplied(token, 2).to_fields())
        rec = record(env, node)
        assert (rec.state.value, rec.current_version) == ("applying", 1)
        assert rec.reported_status is None and "refused" in (rec.last_error or "")
    await invoke(
        env.im, node, OtaCommand.NOTIFY_UPDATE_APPLIED, NotifyUpdateApplied(resp.update_token, 2).to_fields()
    )
    assert (record(env, node).state.value, record(env, node).current_version) == ("updated", 2)


async def test_notify_never_needed_version_report_alone_completes(env: Env) -> None:
    node = 0x5003
    resp = await query(env, node, 1)
    await download(env, node, designator_of(resp))
    await invoke(
        env.im, node, OtaCommand.APPLY_UPDATE_REQUEST, ApplyUpdateRequest(resp.update_token, 2).to_fields()
    )
    await env.core.report_version(
        matter_device_key(CFID, node), 2
    )  # what the admin's SoftwareVersion read does
    assert record(env, node).state.value == "updated"


# ------------------------------------------------------------------------------------------------ refusals


async def test_vid_pid_mismatch_and_current_version_get_not_available(env: Env) -> None:
    assert (await query(env, 0x5010, 1, pid=0x9999)).status == OtaStatus.NOT_AVAILABLE
    assert (await query(env, 0x5011, 1, vid=0x1234)).status == OtaStatus.NOT_AVAILABLE
    assert (await query(env, 0x5012, 2)).status == OtaStatus.NOT_AVAILABLE  # already runs it
    resp = await query(env, 0x5012, 2)
    assert resp.update_token is None and resp.image_uri is None


async def test_applicable_range_is_enforced(tmp_path: Path) -> None:
    e = await make_env(tmp_path, images={5: image(5, min_applicable_version=3, max_applicable_version=4)})
    try:
        assert (await query(e, 0x5020, 1)).status == OtaStatus.NOT_AVAILABLE
        assert (await query(e, 0x5021, 3)).status == OtaStatus.UPDATE_AVAILABLE
    finally:
        await e.core.stop()
        await e.store.close()


async def test_no_bdx_synchronous_is_download_protocol_not_supported(env: Env) -> None:
    resp = await query(env, 0x5030, 1, protocols=(2,))  # HTTPS only
    assert resp.status == OtaStatus.DOWNLOAD_PROTOCOL_NOT_SUPPORTED
    rec = record(env, 0x5030)  # still observed
    assert rec.state.value == "idle" and rec.current_version == 1


async def test_unknown_token_apply_is_discontinue(env: Env) -> None:
    ap = await invoke(
        env.im, 0x5040, OtaCommand.APPLY_UPDATE_REQUEST, ApplyUpdateRequest(b"\x01" * 16, 2).to_fields()
    )
    assert ap.action == ApplyUpdateAction.DISCONTINUE and ap.delayed_action_time > 0


async def test_requestor_on_another_fabric_is_refused_by_the_acl(env: Env) -> None:
    q = QueryImage(VID, PID, 1, (0,))
    assert (
        await invoke(env.im, 0x5050, OtaCommand.QUERY_IMAGE, q.to_fields(), fabric=2) == 0x7E
    )  # UNSUPPORTED_ACCESS


async def test_designators_resolve_only_for_their_requestor_and_never_to_paths(env: Env) -> None:
    resp = await query(env, 0x5060, 1)
    good = designator_of(resp)
    for who, designator in (
        (0x5061, good),
        (0x5060, b"../../state.db"),
        (0x5060, b"/etc/passwd"),
        (0x5060, good + b"x"),
        (0x5060, b"\xff\xfe"),
    ):
        rx, handler = await download(env, who, designator)
        assert rx.failed and handler.sender.status == BdxStatus.FILE_DESIGNATOR_UNKNOWN, (who, designator)
    rx, _ = await download(env, 0x5060, good)
    assert bytes(rx.data) == env.images[2]


async def test_restarted_provider_reattaches_a_designator_only_for_its_requestor(env: Env) -> None:
    """After a gateway restart the provider's memory is empty; the core's persisted token brings the transfer back
    for the requestor it was issued to, and for nobody else."""
    good = designator_of(await query(env, 0x5080, 1))
    await env.provider.close()
    restarted = MatterOtaProvider(env.core, [ProviderFabric(1, PROVIDER_NODE, CFID)], clock=env.clock)
    env.provider = restarted
    assert not restarted.transfers
    for who, designator in ((0x5081, good), (0x5080, good + b"0"), (0x5080, b"otagw-" + b"0" * 24)):
        rx, handler = await download(env, who, designator)
        assert rx.failed and handler.sender.status == BdxStatus.FILE_DESIGNATOR_UNKNOWN, (who, designator)
    rx, _ = await download(env, 0x5080, good)
    assert bytes(rx.data) == env.images[2]
    assert record(env, 0x5080).state.value == "downloaded"


# ------------------------------------------------------------------------------------------------ transfers


async def test_two_requestors_at_once_interleaved(env: Env) -> None:
    a, b = 0x5070, 0x5071
    ra, rb = await query(env, a, 1), await query(env, b, 1)
    assert ra.update_token != rb.update_token and ra.image_uri != rb.image_uri
    ha, hb = env.provider.bdx_factory(session(a)), env.provider.bdx_factory(session(b))
    rxa = BdxReceiver(designator_of(ra), now=env.clock.monotonic)
    rxb = BdxReceiver(designator_of(rb), now=env.clock.monotonic)
    queues = {id(ha): rxa.start(), id(hb): rxb.start()}
    pairs = [(ha, rxa), (hb, rxb)]
    while not (ha.done and hb.done):
        for h, rx in pairs:  # one round trip each, alternating
            msgs, queues[id(h)] = queues[id(h)], []
            for m in msgs:
                for r in await h.receive(m.opcode, m.payload, m.protocol_id):
                    queues[id(h)] += rx.receive(r.opcode, r.payload, r.protocol_id)
        assert env.provider.slots.in_use <= 2
    assert bytes(rxa.data) == bytes(rxb.data) == env.images[2]
    assert record(env, a).state.value == record(env, b).state.value == "downloaded"
    assert env.provider.slots.in_use == 0


async def test_interrupted_transfer_resumes_with_the_same_token(env: Env) -> None:
    node = 0x5080
    resp = await query(env, node, 1)
    rx1, h1 = await download(env, node, designator_of(resp), stop_after=2)
    assert not rx1.done
    got = bytes(rx1.data)
    await env.clock.advance(61)  # the requestor went silent: the sender's idle timeout
    out = await h1.poll()
    assert h1.done and out and h1.sender.status == BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR
    rec = record(env, node)
    assert rec.state.value == "downloading" and rec.acked_offset == 1024  # block 1 never acknowledged

    again = await query(env, node, 1)  # the requestor asks again: same token, same image, resumable
    assert again.status == OtaStatus.UPDATE_AVAILABLE and again.update_token == resp.update_token
    rx2, _ = await download(env, node, designator_of(again), start=len(got))
    assert got + bytes(rx2.data) == env.images[2]
    assert record(env, node).state.value == "downloaded"


async def test_sender_drive_transfer_also_reports_progress(env: Env) -> None:
    node = 0x5090
    resp = await query(env, node, 1)
    rx, _ = await download(env, node, designator_of(resp), mode=TransferControl.SENDER_DRIVE)
    assert bytes(rx.data) == env.images[2]
    assert record(env, node).acked_offset == len(env.images[2])


async def test_core_withdrawing_the_token_aborts_the_transfer(env: Env) -> None:
    node = 0x50A0
    resp = await query(env, node, 1)
    _rx, h = await download(env, node, designator_of(resp), stop_after=2)
    await env.core.download_failed(resp.update_token, "operator cancelled")
    out = await h.receive(0x10, (2).to_bytes(4, "little"), 0x0002)  # BlockQuery(2)
    assert h.done and h.sender.failed and "withdrawn" in h.sender.reason
    assert out and out[0].opcode == 0x40  # StatusReport instead of the block


async def test_budget_full_gives_busy_with_delayed_action_time(tmp_path: Path) -> None:
    e = await make_env(tmp_path, policy={"budgets": {"global": 1}, "busy_retry_s": 77})
    try:
        assert (await query(e, 0x50B0, 1)).status == OtaStatus.UPDATE_AVAILABLE
        busy = await query(e, 0x50B1, 1)
        assert busy.status == OtaStatus.BUSY and busy.delayed_action_time == 77
    finally:
        await e.core.stop()
        await e.store.close()


# ------------------------------------------------------------------------------------------------ test mode


async def test_test_mode_first_response_knobs(tmp_path: Path) -> None:
    e = await make_env(
        tmp_path,
        matter={
            "test_mode": {
                "query_status": "busy",
                "delayed_query_action_time_s": 9,
                "apply_action": "await_next_action",
                "delayed_apply_action_time_s": 4,
            }
        },
    )
    try:
        node = 0x50C0
        first = await query(e, node, 1)
        assert (first.status, first.delayed_action_time) == (OtaStatus.BUSY, 9)
        second = await query(e, node, 1)
        assert second.status == OtaStatus.UPDATE_AVAILABLE and second.delayed_action_time == 0
        await download(e, node, designator_of(second))
        ap1 = await invoke(
            e.im,
            node,
            OtaCommand.APPLY_UPDATE_REQUEST,
            ApplyUpdateRequest(second.update_token, 2).to_fields(),
        )
        assert ap1 == ApplyUpdateResponse(ApplyUpdateAction.AWAIT_NEXT_ACTION, 4)
        ap2 = await invoke(
            e.im,
            node,
            OtaCommand.APPLY_UPDATE_REQUEST,
            ApplyUpdateRequest(second.update_token, 2).to_fields(),
        )
        assert ap2 == ApplyUpdateResponse(ApplyUpdateAction.PROCEED, 0)
    finally:
        await e.provider.close()
        await e.core.stop()
        await e.store.close()


async def test_test_mode_per_device_consent_and_ignore(tmp_path: Path) -> None:
    shy, denied = 0x50D0, 0x50D1
    e = await make_env(
        tmp_path,
        matter={
            "test_mode_devices": {
                hex(shy): {"user_consent_needed": True, "ignore_query_image": 1},
                str(denied): {"user_consent_state": "denied"},
            }
        },
    )
    try:
        held = asyncio.ensure_future(query(e, shy, 1, requestor_can_consent=True))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not held.done() and e.provider.held_commands == 1  # no response to the first QueryImage
        resp = await query(e, shy, 1, requestor_can_consent=True)
        assert resp.status == OtaStatus.UPDATE_AVAILABLE and resp.user_consent_needed is True
        await e.clock.advance(e.provider.ignore_hold_s)
        assert await held == 0x01  # dropped with FAILURE long after the requestor gave up
        assert (await query(e, denied, 1)).status == OtaStatus.NOT_AVAILABLE
        assert (await query(e, denied, 1)).status == OtaStatus.UPDATE_AVAILABLE  # first response only
        other = await query(e, 0x50D2, 1, requestor_can_consent=True)  # no knobs for this node
        assert other.status == OtaStatus.UPDATE_AVAILABLE and other.user_consent_needed is None
    finally:
        await e.provider.close()
        await e.core.stop()
        await e.store.close()


async def test_consent_only_flagged_when_the_requestor_can_consent(tmp_path: Path) -> None:
    e = await make_env(tmp_path, policy={"require_consent": True})
    try:
        can = await query(e, 0x50E0, 1, requestor_can_consent=True)
        cannot = await query(e, 0x50E1, 1, requestor_can_consent=False)
        assert can.user_consent_needed is True and cannot.user_consent_needed is None
    finally:
        await e.core.stop()
        await e.store.close()


async def test_interrupt_aborts_at_the_next_message_and_the_token_survives(env: Env) -> None:
    node = 0x50F0
    resp = await query(env, node, 1)
    _rx, h = await download(env, node, designator_of(resp), stop_after=1)
    assert env.provider.interrupt(resp.update_token, "operator")
    out = await h.receive(0x10, (1).to_bytes(4, "little"), 0x0002)  # BlockQuery(1)
    assert h.done and h.sender.failed and out[0].opcode == 0x40
    again = await query(env, node, 1)
    assert again.update_token == resp.update_token
    rx2, _ = await download(env, node, designator_of(again))
    assert bytes(rx2.data) == env.images[2]
    assert not env.provider.interrupt(b"\x00" * 16)

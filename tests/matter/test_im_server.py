"""The per-exchange IM server over the provider node's registry: invoke, read, chunking, timed, every status."""

from __future__ import annotations

import itertools

import pytest

from adapters.matter.interaction.acl import AccessControl, AclEntry, AuthMode, Privilege
from adapters.matter.interaction.clusters import (
    ApplyUpdateAction,
    ApplyUpdateResponse,
    BasicInfo,
    OtaStatus,
    QueryImage,
    QueryImageResponse,
    build_provider_node,
)
from adapters.matter.interaction.messages import (
    IM_PROTOCOL_ID,
    AttributeData,
    AttributePath,
    AttributeStatus,
    ClusterPath,
    CommandData,
    CommandPath,
    CommandStatus,
    DataVersionFilter,
    InvokeRequest,
    InvokeResponse,
    Opcode,
    Outgoing,
    ReadRequest,
    ReportData,
    Status,
    StatusResponse,
    SubscribeRequest,
    TimedRequest,
    WriteRequest,
    WriteResponse,
    decode_message,
)
from adapters.matter.interaction.registry import (
    ClusterServer,
    Command,
    ConstraintError,
    InvokeContext,
    StatusError,
)
from adapters.matter.interaction.server import IMServer, chunk_reports
from adapters.matter.transport.exchange import SessionContext
from gateway.formats.tlv import Array, Struct, UInt, encode
from tests.matter.support import ProvisionalProvider

Objects = pytest.importorskip("chip.clusters.Objects")
OTA = Objects.OtaSoftwareUpdateProvider

ADMIN = 112233
REQUESTOR = 0x4242


def session(node: int = REQUESTOR, fabric: int | None = 1, secure: bool = True) -> SessionContext:
    return SessionContext(fabric, node, (), 7, secure)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


QI_FIELDS = QueryImage(0xFFF1, 0x8000, 1, (0,)).to_fields()


def make(delegate: object = None, **kw: object) -> tuple[IMServer, Clock, object]:
    acl = AccessControl.default([1], {1: [ADMIN]})
    registry, ota = build_provider_node(
        BasicInfo(vendor_name="otagw-test"),
        delegate=delegate if delegate is not None else ProvisionalProvider(),  # type: ignore[arg-type]
        acl=acl,
    )
    clock = Clock()
    return IMServer(registry, now=clock, **kw), clock, ota  # type: ignore[arg-type]


def one(out: list[Outgoing]) -> object:
    assert len(out) == 1 and out[0].protocol_id == IM_PROTOCOL_ID
    return decode_message(out[0].opcode, out[0].payload)


async def invoke(
    server: IMServer, path: CommandPath, fields: Struct | None, ctx: SessionContext | None = None, **kw: bool
) -> object:
    ex = server(ctx or session())
    out = await ex.receive(
        Opcode.INVOKE_REQUEST, InvokeRequest([CommandData(path, fields)], **kw).encode(), IM_PROTOCOL_ID
    )
    assert ex.done
    return one(out) if out else None


def status_of(resp: object) -> int:
    assert isinstance(resp, InvokeResponse)
    (item,) = resp.invoke_responses
    assert isinstance(item, CommandStatus)
    return item.status.status


async def read(
    server: IMServer,
    paths: list[AttributePath],
    ctx: SessionContext | None = None,
    filters: list[DataVersionFilter] | None = None,
) -> tuple[list[object], list[ReportData]]:
    """Drive a read to the end, acking every chunk; return (all reports, the chunks)."""
    ex = server(ctx or session(ADMIN))
    out = await ex.receive(
        Opcode.READ_REQUEST, ReadRequest(paths, True, filters or []).encode(), IM_PROTOCOL_ID
    )
    chunks: list[ReportData] = []
    while True:
        rd = one(out)
        assert isinstance(rd, ReportData)
        assert len(out[0].payload) <= server.max_payload or len(rd.attribute_reports) == 1
        chunks.append(rd)
        if not rd.more_chunked:
            assert rd.suppress_response and ex.done
            break
        assert not rd.suppress_response and not ex.done
        out = await ex.receive(Opcode.STATUS_RESPONSE, StatusResponse(0).encode(), IM_PROTOCOL_ID)
    return [r for c in chunks for r in c.attribute_reports], chunks


# ------------------------------------------------------------------------------------------ invoke


async def test_query_image_provisional_not_available_decoded_by_sdk() -> None:
    server, _, ota = make()
    resp = await invoke(server, CommandPath(0, 0x29, 0), QI_FIELDS)
    assert isinstance(resp, InvokeResponse)
    (item,) = resp.invoke_responses
    assert isinstance(item, CommandData) and item.path == CommandPath(0, 0x29, 1)
    sdk = OTA.Commands.QueryImageResponse.FromTLV(encode(item.fields))
    assert sdk.status == OTA.Enums.StatusEnum.kNotAvailable
    assert ota.delegate.queries[0].vendor_id == 0xFFF1  # type: ignore[attr-defined]


async def test_async_delegate_plugged_in_later() -> None:
    class Real:
        async def query_image(self, ctx: InvokeContext, req: QueryImage) -> QueryImageResponse:
            assert ctx.subject.subject == REQUESTOR and ctx.subject.fabric_index == 1
            return QueryImageResponse(
                OtaStatus.UPDATE_AVAILABLE, 0, "bdx://0000000000000001/t", 2, "2.0", b"tok-0001", False
            )

        async def apply_update_request(self, ctx: InvokeContext, req: object) -> ApplyUpdateResponse:
            return ApplyUpdateResponse(ApplyUpdateAction.PROCEED, 5)

        def notify_update_applied(self, ctx: InvokeContext, req: object) -> None:
            raise StatusError("unknown token", Status.NOT_FOUND)

    server, _, ota = make()
    ota.delegate = Real()  # type: ignore[attr-defined]
    resp = await invoke(server, CommandPath(0, 0x29, 0), QI_FIELDS)
    item = resp.invoke_responses[0]  # type: ignore[attr-defined]
    assert OTA.Commands.QueryImageResponse.FromTLV(encode(item.fields)).updateToken == b"tok-0001"
    resp = await invoke(server, CommandPath(0, 0x29, 2), Struct({0: b"tok-0001", 1: UInt(2)}))
    item = resp.invoke_responses[0]  # type: ignore[attr-defined]
    assert item.path.command == 3 and item.fields[0] == 0 and item.fields[1] == 5
    resp = await invoke(server, CommandPath(0, 0x29, 4), Struct({0: b"tok-0001", 1: UInt(2)}))
    assert status_of(resp) == Status.NOT_FOUND


async def test_notify_update_applied_success_status() -> None:
    server, _, ota = make()
    resp = await invoke(server, CommandPath(0, 0x29, 4), Struct({0: b"abcdefgh", 1: UInt(3)}))
    assert status_of(resp) == Status.SUCCESS
    assert ota.delegate.notifications[0].software_version == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "fields", "ctx", "expected"),
    [
        (CommandPath(5, 0x29, 0), QI_FIELDS, None, Status.UNSUPPORTED_ENDPOINT),
        (CommandPath(0, 0x0006, 0), QI_FIELDS, None, Status.UNSUPPORTED_CLUSTER),
        (CommandPath(0, 0x29, 0x07), QI_FIELDS, None, Status.UNSUPPORTED_COMMAND),
        (
            CommandPath(0, 0x29, 0x01),
            QI_FIELDS,
            None,
            Status.UNSUPPORTED_COMMAND,
        ),  # a response is not accepted
        (CommandPath(0, 0x29, 0), QI_FIELDS, session(fabric=2), Status.UNSUPPORTED_ACCESS),
        (CommandPath(0, 0x29, 0), QI_FIELDS, session(fabric=None, secure=False), Status.UNSUPPORTED_ACCESS),
        (CommandPath(0, 0x29, 0), Struct({0: UInt(1)}), None, Status.INVALID_COMMAND),
        (CommandPath(0, 0x29, 0), None, None, Status.INVALID_COMMAND),
        (CommandPath(0, 0x29, 0), Struct({**QI_FIELDS, 5: "XYZ"}), None, Status.CONSTRAINT_ERROR),
        (CommandPath(0, 0x29, 2), Struct({0: b"short", 1: UInt(1)}), None, Status.CONSTRAINT_ERROR),
    ],
)
async def test_invoke_error_statuses(
    path: CommandPath, fields: Struct | None, ctx: SessionContext | None, expected: Status
) -> None:
    server, _, _ = make()
    assert status_of(await invoke(server, path, fields, ctx)) == expected


async def test_acl_requires_operate_not_just_view() -> None:
    server, _, _ = make()
    server.registry.acl.entries = [AclEntry(1, Privilege.VIEW, AuthMode.CASE)]
    assert status_of(await invoke(server, CommandPath(0, 0x29, 0), QI_FIELDS)) == Status.UNSUPPORTED_ACCESS


async def test_handler_failures_and_timed_commands() -> None:
    server, clock, _ = make()

    def boom(ctx: InvokeContext, f: Struct) -> None:
        raise RuntimeError("bug")

    def limited(ctx: InvokeContext, f: Struct) -> int:
        raise ConstraintError("too big")

    test_cluster = ClusterServer(
        0xFFF1FC01,
        1,
        commands=[
            Command(0, boom),
            Command(1, limited),
            Command(2, lambda c, f: (3, Struct({0: UInt(9)})), timed=True, response_id=3),
        ],
    )
    server.registry.add_cluster(0, test_cluster)
    server.registry.acl.entries.append(AclEntry(1, Privilege.OPERATE, AuthMode.CASE))
    assert status_of(await invoke(server, CommandPath(0, 0xFFF1FC01, 0), None)) == Status.FAILURE
    assert status_of(await invoke(server, CommandPath(0, 0xFFF1FC01, 1), None)) == Status.CONSTRAINT_ERROR
    assert (
        status_of(await invoke(server, CommandPath(0, 0xFFF1FC01, 2), None)) == Status.NEEDS_TIMED_INTERACTION
    )
    # timed: TimedRequest, then the invoke within the window
    ex = server(session())
    assert one(
        await ex.receive(Opcode.TIMED_REQUEST, TimedRequest(1000).encode(), IM_PROTOCOL_ID)
    ) == StatusResponse(Status.SUCCESS)
    clock.t += 0.5
    req = InvokeRequest([CommandData(CommandPath(0, 0xFFF1FC01, 2))], timed_request=True)
    resp = one(await ex.receive(Opcode.INVOKE_REQUEST, req.encode(), IM_PROTOCOL_ID))
    assert resp.invoke_responses[0].fields == Struct({0: 9})  # type: ignore[attr-defined]
    # too late
    ex = server(session())
    await ex.receive(Opcode.TIMED_REQUEST, TimedRequest(1000).encode(), IM_PROTOCOL_ID)
    clock.t += 1.5
    assert one(await ex.receive(Opcode.INVOKE_REQUEST, req.encode(), IM_PROTOCOL_ID)) == StatusResponse(
        Status.TIMEOUT
    )
    # flag mismatch both ways
    ex = server(session())
    await ex.receive(Opcode.TIMED_REQUEST, TimedRequest(1000).encode(), IM_PROTOCOL_ID)
    untimed = InvokeRequest([CommandData(CommandPath(0, 0xFFF1FC01, 2))])
    assert one(await ex.receive(Opcode.INVOKE_REQUEST, untimed.encode(), IM_PROTOCOL_ID)) == StatusResponse(
        Status.TIMED_REQUEST_MISMATCH
    )
    ex = server(session())
    assert one(await ex.receive(Opcode.INVOKE_REQUEST, req.encode(), IM_PROTOCOL_ID)) == StatusResponse(
        Status.TIMED_REQUEST_MISMATCH
    )


async def test_suppress_response_and_invalid_actions() -> None:
    server, _, ota = make()
    assert await invoke(server, CommandPath(0, 0x29, 0), QI_FIELDS, suppress_response=True) is None
    assert len(ota.delegate.queries) == 1  # type: ignore[attr-defined]
    ex = server(session())
    two = InvokeRequest(
        [
            CommandData(CommandPath(0, 0x29, 0), QI_FIELDS, 1),
            CommandData(CommandPath(0, 0x29, 4), QI_FIELDS, 2),
        ]
    )
    assert one(await ex.receive(Opcode.INVOKE_REQUEST, two.encode(), IM_PROTOCOL_ID)) == StatusResponse(
        Status.INVALID_ACTION
    )  # MaxPathsPerInvoke is 1
    ex = server(session())
    wildcard = InvokeRequest([CommandData(CommandPath(None, 0x29, 0), QI_FIELDS)])
    assert one(await ex.receive(Opcode.INVOKE_REQUEST, wildcard.encode(), IM_PROTOCOL_ID)) == StatusResponse(
        Status.INVALID_ACTION
    )
    for opcode, payload in (
        (Opcode.INVOKE_REQUEST, b"\x15\x18"),
        (Opcode.READ_REQUEST, b"\xff"),
        (Opcode.REPORT_DATA, ReportData().encode()),
        (0x33, b""),
    ):
        ex = server(session())
        assert one(await ex.receive(opcode, payload, IM_PROTOCOL_ID)) == StatusResponse(Status.INVALID_ACTION)
        assert ex.done
    ex = server(session())
    assert await ex.receive(Opcode.STATUS_RESPONSE, StatusResponse(0).encode(), IM_PROTOCOL_ID) == []
    assert ex.done


async def test_multi_path_invoke_when_allowed() -> None:
    server, _, _ = make(max_paths_per_invoke=2)
    ex = server(session())
    two = InvokeRequest(
        [
            CommandData(CommandPath(0, 0x29, 0), QI_FIELDS, 1),
            CommandData(CommandPath(0, 0x29, 4), Struct({0: b"abcdefgh", 1: UInt(1)}), 2),
        ]
    )
    resp = one(await ex.receive(Opcode.INVOKE_REQUEST, two.encode(), IM_PROTOCOL_ID))
    assert [r.ref for r in resp.invoke_responses] == [1, 2]  # type: ignore[attr-defined]
    ex = server(session())
    no_refs = InvokeRequest(
        [CommandData(CommandPath(0, 0x29, 0), QI_FIELDS), CommandData(CommandPath(0, 0x29, 4), QI_FIELDS)]
    )
    assert one(await ex.receive(Opcode.INVOKE_REQUEST, no_refs.encode(), IM_PROTOCOL_ID)) == StatusResponse(
        Status.INVALID_ACTION
    )


# ------------------------------------------------------------------------------------------ read


async def test_read_basic_information_and_descriptor_with_sdk_types() -> None:
    server, _, _ = make()
    reports, _ = await read(
        server,
        [
            AttributePath(0, 0x28, 1),
            AttributePath(0, 0x28, 0x13),
            AttributePath(0, 0x1D, 0),
            AttributePath(0, 0x1D, 1),
            AttributePath(0, 0x1D, 2),
            AttributePath(0, 0x1D, 3),
        ],
    )
    values = {(r.path.cluster, r.path.attribute): r.data for r in reports}  # type: ignore[union-attr]
    assert values[(0x28, 1)] == "otagw-test"
    cm = Objects.BasicInformation.Structs.CapabilityMinimaStruct.FromTLV(encode(values[(0x28, 0x13)]))
    assert cm.caseSessionsPerFabric >= 3
    dts = [Objects.Descriptor.Structs.DeviceTypeStruct.FromTLV(encode(v)) for v in values[(0x1D, 0)]]
    assert {d.deviceType for d in dts} == {0x0016, 0x0014}
    assert values[(0x1D, 1)] == [0x1D, 0x28, 0x29] and values[(0x1D, 2)] == [0x2A] and values[(0x1D, 3)] == []


async def test_global_attributes_of_provider_cluster() -> None:
    server, _, _ = make()
    reports, _ = await read(
        server, [AttributePath(0, 0x29, a) for a in (0xFFFD, 0xFFFC, 0xFFFB, 0xFFF9, 0xFFF8)]
    )
    v = [r.data for r in reports]  # type: ignore[union-attr]
    assert v == [1, 0, [0xFFF8, 0xFFF9, 0xFFFB, 0xFFFC, 0xFFFD], [0, 2, 4], [1, 3]]
    assert all(isinstance(x, UInt) for x in v[2])


@pytest.mark.parametrize(
    ("path", "ctx", "expected"),
    [
        (AttributePath(9, 0x28, 1), None, Status.UNSUPPORTED_ENDPOINT),
        (AttributePath(0, 0x0006, 0), None, Status.UNSUPPORTED_CLUSTER),
        (AttributePath(0, 0x28, 0x77), None, Status.UNSUPPORTED_ATTRIBUTE),
        (AttributePath(0, 0x28, 1), session(REQUESTOR), Status.UNSUPPORTED_ACCESS),  # default ACL: 0x29 only
        (AttributePath(0, 0x28, 0x77), session(REQUESTOR), Status.UNSUPPORTED_ACCESS),  # no existence leak
    ],
)
async def test_read_error_statuses(path: AttributePath, ctx: SessionContext | None, expected: Status) -> None:
    server, _, _ = make()
    reports, _ = await read(server, [path], ctx)
    (r,) = reports
    assert isinstance(r, AttributeStatus) and r.status.status == expected and r.path == path


async def test_wildcard_read_filters_by_acl() -> None:
    server, _, _ = make()
    reports, _ = await read(server, [AttributePath()], session(REQUESTOR))
    assert reports and {r.path.cluster for r in reports} == {0x29}  # type: ignore[union-attr]
    assert all(isinstance(r, AttributeData) for r in reports)


async def test_chunked_wildcard_read_waits_for_status() -> None:
    server, _, _ = make(max_payload=200)
    full, _ = await read(make()[0], [AttributePath()])
    reports, chunks = await read(server, [AttributePath()])
    assert len(chunks) > 3
    assert [(r.path, r.data) for r in reports] == [(r.path, r.data) for r in full]  # type: ignore[union-attr]
    # a peer that answers a chunk with an error ends the read
    ex = server(session(ADMIN))
    out = await ex.receive(Opcode.READ_REQUEST, ReadRequest([AttributePath()]).encode(), IM_PROTOCOL_ID)
    assert one(out).more_chunked  # type: ignore[attr-defined]
    assert (
        await ex.receive(Opcode.STATUS_RESPONSE, StatusResponse(Status.FAILURE).encode(), IM_PROTOCOL_ID)
        == []
    )
    assert ex.done


def test_chunk_sizes_respect_budget() -> None:
    reports = [AttributeData(AttributePath(0, 0x28, i), "x" * (i * 7 % 90), i) for i in range(200)]
    for budget in (120, 300, 1150):
        chunks = chunk_reports(reports, budget)
        assert all(len(c.encode()) <= budget or len(c.attribute_reports) == 1 for c in chunks)
        # greedy: no chunk could have taken the next report too
        for a, b in itertools.pairwise(chunks):
            assert len(ReportData(a.attribute_reports + b.attribute_reports[:1], True).encode()) > budget
        assert [r for c in chunks for r in c.attribute_reports] == reports
        assert [c.more_chunked for c in chunks] == [True] * (len(chunks) - 1) + [False]


async def test_data_version_filter_skips_unchanged_cluster() -> None:
    server, _, ota = make()
    dv = ota.data_version
    reports, _ = await read(
        server, [AttributePath(0, 0x29)], filters=[DataVersionFilter(ClusterPath(0, 0x29), dv)]
    )
    assert reports == []
    ota.bump_version()
    reports, _ = await read(
        server, [AttributePath(0, 0x29)], filters=[DataVersionFilter(ClusterPath(0, 0x29), dv)]
    )
    assert reports and all(r.data_version == dv + 1 for r in reports)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ write, subscribe


async def test_write_is_refused_per_path() -> None:
    server, _, _ = make()
    ex = server(session(ADMIN))
    req = WriteRequest(
        [
            AttributeData(AttributePath(0, 0x28, 5), "label"),
            AttributeData(AttributePath(0, 0x28, 0x77), 1),
            AttributeData(AttributePath(3, 0x28, 5), "x"),
        ]
    )
    resp = one(await ex.receive(Opcode.WRITE_REQUEST, req.encode(), IM_PROTOCOL_ID))
    assert isinstance(resp, WriteResponse)
    assert [s.status.status for s in resp.write_responses] == [
        Status.UNSUPPORTED_WRITE,
        Status.UNSUPPORTED_ATTRIBUTE,
        Status.UNSUPPORTED_ENDPOINT,
    ]
    ex = server(session(REQUESTOR))
    resp = one(
        await ex.receive(
            Opcode.WRITE_REQUEST,
            WriteRequest([AttributeData(AttributePath(0, 0x28, 5), "l")]).encode(),
            IM_PROTOCOL_ID,
        )
    )
    assert resp.write_responses[0].status.status == Status.UNSUPPORTED_ACCESS  # type: ignore[attr-defined]


async def test_subscribe_is_declined() -> None:
    server, _, _ = make()
    ex = server(session(ADMIN))
    out = await ex.receive(
        Opcode.SUBSCRIBE_REQUEST, SubscribeRequest(0, 60, [AttributePath()]).encode(), IM_PROTOCOL_ID
    )
    assert one(out) == StatusResponse(Status.RESOURCE_EXHAUSTED) and ex.done


async def test_array_values_survive_encoding() -> None:
    server, _, _ = make()
    reports, _ = await read(server, [AttributePath(0, 0x1D, 1)])
    assert isinstance(reports[0].data, Array)  # type: ignore[union-attr]

"""The simulated NCP's EZSP layer without I/O: headers, version negotiation, refusals, callback rules, reset.

Frames are built with bellows' own protocol handlers' framing rules where possible, so the simulator is checked
against the host's expectations, not against itself.
"""

from __future__ import annotations

import inspect

import bellows.types as bt
import pytest

from adapters.zigbee.sim.ncp import ezsp
from adapters.zigbee.sim.ncp.ncp import SimNcp

EUI = "00:0b:57:ff:fe:00:ee:05"


class FakeTime:
    now = 10.0

    def __call__(self) -> float:
        return self.now


def cmd(seq: int, name: str, **params: object) -> bytes:
    """A host command in the extended (v8+) header, as bellows' EZSPv8+ handlers frame it."""
    frame_id, schema, _ = ezsp.COMMANDS[name]
    body = b"".join(typ(params[k]).serialize() for k, typ in schema.items())
    return bytes([seq, 0x00, 0x01]) + frame_id.to_bytes(2, "little") + body


def parse(frame: bytes) -> tuple[int, int, str, dict[str, object]]:
    seq, fc, fid = frame[0], frame[1], int.from_bytes(frame[3:5], "little")
    name = ezsp.NAME_BY_ID[fid]
    values, rest = bt.deserialize_dict(frame[5:], ezsp.COMMANDS[name][2])
    assert rest == b""
    return seq, fc, name, values


def negotiated() -> SimNcp:
    ncp = SimNcp(EUI, FakeTime())
    ncp.handle(bytes([0, 0x00, 0x00, 4]))  # legacy version(4)
    ncp.handle(cmd(1, "version", desiredProtocolVersion=13))
    return ncp


def test_version_in_the_legacy_header_then_extended() -> None:
    ncp = SimNcp(EUI, FakeTime())
    [rsp] = ncp.handle(bytes([0, 0x00, 0x00, 4]))  # what bellows sends first: seq 0, fc 0, id 0, v4
    assert rsp == bytes([0, 0x80, 0x00, 13, 2]) + (0x7450).to_bytes(2, "little")
    # not agreed yet: anything else is refused
    [rsp] = ncp.handle(cmd(1, "networkState"))
    assert parse(rsp)[2:] == ("invalidCommand", {"status": bt.EzspStatus.ERROR_VERSION_NOT_SET})
    [rsp] = ncp.handle(cmd(2, "version", desiredProtocolVersion=13))
    assert parse(rsp) == (2, 0x80, "version", {"protocolVersion": 13, "stackType": 2, "stackVersion": 0x7450})
    [rsp] = ncp.handle(cmd(3, "networkState"))
    assert parse(rsp)[2:] == ("networkState", {"status": bt.EmberNetworkStatus.NO_NETWORK})


def test_unknown_frame_ids_and_unmodelled_commands_are_refused_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ncp = negotiated()
    [rsp] = ncp.handle(bytes([5, 0x00, 0x01, 0xEE, 0x0E]))
    assert parse(rsp) == (5, 0x80, "invalidCommand", {"status": bt.EzspStatus.ERROR_INVALID_FRAME_ID})
    [rsp] = ncp.handle(cmd(6, "getSourceRouteTableFilledSize"))
    assert parse(rsp)[2:] == ("invalidCommand", {"status": bt.EzspStatus.ERROR_INVALID_FRAME_ID})
    assert ncp.unmodelled == ["0x0EEE", "getSourceRouteTableFilledSize"]
    assert "not modelled" in caplog.text and "unknown frame id 0x0EEE" in caplog.text
    # a truncated parameter block is refused too, not guessed at
    [rsp] = ncp.handle(cmd(7, "getValue", valueId=bt.EzspValueId.VALUE_VERSION_INFO)[:-1])
    assert parse(rsp)[2:] == ("invalidCommand", {"status": bt.EzspStatus.ERROR_INVALID_VALUE})


def form(ncp: SimNcp) -> list[bytes]:
    sec = bt.EmberInitialSecurityState(
        bitmask=bt.EmberInitialSecurityBitmask.HAVE_NETWORK_KEY | bt.EmberInitialSecurityBitmask.HAVE_PRECONFIGURED_KEY,
        preconfiguredKey=bt.KeyData(b"ZigBeeAlliance09"), networkKey=bt.KeyData(bytes(range(16))),
        networkKeySequenceNumber=0, preconfiguredTrustCenterEui64=bt.EUI64.convert("00:00:00:00:00:00:00:00"),
    )  # fmt: skip
    ncp.handle(cmd(10, "setInitialSecurityState", state=sec))
    params = bt.EmberNetworkParameters(
        extendedPanId=bt.ExtendedPanId.convert("11:22:33:44:55:66:77:88"), panId=0x1A2B, radioTxPower=8,
        radioChannel=15, joinMethod=bt.EmberJoinMethod.USE_MAC_ASSOCIATION, nwkManagerId=0, nwkUpdateId=0,
        channels=bt.Channels.from_channel_list([15]),
    )  # fmt: skip
    return ncp.handle(cmd(11, "formNetwork", parameters=params))


def test_form_answers_then_calls_back_network_up_with_the_commands_sequence() -> None:
    ncp = negotiated()
    rsp, cb = form(ncp)
    assert parse(rsp) == (11, 0x80, "formNetwork", {"status": bt.EmberStatus.SUCCESS})
    assert parse(cb) == (
        11,
        0x90,
        "stackStatusHandler",
        {"status": bt.EmberStatus.NETWORK_UP},
    )  # async callback
    [rsp] = ncp.handle(cmd(12, "getNetworkParameters"))
    _, _, _, values = parse(rsp)
    assert values["nodeType"] == bt.EmberNodeType.COORDINATOR and values["parameters"].panId == 0x1A2B
    # sending: the response first, then messageSentHandler with the APS sequence the NCP assigned
    aps = bt.EmberApsFrame(
        profileId=0x0104, clusterId=6, sourceEndpoint=1, destinationEndpoint=1,
        options=bt.EmberApsOption.APS_OPTION_NONE, groupId=0, sequence=0,
    )  # fmt: skip
    rsp, sent = ncp.handle(
        cmd(
            13,
            "sendUnicast",
            type=0,
            indexOrDestination=0x4444,
            apsFrame=aps,
            messageTag=7,
            messageContents=b"x",
        )
    )
    _, _, _, r = parse(rsp)
    _, fc, name, s = parse(sent)
    assert r["status"] == bt.EmberStatus.SUCCESS and name == "messageSentHandler" and fc == 0x90
    assert s["messageTag"] == 7 and s["apsFrame"].sequence == r["sequence"]
    assert s["status"] == bt.EmberStatus.DELIVERY_FAILED  # nobody at 0x4444: no air attached


def test_reset_keeps_nvm_and_loses_ram() -> None:
    ncp = negotiated()
    form(ncp)
    ncp.handle(cmd(20, "setPolicy", policyId=bt.EzspPolicyId.TRUST_CENTER_POLICY, decisionId=3))
    ncp.handle(cmd(21, "permitJoining", duration=60))
    assert ncp.permit_open()
    ncp.reset()
    assert ncp.version is None and not ncp.network_up and not ncp.permit_open() and ncp.policies == {}
    ncp.handle(cmd(22, "version", desiredProtocolVersion=13))
    [rsp] = ncp.handle(cmd(23, "networkState"))
    assert parse(rsp)[3] == {"status": bt.EmberNetworkStatus.NO_NETWORK}
    rsp, cb = ncp.handle(cmd(24, "networkInit", networkInitBitmask=0))  # the network comes back from NVM3
    assert parse(cb)[2:] == ("stackStatusHandler", {"status": bt.EmberStatus.NETWORK_UP})
    _, _, _, v = parse(ncp.handle(cmd(25, "getNetworkParameters"))[0])
    assert v["parameters"].panId == 0x1A2B
    # the frame counter can only be written while not on a network
    [rsp] = ncp.handle(
        cmd(26, "setValue", valueId=bt.EzspValueId.VALUE_NWK_FRAME_COUNTER, value=bt.uint32_t(5).serialize())
    )
    assert parse(rsp)[3] == {"status": bt.EzspStatus.ERROR_INVALID_CALL}


def test_restored_eui64_token_takes_effect_at_boot_and_factory_reset_clears_the_network() -> None:
    ncp = negotiated()
    form(ncp)
    new = bt.EUI64.convert("00:12:4b:00:00:00:00:99")
    ncp.handle(
        cmd(
            30,
            "setTokenData",
            token=bt.NV3KeyId.NVM3KEY_STACK_RESTORED_EUI64,
            index=0,
            token_data=new.serialize(),
        )
    )
    [rsp] = ncp.handle(cmd(31, "getEui64"))
    assert parse(rsp)[3] == {"eui64": bt.EUI64.convert(EUI)}  # NVM3 is read at boot
    ncp.reset()
    ncp.handle(cmd(32, "version", desiredProtocolVersion=13))
    [rsp] = ncp.handle(cmd(31, "getEui64"))
    assert parse(rsp)[3] == {"eui64": new}
    ncp.handle(cmd(32, "tokenFactoryReset", excludeOutgoingFC=False, excludeBootCounter=False))
    ncp.reset()
    ncp.handle(cmd(33, "version", desiredProtocolVersion=13))
    [rsp] = ncp.handle(cmd(34, "networkInit", networkInitBitmask=0))
    assert parse(rsp)[3] == {"status": bt.EmberStatus.NOT_JOINED}


def test_every_handler_takes_exactly_the_fields_of_bellows_v13_schema() -> None:
    handlers = [n for n in dir(SimNcp) if n.startswith("_cmd_")]
    assert len(handlers) > 50
    for attr in handlers:
        name = attr.removeprefix("_cmd_")
        assert name in ezsp.COMMANDS, f"{name} is not an EZSP v13 command"
        sig = inspect.signature(getattr(SimNcp, attr))
        fixed = [p for p, v in sig.parameters.items() if p != "self" and v.kind != v.VAR_KEYWORD]
        has_rest = any(v.kind == v.VAR_KEYWORD for v in sig.parameters.values())
        schema = list(ezsp.COMMANDS[name][1])
        assert (set(fixed) <= set(schema)) if has_rest else fixed == schema, name


def test_a_failing_handler_is_loud_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ncp = negotiated()

    def broken(self: SimNcp) -> dict[str, object]:
        raise RuntimeError("bug")

    monkeypatch.setattr(SimNcp, "_cmd_networkState", broken)
    [rsp] = ncp.handle(cmd(40, "networkState"))
    assert parse(rsp)[2:] == ("invalidCommand", {"status": bt.EzspStatus.ERROR_INVALID_CALL})
    assert ncp.errors == ["networkState"] and "handler for networkState failed" in caplog.text

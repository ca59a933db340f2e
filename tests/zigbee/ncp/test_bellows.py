"""bellows 1.2.1's real ControllerApplication, unmodified, against the simulated EZSP NCP over loopback and a pty.

Start-up and network formation, permit-join with a device joining and zigpy interviewing it, a ZCL round trip,
backup and restore into a fresh NCP (same network, the device keeps answering), the serial (pty) path, and the
link faults: dropped and corrupted ASH frames, a NAK storm, an NCP that resets itself mid-operation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import bellows.types as bt
import zigpy.types as zt

from adapters.zigbee.sim.device import Behaviour
from adapters.zigbee.sim.ncp.ash import ResetCode
from tests.zigbee.ncp.conftest import NCP_EUI64, Rig, wait_for

DEV_IEEE = "00:11:22:33:44:55:66:77"
SLEEPY_IEEE = "00:11:22:33:44:55:66:88"

# what bellows must have asked for at start-up and formation (found by running it, see README.md)
STARTUP_COMMANDS = {
    "version",
    "customFrame",
    "getValue",
    "setValue",
    "getConfigurationValue",
    "setConfigurationValue",
    "addEndpoint",
    "networkState",
    "networkInit",
    "tokenFactoryReset",
    "clearKeyTable",
    "gpSinkTableClearAll",
    "getTokenData",
    "setTokenData",
    "getEui64",
    "setInitialSecurityState",
    "formNetwork",
    "startScan",
    "getCurrentSecurityState",
    "setConcentrator",
    "setSourceRouteDiscoveryMode",
    "setPolicy",
    "getNetworkParameters",
    "getNodeId",
    "getMfgToken",
    "exportKey",
    "getNetworkKeyInfo",
    "getExtendedTimeout",
    "getMulticastTableEntry",
}


async def joined_device(
    rig: Rig, app: object, ieee: str = DEV_IEEE, nwk: int = 0x1234, **kw: object
) -> zt.EUI64:
    dev = rig.device(ieee, nwk, **kw)
    await app.permit(30)  # type: ignore[attr-defined]
    assert rig.air.join(dev)
    devices = app.devices  # type: ignore[attr-defined]
    # the interview: node and simple descriptors, active endpoints, then Basic model/manufacturer
    await wait_for(lambda: dev.ieee in devices and devices[dev.ieee].model is not None, 8.0)
    return dev.ieee


async def read_model(app: object, ieee: zt.EUI64) -> dict[str, object]:
    zdev = app.get_device(ieee)  # type: ignore[attr-defined]
    async with asyncio.timeout(8):
        ok, failed = await zdev.endpoints[1].basic.read_attributes(
            ["model", "manufacturer"], allow_cache=False
        )
    assert not failed
    return dict(ok)


async def test_startup_forms_a_network_every_command_modelled(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server)
    ncp = server.ncp
    assert ncp.unmodelled == []
    assert set(ncp.command_log) >= STARTUP_COMMANDS
    params = ncp.nvm.params
    assert params is not None and ncp.network_up
    info = app.state.network_info
    assert info.pan_id == params.panId and info.channel == params.radioChannel
    assert info.extended_pan_id == zt.ExtendedPanId(params.extendedPanId)
    assert info.network_key.key == zt.KeyData(ncp.nvm.network_key)
    assert app.state.node_info.ieee == zt.EUI64.convert(NCP_EUI64) and app.state.node_info.nwk == 0x0000
    assert app.state.node_info.version == "7.4.5.0 build 0" and app.state.node_info.model == "sim-ncp"
    assert server.link.counters.bad_frames == 0 and server.link.counters.retransmissions == 0
    # startup + formation is a long conversation; every exchange went through ASH DATA frames both ways
    assert server.link.counters.rx_data >= len(ncp.command_log)


async def test_unknown_command_gets_invalid_command(rig: Rig) -> None:
    from bellows.exception import InvalidCommandError

    server = await rig.ncp()
    app = await rig.app(server)
    ezsp = app._ezsp
    try:
        await ezsp.getSourceRouteTableFilledSize()  # a v13 command the simulator does not model
    except InvalidCommandError as exc:
        assert "ERROR_INVALID_FRAME_ID" in str(exc)
    else:
        raise AssertionError("an unmodelled command must not succeed silently")
    assert server.ncp.unmodelled == ["getSourceRouteTableFilledSize"]


async def test_permit_join_interview_and_zcl_round_trip(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server)
    ieee = await joined_device(rig, app)
    zdev = app.get_device(ieee)
    assert zdev.nwk == 0x1234 and zdev.model == "SimLight" and zdev.manufacturer == "otagw-sim"
    assert 0x0019 in zdev.endpoints[1].out_clusters and 0x0000 in zdev.endpoints[1].in_clusters
    assert await read_model(app, ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}
    assert {"permitJoining", "sendBroadcast", "sendUnicast"} <= set(server.ncp.command_log)
    assert server.ncp.unmodelled == []


async def test_join_refused_when_permit_join_is_closed(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server)
    dev = rig.device(DEV_IEEE, 0x1234)
    assert server.ncp.permit_open() is False
    assert not rig.air.join(dev)
    await asyncio.sleep(0.2)
    assert dev.ieee not in app.devices


async def test_backup_then_restore_into_a_fresh_ncp_keeps_the_device(rig: Rig, tmp_path: Path) -> None:
    db = tmp_path / "zigbee.db"
    first = await rig.ncp()
    app = await rig.app(first, db)
    ieee = await joined_device(rig, app)
    sleepy = await joined_device(rig, app, SLEEPY_IEEE, 0x2345, behaviour=Behaviour(sleepy=True))
    backup = await app.backups.create_backup(load_devices=True)
    assert backup.network_info.children == [sleepy]  # the sleepy device is the coordinator's child
    assert backup.network_info.nwk_addresses[sleepy] == 0x2345
    await rig.stop_app(app)
    rig.air.detach(first.ncp)  # the old stick is unplugged

    fresh = await rig.ncp("00:0b:57:ff:fe:00:bb:02")
    assert not fresh.ncp.nvm.params
    app2 = await rig.app(fresh, db, auto_form=False, start=False)
    await app2.connect()
    await app2.backups.restore_backup(backup)
    await app2.disconnect()
    async with asyncio.timeout(20):
        await app2.startup(auto_form=False)

    ncp = fresh.ncp
    assert ncp.eui64 == bt.EUI64.convert(
        NCP_EUI64
    )  # the backup's EUI64 written to the NV3 restored-EUI64 token
    assert ncp.nvm.params is not None
    assert ncp.nvm.params.extendedPanId == backup.network_info.extended_pan_id
    assert ncp.nvm.params.panId == backup.network_info.pan_id
    assert zt.KeyData(ncp.nvm.network_key) == backup.network_info.network_key.key
    # zigpy bumps the frame counter on restore so devices accept the new coordinator's frames
    assert ncp.nvm.nwk_frame_counter >= backup.network_info.network_key.tx_counter + 10000
    assert [c[0] for c in ncp.nvm.children.values()] == [bt.EUI64(sleepy)]
    assert ncp.nvm.children[0][3] == 0x80  # bellows repaired the child table flag the SDK bug leaves at 0
    assert ncp.unmodelled == []
    # same network: the device answers the new coordinator without re-pairing
    assert await read_model(app2, ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}


async def test_serial_path_over_a_pty(rig: Rig) -> None:
    server = await rig.ncp(pty=True)
    assert server.path.startswith("/dev/pts/")
    app = await rig.app(server)
    assert server.ncp.network_up and server.ncp.unmodelled == []
    # on a serial port nothing resets the NCP at open: bellows' own RST did (RSTACK reset code: software)
    assert int(ResetCode.SOFTWARE) in server.link.counters.reset_codes
    ieee = await joined_device(rig, app)
    assert await read_model(app, ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}


async def test_dropped_and_corrupted_frames_and_a_nak_storm_are_recovered(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server)
    ieee = await joined_device(rig, app)
    link = server.link
    before = link.counters.retransmissions

    # a frame lost on the wire: the NCP resends it when its t_rx_ack timer expires, or sooner when bellows NAKs
    # the next frame as out of sequence
    link.faults.drop_tx_data = 1
    assert (await read_model(app, ieee))["model"] == "SimLight"
    assert link.faults.drop_tx_data == 0 and link.counters.retransmissions > before, link.counters

    naks_before = link.counters.naks_received
    link.faults.corrupt_tx_data = 2  # bad CRCs: bellows NAKs, the NCP goes back and resends
    assert (await read_model(app, ieee))["model"] == "SimLight"
    assert link.counters.naks_received > naks_before, link.counters

    link.faults.drop_rx_data = 1  # a host frame lost: bellows' timer resends it with reTx set
    assert (await read_model(app, ieee))["model"] == "SimLight"

    link.faults.nak_rx_data = (
        4  # a NAK storm: four NAKs in a row, bellows retries (5 attempts) and gets through
    )
    sent_naks = link.counters.naks_sent
    assert (await read_model(app, ieee))["model"] == "SimLight"
    assert link.counters.naks_sent - sent_naks >= 4, link.counters
    assert app._ezsp.is_ezsp_running and server.ncp.unmodelled == []


async def test_ncp_reset_mid_operation_then_the_host_reconnects(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server)
    ieee = await joined_device(rig, app)
    lost: list[Exception] = []

    class Listener:
        def connection_lost(self, exc: Exception) -> None:
            lost.append(exc)

    app.add_listener(Listener())
    boots = server.ncp.boot_count
    server.reboot(ResetCode.WATCHDOG)  # the NCP's watchdog fires: RSTACK out of the blue, network down in RAM
    await wait_for(lambda: bool(lost), 5.0)
    assert not server.ncp.network_up
    # what a gateway does on connection_lost (ZHA does the same): reconnect and start the network again
    await app.disconnect()
    async with asyncio.timeout(20):
        await app.startup(auto_form=False)
    assert server.ncp.boot_count > boots and server.ncp.network_up and server.connections == 2
    assert await read_model(app, ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}


async def test_route_records_reach_zigpy_and_source_routing_turns_the_concentrator_on(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server, extra={"source_routing": True})
    assert server.ncp.concentrator["on"] is True  # bellows: many-to-one routes, high-RAM concentrator
    ieee = await joined_device(rig, app, relays=[0x5A5A, 0x6B6B])  # reached through two routers
    assert await read_model(app, ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}
    # the NCP reported the device's route record before its frames; zigpy keeps it as the device's relays
    assert app.get_device(ieee).relays == [0x5A5A, 0x6B6B]


async def test_multicast_broadcast_and_leave(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server)
    ncp = server.ncp
    group = app.groups.add_group(0x1234, "sim")
    await group.endpoint.on_off.on()  # a ZCL command to a group: sendMulticast
    await app.broadcast(0, 0x0006, 0, 0, 0xFFFD, 0, 1, b"\x01\x02\x00")  # a ZCL broadcast: sendBroadcast
    assert {"sendMulticast", "sendBroadcast"} <= set(ncp.command_log)
    await app._ezsp.leaveNetwork()  # waits for stackStatusHandler(NETWORK_DOWN)
    assert not ncp.network_up and ncp.nvm.params is None
    (state,) = await app._ezsp.networkState()
    assert state == bt.EmberNetworkStatus.NO_NETWORK

"""The simulated Silicon Labs NCP's EZSP state and command handlers (sans-I/O: EZSP frames in, frames out).

`SimNcp.handle(frame)` takes one host EZSP frame and returns the frames to send back: the response first, then
any callbacks the command caused (stackStatusHandler after networkInit/formNetwork/leaveNetwork,
messageSentHandler after a send). Events from the simulated air (a device's frame, a join) queue callbacks that
`take_frames()` hands out. Time comes from an injected `monotonic` callable.

What survives `reset()` is what an NCP keeps in NVM3 tokens: EUI64 (and a restored EUI64), network parameters,
keys and frame counters, the child table, the link key table, manufacturing tokens. Config values, values,
policies, endpoints, the multicast table, permit-join and the EZSP version negotiation live in RAM and are lost.

Commands bellows 1.2.1 sends were found by running its ControllerApplication against this simulator (see
README.md). A frame id that EZSP v13 does not define is answered `invalidCommand(ERROR_INVALID_FRAME_ID)`, as an
NCP does; a v13 command this simulator does not model is answered the same way and logged as a warning and kept
in `unmodelled`, so a test sees it: never a silent drop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bellows.types as bt
import zigpy.types as zt

from adapters.zigbee.sim.ncp import ezsp

if TYPE_CHECKING:
    from adapters.zigbee.sim.ncp.network import RadioAir

LOGGER = logging.getLogger(__name__)

ES = bt.EmberStatus
EZ = bt.EzspStatus
SL = bt.sl_Status
NV3 = bt.NV3KeyId

KEY_TABLE_SIZE = 16
ADDRESS_TABLE_SIZE = 16
CHILD_TABLE_SIZE = 32
MULTICAST_TABLE_SIZE = 16
UNUSED_NODE_ID = 0xFFFF
BROADCASTS = frozenset({0xFFFC, 0xFFFD, 0xFFFF})
FF_EUI64 = bt.EUI64.convert("FF:FF:FF:FF:FF:FF:FF:FF")
ZERO_EUI64 = bt.EUI64.convert("00:00:00:00:00:00:00:00")

# config ids bellows reads back (others read as 0 until written), with EmberZNet's defaults
DEFAULT_CONFIG: dict[str, int] = {
    "CONFIG_PACKET_BUFFER_COUNT": 75,
    "CONFIG_KEY_TABLE_SIZE": KEY_TABLE_SIZE,
    "CONFIG_ADDRESS_TABLE_SIZE": ADDRESS_TABLE_SIZE,
    "CONFIG_SECURITY_LEVEL": 5,
    "CONFIG_MAX_END_DEVICE_CHILDREN": CHILD_TABLE_SIZE,
    "CONFIG_MULTICAST_TABLE_SIZE": MULTICAST_TABLE_SIZE,
    "CONFIG_SOURCE_ROUTE_TABLE_SIZE": 16,
    "CONFIG_ROUTE_TABLE_SIZE": 16,
    "CONFIG_STACK_PROFILE": 2,
    "CONFIG_MAX_HOPS": 30,
    "CONFIG_INDIRECT_TRANSMISSION_TIMEOUT": 7680,
}

MFG_TOKEN_LENGTHS = {
    bt.EzspMfgTokenId.MFG_CUSTOM_VERSION: 2,
    bt.EzspMfgTokenId.MFG_STRING: 16,
    bt.EzspMfgTokenId.MFG_BOARD_NAME: 16,
    bt.EzspMfgTokenId.MFG_MANUF_ID: 2,
    bt.EzspMfgTokenId.MFG_PHY_CONFIG: 2,
    bt.EzspMfgTokenId.MFG_CUSTOM_EUI_64: 8,
}


def _pad(text: bytes, length: int) -> bytes:
    return text[:length] + b"\xff" * (length - len(text[:length]))


@dataclass
class LinkKey:
    eui64: bt.EUI64
    key: bt.KeyData
    tx_counter: int = 0
    rx_counter: int = 0


@dataclass
class Nvm:
    """What the NCP keeps across resets (its NVM3 tokens)."""

    hardware_eui64: bt.EUI64
    restored_eui64: bt.EUI64 | None = None
    mfg_tokens: dict[int, bytes] = field(default_factory=dict)
    # network: None = not commissioned
    params: bt.EmberNetworkParameters | None = None
    node_type: bt.EmberNodeType = bt.EmberNodeType.COORDINATOR
    node_id: int = 0x0000
    network_key: bt.KeyData | None = None
    network_key_seq: int = 0
    nwk_frame_counter: int = 0
    aps_frame_counter: int = 0
    tc_link_key: bt.KeyData = field(default_factory=lambda: bt.KeyData(b"ZigBeeAlliance09"))
    hashed_tclk: bool = False
    security_bitmask: int = 0
    children: dict[int, tuple[bt.EUI64, int, int, int]] = field(
        default_factory=dict
    )  # index -> eui, nwk, type, flags
    link_keys: dict[int, LinkKey] = field(default_factory=dict)
    pending_security: bt.EmberInitialSecurityState | None = None


@dataclass(frozen=True)
class NetworkIdentity:
    """What a device must share with the coordinator to talk to it: PAN, extended PAN, channel, network key."""

    pan_id: int
    extended_pan_id: bytes
    channel: int
    network_key: bytes


class SimNcp:
    """EZSP v13 NCP state machine. See the module docstring."""

    def __init__(
        self,
        eui64: str,
        monotonic: Callable[[], float],
        *,
        manufacturer: str = "otagw",
        board: str = "sim-ncp",
        version: tuple[int, int, int, int, int] = (7, 4, 5, 0, 0),  # major, minor, patch, special, build
    ) -> None:
        self.monotonic = monotonic
        self.nvm = Nvm(hardware_eui64=bt.EUI64.convert(eui64))
        self.nvm.mfg_tokens[bt.EzspMfgTokenId.MFG_STRING] = _pad(manufacturer.encode(), 16)
        self.nvm.mfg_tokens[bt.EzspMfgTokenId.MFG_BOARD_NAME] = _pad(board.encode(), 16)
        self.firmware_version = version
        self.air: RadioAir | None = None
        self.command_log: list[str] = []  # every command name handled, in order (tests, README)
        self.unmodelled: list[str] = []
        self.command_times: list[float] = []
        self.errors: list[str] = []  # commands whose handler raised (a simulator bug; tests assert none)
        self.on_frames: Callable[[], None] | None = None  # told when asynchronous callbacks are queued
        self._async_out: list[bytes] = []
        self.boot_count = 0
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Reboot: RAM state is lost, NVM3 tokens stay."""
        self.boot_count += 1
        self._eui64_at_boot = self.nvm.restored_eui64 or self.nvm.hardware_eui64
        self.version: int | None = None
        self.last_seq = 0
        self.config: dict[str, int] = dict(DEFAULT_CONFIG)
        self.values: dict[int, bytes] = {}
        self.policies: dict[int, int] = {}
        self.endpoints: dict[int, dict[str, Any]] = {}
        self.multicast: dict[int, bt.EmberMulticastTableEntry] = {}
        self.source_routes: dict[int, list[int]] = {}
        self.transient_keys: dict[bt.EUI64, bt.KeyData] = {}
        self.extended_timeouts: dict[bt.EUI64, bool] = {}
        self.address_table: dict[int, tuple[bt.EUI64, int]] = {}
        self.known_nodes: dict[
            bt.EUI64, int
        ] = {}  # neighbour/address knowledge learnt from joins and announces
        self.network_up = False
        self.permit_until = 0.0
        self.concentrator: dict[str, Any] = {}
        self.radio_power = 8
        self.aps_seq = 0
        self.counters = [0] * len(bt.EmberCounterType.__members__)
        self._async_out.clear()
        self._replies: list[bytes] = []

    @property
    def eui64(self) -> bt.EUI64:
        """The EUI64 in use: read from NVM3 (restored EUI64, else the chip's) when the NCP booted."""
        return self._eui64_at_boot

    @property
    def identity(self) -> NetworkIdentity | None:
        p = self.nvm.params
        if not self.network_up or p is None or self.nvm.network_key is None:
            return None
        return NetworkIdentity(
            pan_id=int(p.panId),
            extended_pan_id=bytes(p.extendedPanId.serialize()),
            channel=int(p.radioChannel),
            network_key=bytes(self.nvm.network_key.serialize()),
        )

    def permit_open(self) -> bool:
        return self.network_up and self.monotonic() < self.permit_until

    # ------------------------------------------------------------------ frames
    def handle(self, data: bytes) -> list[bytes]:
        """One host frame in; the response and the callbacks it caused out."""
        try:
            cmd = ezsp.parse_command(data)
        except ezsp.EzspDecodeError as exc:
            LOGGER.warning("sim NCP: undecodable EZSP frame %s: %s", data.hex(), exc)
            return []
        self.last_seq = cmd.seq
        self._replies = []
        name = ezsp.NAME_BY_ID.get(cmd.frame_id)
        if cmd.legacy and cmd.frame_id != ezsp.frame_id("version"):
            return [self._invalid(cmd, EZ.ERROR_INVALID_FRAME_ID, "legacy-format frame other than version")]
        if name is None:
            LOGGER.warning("sim NCP: unknown frame id 0x%04X (params %s)", cmd.frame_id, cmd.params.hex())
            self.unmodelled.append(f"0x{cmd.frame_id:04X}")
            return [self._invalid(cmd, EZ.ERROR_INVALID_FRAME_ID, "unknown frame id")]
        if self.version is None and name != "version":
            return [self._invalid(cmd, EZ.ERROR_VERSION_NOT_SET, name)]
        self.command_log.append(name)
        self.command_times.append(self.monotonic())
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            LOGGER.warning(
                "sim NCP: command %s (0x%04X) is not modelled; answering invalidCommand", name, cmd.frame_id
            )
            self.unmodelled.append(name)
            return [self._invalid(cmd, EZ.ERROR_INVALID_FRAME_ID, name)]
        try:
            request = ezsp.decode_request(name, cmd.params)
        except ezsp.EzspDecodeError as exc:
            LOGGER.warning("sim NCP: %s", exc)
            return [self._invalid(cmd, EZ.ERROR_INVALID_VALUE, str(exc))]
        try:
            response = handler(**request)
            params = ezsp.encode_response(name, response)
        except Exception:
            # a simulator bug: loud in the log and in `errors`, answered like a command the NCP cannot run
            LOGGER.exception("sim NCP: handler for %s failed on %s", name, request)
            self.errors.append(name)
            return [self._invalid(cmd, EZ.ERROR_INVALID_CALL, f"{name} failed")]
        legacy = cmd.legacy and name == "version"
        return [ezsp.encode_frame(cmd.seq, cmd.frame_id, params, legacy=legacy), *self._replies]

    def _invalid(self, cmd: ezsp.EzspCommand, status: bt.EzspStatus, why: str) -> bytes:
        LOGGER.debug("sim NCP: invalidCommand(%s) for %s", status.name, why)
        params = ezsp.encode_response("invalidCommand", {"status": status})
        return ezsp.encode_frame(cmd.seq, ezsp.frame_id("invalidCommand"), params, legacy=cmd.legacy)

    def callback(self, name: str, **values: Any) -> None:
        """Queue a callback frame (sequence number: the last command seen, as UG100 says)."""
        frame = ezsp.encode_frame(
            self.last_seq,
            ezsp.frame_id(name),
            ezsp.encode_response(name, values),
            legacy=False,
            callback=True,
        )
        self._async_out.append(frame)
        if self.on_frames is not None:
            self.on_frames()

    def _after_response(self, name: str, **values: Any) -> None:
        """A callback caused by the command being handled: it follows the command's response."""
        self._replies.append(
            ezsp.encode_frame(
                self.last_seq,
                ezsp.frame_id(name),
                ezsp.encode_response(name, values),
                legacy=False,
                callback=True,
            )
        )

    def take_frames(self) -> list[bytes]:
        out, self._async_out = self._async_out, []
        return out

    # ================================================================== configuration
    def _cmd_version(self, desiredProtocolVersion: int) -> dict[str, Any]:
        # the NCP always answers with its own version; only when the host asked for exactly that version is the
        # exchange complete and other commands accepted (the host switches framing and asks again)
        if desiredProtocolVersion == ezsp.EZSP_VERSION:
            self.version = ezsp.EZSP_VERSION
        return {
            "protocolVersion": ezsp.EZSP_VERSION,
            "stackType": ezsp.STACK_TYPE,
            "stackVersion": ezsp.STACK_VERSION,
        }

    def _cmd_nop(self) -> dict[str, Any]:
        return {}

    def _cmd_getConfigurationValue(self, configId: bt.EzspConfigId) -> dict[str, Any]:
        return {"status": EZ.SUCCESS, "value": self.config.get(configId.name, 0)}

    def _cmd_setConfigurationValue(self, configId: bt.EzspConfigId, value: int) -> dict[str, Any]:
        if self.network_up:
            return {"status": EZ.ERROR_INVALID_CALL}  # config is fixed once the stack runs
        self.config[configId.name] = int(value)
        return {"status": EZ.SUCCESS}

    def _cmd_getValue(self, valueId: bt.EzspValueId) -> dict[str, Any]:
        if valueId == bt.EzspValueId.VALUE_VERSION_INFO:
            major, minor, patch, special, build = self.firmware_version
            value = bt.uint16_t(build).serialize() + bytes([major, minor, patch, special])
        elif valueId == bt.EzspValueId.VALUE_FREE_BUFFERS:
            value = bytes([self.config["CONFIG_PACKET_BUFFER_COUNT"] & 0xFF])
        elif valueId == bt.EzspValueId.VALUE_NWK_FRAME_COUNTER:
            value = bt.uint32_t(self.nvm.nwk_frame_counter).serialize()
        elif valueId == bt.EzspValueId.VALUE_APS_FRAME_COUNTER:
            value = bt.uint32_t(self.nvm.aps_frame_counter).serialize()
        elif valueId in self.values:
            value = self.values[valueId]
        else:
            return {"status": EZ.ERROR_INVALID_ID, "value": b""}
        return {"status": EZ.SUCCESS, "value": value}

    def _cmd_setValue(self, valueId: bt.EzspValueId, value: bytes) -> dict[str, Any]:
        if valueId in (bt.EzspValueId.VALUE_NWK_FRAME_COUNTER, bt.EzspValueId.VALUE_APS_FRAME_COUNTER):
            if self.network_up:
                return {"status": EZ.ERROR_INVALID_CALL}  # frame counters are set before joining only
            counter, _ = bt.uint32_t.deserialize(value)
            if valueId == bt.EzspValueId.VALUE_NWK_FRAME_COUNTER:
                self.nvm.nwk_frame_counter = int(counter)
            else:
                self.nvm.aps_frame_counter = int(counter)
            return {"status": EZ.SUCCESS}
        if valueId == bt.EzspValueId.VALUE_VERSION_INFO:
            return {"status": EZ.ERROR_INVALID_CALL}
        self.values[valueId] = bytes(value)
        return {"status": EZ.SUCCESS}

    def _cmd_setPolicy(self, policyId: bt.EzspPolicyId, decisionId: int) -> dict[str, Any]:
        self.policies[int(policyId)] = int(decisionId)
        return {"status": EZ.SUCCESS}

    def _cmd_getPolicy(self, policyId: bt.EzspPolicyId) -> dict[str, Any]:
        return {"status": EZ.SUCCESS, "decisionId": self.policies.get(int(policyId), 0)}

    def _cmd_addEndpoint(self, endpoint: int, **desc: Any) -> dict[str, Any]:
        if endpoint in self.endpoints:
            return {"status": EZ.ERROR_INVALID_CALL}
        self.endpoints[int(endpoint)] = desc
        return {"status": EZ.SUCCESS}

    def _cmd_setManufacturerCode(self, code: int) -> dict[str, Any]:
        self.manufacturer_code = int(code)
        return {}

    def _cmd_setRadioPower(self, power: int) -> dict[str, Any]:
        self.radio_power = int(power)
        return {"status": ES.SUCCESS}

    def _cmd_setConcentrator(self, on: bool, **params: Any) -> dict[str, Any]:
        self.concentrator = {"on": bool(on), **params}
        return {"status": ES.SUCCESS}

    def _cmd_setSourceRouteDiscoveryMode(self, mode: int) -> dict[str, Any]:
        self.source_route_discovery = int(mode)
        return {"remainingTime": 0}

    def _cmd_customFrame(self, payload: bytes) -> dict[str, Any]:
        # stock EmberZNet firmware has no XNCP extension: the custom frame handler refuses
        return {"status": ES.INVALID_CALL, "reply": b""}

    def _cmd_readCounters(self) -> dict[str, Any]:
        return {"values": list(self.counters)}

    def _cmd_readAndClearCounters(self) -> dict[str, Any]:
        values = list(self.counters)
        self.counters = [0] * len(values)
        return {"values": values}

    # ================================================================== tokens
    def _cmd_getMfgToken(self, tokenId: bt.EzspMfgTokenId) -> dict[str, Any]:
        length = MFG_TOKEN_LENGTHS.get(tokenId, 16)
        return {"tokenData": self.nvm.mfg_tokens.get(int(tokenId), b"\xff" * length)}

    def _cmd_setMfgToken(self, tokenId: bt.EzspMfgTokenId, tokenData: bytes) -> dict[str, Any]:
        current = self.nvm.mfg_tokens.get(int(tokenId))
        if current is not None and current != b"\xff" * len(current):
            return {"status": ES.ERR_FATAL}  # manufacturing tokens are write-once
        self.nvm.mfg_tokens[int(tokenId)] = bytes(tokenData)
        return {"status": ES.SUCCESS}

    def _nv3_read(self, token: int, index: int) -> bytes | None:
        n = self.nvm
        if token in (NV3.CREATOR_STACK_RESTORED_EUI64, NV3.NVM3KEY_STACK_RESTORED_EUI64):
            return bytes((n.restored_eui64 or FF_EUI64).serialize())
        if n.params is None:
            return None
        if token == NV3.NVM3KEY_STACK_NODE_DATA:
            return bytes(
                bt.NV3StackNodeData(
                    panId=n.params.panId,
                    radioTxPower=self.radio_power,
                    radioFreqChannel=n.params.radioChannel,
                    stackProfile=2,
                    nodeType=n.node_type,
                    zigbeeNodeId=n.node_id,
                    extendedPanId=n.params.extendedPanId,
                ).serialize()
            )
        if token == NV3.NVM3KEY_STACK_TRUST_CENTER:
            return bytes(bt.NV3StackTrustCenterToken(mode=0, eui64=self.eui64, key=n.tc_link_key).serialize())
        if token == NV3.NVM3KEY_STACK_NETWORK_MANAGEMENT:
            return bytes(
                bt.NV3StackNetworkManagementToken(
                    active_channels=n.params.channels,
                    manager_node_id=n.params.nwkManagerId,
                    update_id=n.params.nwkUpdateId,
                    padding=0,
                ).serialize()
            )
        if token == NV3.NVM3KEY_STACK_CHILD_TABLE and index in n.children:
            eui, nwk, _type, flags = n.children[index]
            return bytes(bt.NV3ChildTableEntry(eui64=eui, id=nwk, flags=flags).serialize())
        return None

    def _cmd_getTokenData(self, token: int, index: int) -> dict[str, Any]:
        value = self._nv3_read(int(token), int(index))
        if value is None:
            return {"status": ES.ERR_FATAL}
        return {"status": ES.SUCCESS, "value": value}

    def _cmd_setTokenData(self, token: int, index: int, token_data: bytes) -> dict[str, Any]:
        n = self.nvm
        token = int(token)
        if token in (NV3.CREATOR_STACK_RESTORED_EUI64, NV3.NVM3KEY_STACK_RESTORED_EUI64):
            eui, _ = bt.EUI64.deserialize(bytes(token_data))
            n.restored_eui64 = None if eui == FF_EUI64 else eui  # takes effect at the next boot, like NVM3
            return {"status": ES.SUCCESS}
        if n.params is None:
            return {"status": ES.ERR_FATAL}
        if token == NV3.NVM3KEY_STACK_NODE_DATA:
            data, _ = bt.NV3StackNodeData.deserialize(bytes(token_data))
            self.radio_power = int(data.radioTxPower)
        elif token == NV3.NVM3KEY_STACK_TRUST_CENTER:
            data2, _ = bt.NV3StackTrustCenterToken.deserialize(bytes(token_data))
            n.tc_link_key = data2.key
        elif token == NV3.NVM3KEY_STACK_NETWORK_MANAGEMENT:
            data3, _ = bt.NV3StackNetworkManagementToken.deserialize(bytes(token_data))
            n.params = n.params.replace(
                channels=data3.active_channels,
                nwkManagerId=data3.manager_node_id,
                nwkUpdateId=data3.update_id,
            )
        elif token == NV3.NVM3KEY_STACK_CHILD_TABLE and int(index) in n.children:
            entry, _ = bt.NV3ChildTableEntry.deserialize(bytes(token_data))
            n.children[int(index)] = (entry.eui64, int(entry.id), n.children[int(index)][2], int(entry.flags))
        else:
            return {"status": ES.ERR_FATAL}
        return {"status": ES.SUCCESS}

    def _cmd_tokenFactoryReset(self, excludeOutgoingFC: bool, excludeBootCounter: bool) -> dict[str, Any]:
        keep_nwk, keep_aps = self.nvm.nwk_frame_counter, self.nvm.aps_frame_counter
        hw, mfg = self.nvm.hardware_eui64, self.nvm.mfg_tokens
        self.nvm = Nvm(hardware_eui64=hw, mfg_tokens=mfg)
        if excludeOutgoingFC:
            self.nvm.nwk_frame_counter, self.nvm.aps_frame_counter = keep_nwk, keep_aps
        return {}

    # ================================================================== scanning
    def _cmd_startScan(
        self, scanType: bt.EzspNetworkScanType, channelMask: bt.Channels, duration: int
    ) -> dict[str, Any]:
        channels = [ch for ch in range(11, 27) if bt.Channels.from_channel_list([ch]) & channelMask]
        if not channels:
            return {"status": ES.BAD_ARGUMENT}
        if scanType == bt.EzspNetworkScanType.ENERGY_SCAN:
            for ch in channels:
                # a quiet simulated band, a little busier on the Wi-Fi-overlapped channels
                rssi = -75 if ch in (11, 12, 13, 16, 17, 18, 21, 22, 23) else -92
                self._after_response("energyScanResultHandler", channel=ch, maxRssiValue=rssi)
        elif scanType == bt.EzspNetworkScanType.ACTIVE_SCAN and self.air is not None:
            for other in self.air.ncps:
                p = other.nvm.params
                if other is self or p is None or not other.network_up or int(p.radioChannel) not in channels:
                    continue
                found = bt.EmberZigbeeNetwork(
                    channel=p.radioChannel,
                    panId=p.panId,
                    extendedPanId=p.extendedPanId,
                    allowingJoin=other.permit_open(),
                    stackProfile=2,
                    nwkUpdateId=p.nwkUpdateId,
                )
                self._after_response(
                    "networkFoundHandler", networkFound=found, lastHopLqi=255, lastHopRssi=-40
                )
        self._after_response("scanCompleteHandler", channel=channels[-1], status=ES.SUCCESS)
        return {"status": ES.SUCCESS}

    # ================================================================== identity and network
    def _cmd_getEui64(self) -> dict[str, Any]:
        return {"eui64": self.eui64}

    def _cmd_getNodeId(self) -> dict[str, Any]:
        return {"nodeId": self.nvm.node_id if self.network_up else 0xFFFE}

    def _cmd_networkState(self) -> dict[str, Any]:
        state = bt.EmberNetworkStatus.JOINED_NETWORK if self.network_up else bt.EmberNetworkStatus.NO_NETWORK
        return {"status": state}

    def _cmd_networkInit(self, networkInitBitmask: int) -> dict[str, Any]:
        if self.nvm.params is None:
            return {"status": ES.NOT_JOINED}
        if self.network_up:
            return {"status": ES.INVALID_CALL}
        self._bring_up()
        return {"status": ES.SUCCESS}

    def _bring_up(self) -> None:
        self.network_up = True
        self._after_response("stackStatusHandler", status=ES.NETWORK_UP)
        if self.air is not None:
            self.air.ncp_changed(self)

    def _cmd_getNetworkParameters(self) -> dict[str, Any]:
        if self.nvm.params is None or not self.network_up:
            return {
                "status": ES.NOT_JOINED,
                "nodeType": bt.EmberNodeType.UNKNOWN_DEVICE,
                "parameters": bt.EmberNetworkParameters(
                    extendedPanId=bt.ExtendedPanId.convert("00:00:00:00:00:00:00:00"),
                    panId=0xFFFF,
                    radioTxPower=0,
                    radioChannel=0,
                    joinMethod=bt.EmberJoinMethod.USE_MAC_ASSOCIATION,
                    nwkManagerId=0,
                    nwkUpdateId=0,
                    channels=bt.Channels.NO_CHANNELS,
                ),
            }
        return {"status": ES.SUCCESS, "nodeType": self.nvm.node_type, "parameters": self.nvm.params}

    def _cmd_setInitialSecurityState(self, state: bt.EmberInitialSecurityState) -> dict[str, Any]:
        if self.network_up:
            return {"status": ES.INVALID_CALL}
        self.nvm.pending_security = state
        return {"status": ES.SUCCESS}

    def _cmd_formNetwork(self, parameters: bt.EmberNetworkParameters) -> dict[str, Any]:
        n = self.nvm
        if self.network_up:
            return {"status": ES.INVALID_CALL}
        sec = n.pending_security
        if sec is None:
            return {"status": ES.INVALID_CALL}  # security must be set first (EMBER_SECURITY_STATE_NOT_SET)
        bits = bt.EmberInitialSecurityBitmask
        if bits.HAVE_NETWORK_KEY in sec.bitmask:
            n.network_key, n.network_key_seq = sec.networkKey, int(sec.networkKeySequenceNumber)
        else:
            n.network_key, n.network_key_seq = bt.KeyData(os.urandom(16)), 0
        n.tc_link_key = sec.preconfiguredKey
        n.hashed_tclk = bits.TRUST_CENTER_USES_HASHED_LINK_KEY in sec.bitmask
        # the NCP ignores nwkUpdateId in formNetwork (bellows writes it to the token afterwards)
        n.params = parameters.replace(nwkUpdateId=0, nwkManagerId=0x0000)
        n.node_type = bt.EmberNodeType.COORDINATOR
        n.node_id = 0x0000
        self._bring_up()
        return {"status": ES.SUCCESS}

    def _cmd_leaveNetwork(self) -> dict[str, Any]:
        if not self.network_up:
            return {"status": ES.INVALID_CALL}
        self.network_up = False
        n = self.nvm
        n.params = None
        n.network_key = None
        n.children.clear()
        self._after_response("stackStatusHandler", status=ES.NETWORK_DOWN)
        if self.air is not None:
            self.air.ncp_changed(self)
        return {"status": ES.SUCCESS}

    def _cmd_permitJoining(self, duration: int) -> dict[str, Any]:
        if not self.network_up:
            return {"status": ES.INVALID_CALL}
        # 0xFF: open until told otherwise
        self.permit_until = float("inf") if duration == 0xFF else self.monotonic() + int(duration)
        return {"status": ES.SUCCESS}

    # ================================================================== security
    def _cmd_getCurrentSecurityState(self) -> dict[str, Any]:
        if not self.network_up:
            return {
                "status": ES.NOT_JOINED,
                "state": bt.EmberCurrentSecurityState(bitmask=0, trustCenterLongAddress=ZERO_EUI64),
            }
        bits = bt.EmberCurrentSecurityBitmask
        bitmask = bits.GLOBAL_LINK_KEY | bits.HAVE_TRUST_CENTER_LINK_KEY
        if self.nvm.hashed_tclk:
            bitmask |= bits.TRUST_CENTER_USES_HASHED_LINK_KEY
        return {
            "status": ES.SUCCESS,
            "state": bt.EmberCurrentSecurityState(bitmask=bitmask, trustCenterLongAddress=self.eui64),
        }

    def _cmd_exportKey(self, context: bt.SecurityManagerContextV13) -> dict[str, Any]:
        kind = bt.SecurityManagerKeyType
        if context.core_key_type == kind.NETWORK:
            key = self.nvm.network_key or bt.KeyData(bytes(16))
        elif context.core_key_type == kind.TC_LINK:
            key = self.nvm.tc_link_key
        else:
            return {"key": bt.KeyData(bytes(16)), "status": SL.NOT_FOUND}
        return {"key": key, "status": SL.OK}

    def _cmd_getNetworkKeyInfo(self) -> dict[str, Any]:
        n = self.nvm
        info = bt.SecurityManagerNetworkKeyInfo(
            network_key_set=n.network_key is not None,
            alternate_network_key_set=False,
            network_key_sequence_number=n.network_key_seq,
            alt_network_key_sequence_number=0,
            network_key_frame_counter=n.nwk_frame_counter,
        )
        return {"status": SL.OK, "network_key_info": info}

    def _cmd_exportLinkKeyByIndex(self, index: int) -> dict[str, Any]:
        entry = self.nvm.link_keys.get(int(index))
        meta = bt.SecurityManagerAPSKeyMetadata(
            bitmask=0, outgoing_frame_counter=0, incoming_frame_counter=0, ttl_in_seconds=0
        )
        if entry is None:
            return {
                "eui64": ZERO_EUI64,
                "plaintext_key": bt.KeyData(bytes(16)),
                "key_data": meta,
                "status": SL.NOT_FOUND,
            }
        meta = meta.replace(
            bitmask=bt.EmberKeyStructBitmask.KEY_HAS_OUTGOING_FRAME_COUNTER
            | bt.EmberKeyStructBitmask.KEY_HAS_INCOMING_FRAME_COUNTER,
            outgoing_frame_counter=entry.tx_counter,
            incoming_frame_counter=entry.rx_counter,
        )
        return {"eui64": entry.eui64, "plaintext_key": entry.key, "key_data": meta, "status": SL.OK}

    def _cmd_importLinkKey(self, index: int, address: bt.EUI64, key: bt.KeyData) -> dict[str, Any]:
        if not 0 <= int(index) < self.config["CONFIG_KEY_TABLE_SIZE"]:
            return {"status": SL.INVALID_INDEX}
        self.nvm.link_keys[int(index)] = LinkKey(eui64=address, key=key)
        return {"status": SL.OK}

    def _cmd_clearKeyTable(self) -> dict[str, Any]:
        self.nvm.link_keys.clear()
        return {"status": ES.SUCCESS}

    def _cmd_findKeyTableEntry(self, address: bt.EUI64, linkKey: bool) -> dict[str, Any]:
        for index, entry in self.nvm.link_keys.items():
            if entry.eui64 == address:
                return {"index": index}
        return {"index": 0xFF}

    def _cmd_eraseKeyTableEntry(self, index: int) -> dict[str, Any]:
        if self.nvm.link_keys.pop(int(index), None) is None:
            return {"status": ES.INDEX_OUT_OF_RANGE}
        return {"status": ES.SUCCESS}

    def _cmd_importTransientKey(
        self, eui64: bt.EUI64, plaintext_key: bt.KeyData, flags: int
    ) -> dict[str, Any]:
        self.transient_keys[eui64] = plaintext_key
        return {"status": SL.OK}

    # ================================================================== tables
    def _cmd_getChildData(self, index: int) -> dict[str, Any]:
        child = self.nvm.children.get(int(index))
        if child is None:
            empty = bt.EmberChildDataV10(
                eui64=ZERO_EUI64,
                type=bt.EmberNodeType.UNKNOWN_DEVICE,
                id=0xFFFF,
                phy=0,
                power=0,
                timeout=0,
                timeout_remaining=0,
            )
            return {"status": ES.NOT_JOINED, "child_data": empty}
        eui, nwk, node_type, _flags = child
        data = bt.EmberChildDataV10(
            eui64=eui, type=node_type, id=nwk, phy=0, power=0, timeout=8, timeout_remaining=0
        )
        return {"status": ES.SUCCESS, "child_data": data}

    def _cmd_setChildData(self, index: int, child_data: bt.EmberChildDataV10) -> dict[str, Any]:
        if not 0 <= int(index) < self.config.get("CONFIG_MAX_END_DEVICE_CHILDREN", CHILD_TABLE_SIZE):
            return {"status": ES.INDEX_OUT_OF_RANGE}
        # the SDK bug bellows works around: the NVM flag byte is written as 0x00 instead of 0x80
        self.nvm.children[int(index)] = (child_data.eui64, int(child_data.id), int(child_data.type), 0x00)
        return {"status": ES.SUCCESS}

    def _cmd_getAddressTableRemoteNodeId(self, addressTableIndex: int) -> dict[str, Any]:
        entry = self.address_table.get(int(addressTableIndex))
        return {"nodeId": entry[1] if entry else UNUSED_NODE_ID}

    def _cmd_getAddressTableRemoteEui64(self, addressTableIndex: int) -> dict[str, Any]:
        entry = self.address_table.get(int(addressTableIndex))
        return {"eui64": entry[0] if entry else ZERO_EUI64}

    def _cmd_replaceAddressTableEntry(
        self, addressTableIndex: int, newEui64: bt.EUI64, newId: int, newExtendedTimeout: bool
    ) -> dict[str, Any]:
        index = int(addressTableIndex)
        if not 0 <= index < self.config["CONFIG_ADDRESS_TABLE_SIZE"]:
            return {
                "status": ES.ADDRESS_TABLE_INDEX_OUT_OF_RANGE,
                "oldEui64": ZERO_EUI64,
                "oldId": UNUSED_NODE_ID,
                "oldExtendedTimeout": False,
            }
        old_eui, old_id = self.address_table.get(index, (ZERO_EUI64, UNUSED_NODE_ID))
        old_ext = self.extended_timeouts.get(old_eui, False)
        self.address_table[index] = (newEui64, int(newId))
        self.extended_timeouts[newEui64] = bool(newExtendedTimeout)
        self.known_nodes[newEui64] = int(newId)
        return {"status": ES.SUCCESS, "oldEui64": old_eui, "oldId": old_id, "oldExtendedTimeout": old_ext}

    def _cmd_lookupNodeIdByEui64(self, eui64: bt.EUI64) -> dict[str, Any]:
        nwk = self.known_nodes.get(eui64)
        if nwk is None:
            nwk = next((c[1] for c in self.nvm.children.values() if c[0] == eui64), UNUSED_NODE_ID)
        return {"nodeId": nwk}

    def _cmd_setExtendedTimeout(self, remoteEui64: bt.EUI64, extendedTimeout: bool) -> dict[str, Any]:
        self.extended_timeouts[remoteEui64] = bool(extendedTimeout)
        return {}

    def _cmd_getExtendedTimeout(self, remoteEui64: bt.EUI64) -> dict[str, Any]:
        return {"extendedTimeout": self.extended_timeouts.get(remoteEui64, False)}

    def _cmd_lookupEui64ByNodeId(self, nodeId: int) -> dict[str, Any]:
        eui = next((e for e, n in self.known_nodes.items() if n == int(nodeId)), None)
        if eui is None:
            eui = next((c[0] for c in self.nvm.children.values() if c[1] == int(nodeId)), None)
        if eui is None:
            return {"status": ES.ERR_FATAL, "eui64": ZERO_EUI64}
        return {"status": ES.SUCCESS, "eui64": eui}

    def _cmd_setMulticastTableEntry(self, index: int, value: bt.EmberMulticastTableEntry) -> dict[str, Any]:
        if not 0 <= int(index) < self.config["CONFIG_MULTICAST_TABLE_SIZE"]:
            return {"status": ES.INDEX_OUT_OF_RANGE}
        self.multicast[int(index)] = value
        return {"status": ES.SUCCESS}

    def _cmd_getMulticastTableEntry(self, index: int) -> dict[str, Any]:
        entry = self.multicast.get(int(index)) or bt.EmberMulticastTableEntry(
            multicastId=0, endpoint=0, networkIndex=0
        )
        return {"status": ES.SUCCESS, "value": entry}

    def _cmd_setSourceRoute(self, destination: int, relayList: list[int]) -> dict[str, Any]:
        self.source_routes[int(destination)] = [int(r) for r in relayList]
        return {"status": ES.SUCCESS}

    def _cmd_gpSinkTableClearAll(self) -> dict[str, Any]:
        return {}

    def _cmd_gpProxyTableLookup(self, addr: Any) -> dict[str, Any]:
        return {"index": 0xFF}

    # ================================================================== messaging
    def _next_aps(self) -> int:
        self.aps_seq = (self.aps_seq + 1) & 0xFF
        return self.aps_seq

    def _cmd_sendUnicast(
        self,
        type: int,
        indexOrDestination: int,
        apsFrame: bt.EmberApsFrame,
        messageTag: int,
        messageContents: bytes,
    ) -> dict[str, Any]:
        if not self.network_up:
            return {"status": ES.NETWORK_DOWN, "sequence": 0}
        seq = self._next_aps()
        frame = apsFrame.replace(sequence=seq)
        dest = int(indexOrDestination)
        delivered = self.air is not None and self.air.unicast(self, dest, frame, bytes(messageContents))
        status = ES.SUCCESS if delivered else ES.DELIVERY_FAILED
        self._after_response(
            "messageSentHandler",
            type=type,
            indexOrDestination=dest,
            apsFrame=frame,
            messageTag=messageTag,
            status=status,
            messageContents=b"",
        )
        return {"status": ES.SUCCESS, "sequence": seq}

    def _cmd_sendBroadcast(
        self,
        destination: int,
        apsFrame: bt.EmberApsFrame,
        radius: int,
        messageTag: int,
        messageContents: bytes,
    ) -> dict[str, Any]:
        if not self.network_up:
            return {"status": ES.NETWORK_DOWN, "sequence": 0}
        if int(destination) not in BROADCASTS:
            return {
                "status": ES.BAD_ARGUMENT,
                "sequence": 0,
            }
        seq = self._next_aps()
        frame = apsFrame.replace(sequence=seq)
        if self.air is not None:
            self.air.broadcast(self, int(destination), frame, bytes(messageContents))
        self._after_response(
            "messageSentHandler",
            type=bt.EmberOutgoingMessageType.OUTGOING_BROADCAST,
            indexOrDestination=int(destination),
            apsFrame=frame,
            messageTag=messageTag,
            status=ES.SUCCESS,
            messageContents=b"",
        )
        return {"status": ES.SUCCESS, "sequence": seq}

    def _cmd_sendMulticast(
        self,
        apsFrame: bt.EmberApsFrame,
        hops: int,
        nonmemberRadius: int,
        messageTag: int,
        messageContents: bytes,
    ) -> dict[str, Any]:
        if not self.network_up:
            return {"status": ES.NETWORK_DOWN, "sequence": 0}
        seq = self._next_aps()
        frame = apsFrame.replace(sequence=seq)
        if self.air is not None:
            self.air.multicast(self, frame, bytes(messageContents))
        self._after_response(
            "messageSentHandler",
            type=bt.EmberOutgoingMessageType.OUTGOING_MULTICAST,
            indexOrDestination=int(apsFrame.groupId),
            apsFrame=frame,
            messageTag=messageTag,
            status=ES.SUCCESS,
            messageContents=b"",
        )
        return {"status": ES.SUCCESS, "sequence": seq}

    # ================================================================== events from the air
    def incoming(
        self,
        sender: int,
        aps: bt.EmberApsFrame,
        payload: bytes,
        *,
        broadcast: bool = False,
        relays: list[int] | None = None,
        sender_eui64: bt.EUI64 | None = None,
        lqi: int = 255,
        rssi: int = -45,
    ) -> None:
        """A frame for us arrived over the air (already decrypted: same network key)."""
        if sender_eui64 is not None:
            self.known_nodes[sender_eui64] = sender
        if relays and sender_eui64 is not None:
            self.callback(
                "incomingRouteRecordHandler",
                source=sender,
                sourceEui=sender_eui64,
                lastHopLqi=lqi,
                lastHopRssi=rssi,
                relayList=relays,
            )
        kind = bt.EmberIncomingMessageType
        self.callback(
            "incomingMessageHandler",
            type=kind.INCOMING_BROADCAST if broadcast else kind.INCOMING_UNICAST,
            apsFrame=aps,
            lastHopLqi=lqi,
            lastHopRssi=rssi,
            sender=sender,
            bindingIndex=0xFF,
            addressIndex=0xFF,
            messageContents=payload,
        )

    def device_joined(self, nwk: int, eui64: bt.EUI64, *, end_device: bool) -> None:
        """Trust Centre side of a join: the TC join callback, plus the child join callback for our children."""
        self.known_nodes[eui64] = nwk
        self.callback(
            "trustCenterJoinHandler",
            newNodeId=nwk,
            newNodeEui64=eui64,
            status=bt.EmberDeviceUpdate.STANDARD_SECURITY_UNSECURED_JOIN,
            policyDecision=bt.EmberJoinDecision.USE_PRECONFIGURED_KEY,
            parentOfNewNodeId=0x0000,
        )
        if end_device:
            index = next(i for i in range(CHILD_TABLE_SIZE) if i not in self.nvm.children)
            node_type = bt.EmberNodeType.SLEEPY_END_DEVICE
            self.nvm.children[index] = (eui64, nwk, int(node_type), 0x80)
            self.callback(
                "childJoinHandler",
                index=index,
                joining=True,
                childId=nwk,
                childEui64=eui64,
                childType=node_type,
            )

    def device_left(self, nwk: int, eui64: bt.EUI64) -> None:
        self.callback(
            "trustCenterJoinHandler",
            newNodeId=nwk,
            newNodeEui64=eui64,
            status=bt.EmberDeviceUpdate.DEVICE_LEFT,
            policyDecision=bt.EmberJoinDecision.NO_ACTION,
            parentOfNewNodeId=0x0000,
        )

    def zt_eui64(self) -> zt.EUI64:
        return zt.EUI64(self.eui64)

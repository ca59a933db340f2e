"""Operational DNS-SD advertising of the provider node (Core spec 4.3.1) with `zeroconf`.

For every fabric the node is on: instance `<CFID 16 HEX>-<NODEID 16 HEX>._matter._tcp.local.` with subtype
`_I<CFID 16 HEX>._sub._matter._tcp.local.`, SRV to a host name of ours, AAAA/A records with the addresses of the
configured interfaces only, and TXT SII/SAI/SAT/T. Withdrawn (goodbye packets) on close.

One Zeroconf instance refuses to register the same instance name a second time under the subtype, and its
registry only answers PTR questions for a service's own type, so the subtype is served by a second Zeroconf
instance on the same interfaces that cooperates with the first (identical SRV/TXT answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

__all__ = ["MATTER_OPERATIONAL_TYPE", "OperationalAdvertiser", "OperationalName", "interface_addresses"]

log = logging.getLogger(__name__)

MATTER_OPERATIONAL_TYPE = "_matter._tcp.local."


@dataclass(frozen=True)
class OperationalName:
    """What identifies the node on one fabric."""

    compressed_fabric_id: int
    node_id: int

    @property
    def instance(self) -> str:
        return f"{self.compressed_fabric_id:016X}-{self.node_id:016X}"

    @property
    def subtype(self) -> str:
        return f"_I{self.compressed_fabric_id:016X}._sub.{MATTER_OPERATIONAL_TYPE}"


@dataclass(frozen=True)
class MrpTxt:
    """TXT values (ms) the controller uses for its retransmissions towards us."""

    idle_ms: int = 500
    active_ms: int = 300
    active_threshold_ms: int = 4000


def interface_addresses(interfaces: Sequence[str] | None) -> list[tuple[str, int]]:
    """(address, interface index) of the named interfaces (all non-loopback ones if None)."""
    out: list[tuple[str, int]] = []
    for adapter in ifaddr.get_adapters():
        if interfaces is not None and adapter.name not in interfaces and adapter.nice_name not in interfaces:
            continue
        for ip in adapter.ips:
            addr = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if interfaces is None and ipaddress.ip_address(addr).is_loopback:
                continue
            out.append((addr, int(adapter.index or 0)))
    return out


class OperationalAdvertiser:
    """Publishes and withdraws the node's operational records."""

    def __init__(
        self,
        port: int,
        interfaces: Sequence[str] | None = None,
        *,
        mrp: MrpTxt | None = None,
        hostname: str | None = None,
        tcp_supported: bool = False,
    ) -> None:
        self.port = port
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.mrp = mrp or MrpTxt()
        self.tcp_supported = tcp_supported
        self._hostname = hostname
        self._zc: AsyncZeroconf | None = None
        self._zc_sub: AsyncZeroconf | None = None
        self._infos: dict[OperationalName, tuple[ServiceInfo, ServiceInfo | None]] = {}
        self._addresses: list[tuple[str, int]] = []

    def _txt(self) -> dict[str, str]:
        return {
            "SII": str(self.mrp.idle_ms),
            "SAI": str(self.mrp.active_ms),
            "SAT": str(self.mrp.active_threshold_ms),
            "T": "1" if self.tcp_supported else "0",
        }

    async def start(self) -> None:
        self._addresses = interface_addresses(self.interfaces)
        if not self._addresses:
            raise OSError(f"no addresses on interfaces {self.interfaces}")
        has4 = any(ipaddress.ip_address(a).version == 4 for a, _ in self._addresses)
        has6 = any(ipaddress.ip_address(a).version == 6 for a, _ in self._addresses)
        ipv = IPVersion.All if has4 and has6 else IPVersion.V6Only if has6 else IPVersion.V4Only
        # zeroconf wants IPv4 addresses, and interface indexes for IPv6 multicast membership
        zc_ifaces: list[str | int] = []
        for a, index in self._addresses:
            item: str | int = a if ipaddress.ip_address(a).version == 4 else index
            if item not in zc_ifaces:
                zc_ifaces.append(item)
        self._zc = AsyncZeroconf(interfaces=zc_ifaces, ip_version=ipv)
        self._zc_sub = AsyncZeroconf(interfaces=zc_ifaces, ip_version=ipv)
        if self._hostname is None:
            self._hostname = f"{abs(hash((socket.gethostname(), self.port))) & 0xFFFFFFFFFFFF:012X}"

    def _service_info(self, name: OperationalName, type_: str) -> ServiceInfo:
        # AAAA/A records carry bare addresses; receivers scope link-local ones to the interface they heard us on
        addrs = list(dict.fromkeys(a for a, _ in self._addresses))
        return ServiceInfo(
            type_,
            f"{name.instance}.{MATTER_OPERATIONAL_TYPE}",
            port=self.port,
            properties=self._txt(),
            server=f"{self._hostname}.local.",
            parsed_addresses=addrs,
        )

    async def advertise(self, name: OperationalName) -> None:
        """Publish one operational instance (idempotent)."""
        if self._zc is None or self._zc_sub is None:
            raise RuntimeError("advertiser not started")
        if name in self._infos:
            return
        info = self._service_info(name, MATTER_OPERATIONAL_TYPE)
        await self._zc.async_register_service(info, cooperating_responders=True)
        sub: ServiceInfo | None = self._service_info(name, name.subtype)
        try:
            await self._zc_sub.async_register_service(sub, cooperating_responders=True)  # type: ignore[arg-type]
        except Exception as exc:  # the base record is what resolution needs; the subtype only helps browsing
            log.warning("matter: could not publish subtype %s: %s", name.subtype, exc)
            sub = None
        self._infos[name] = (info, sub)
        log.info(
            "matter: advertising %s on %s port %d",
            name.instance,
            ", ".join(a for a, _ in self._addresses),
            self.port,
        )

    async def withdraw(self, name: OperationalName) -> None:
        entry = self._infos.pop(name, None)
        if entry is None or self._zc is None or self._zc_sub is None:
            return
        info, sub = entry
        await self._zc.async_unregister_service(info)
        if sub is not None:
            await self._zc_sub.async_unregister_service(sub)

    async def close(self) -> None:
        for name in list(self._infos):
            await self.withdraw(name)
        for zc in (self._zc_sub, self._zc):
            if zc is not None:
                await zc.async_close()
        self._zc = self._zc_sub = None
        await asyncio.sleep(0)

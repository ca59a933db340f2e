"""The thin asyncio UDP layer of the Matter node: one dual-stack datagram socket, datagrams in, datagrams out.

Binds `::` with IPV6_V6ONLY=0 so IPv4 peers arrive as IPv4-mapped addresses on the same socket; falls back to
an IPv4-only socket where IPv6 is unavailable. Peer addresses are the socket-level tuples, used as opaque keys.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DATAGRAM", "UdpTransport", "open_udp"]

log = logging.getLogger(__name__)

MAX_DATAGRAM = 1280  # IPv6 minimum MTU: Matter messages over UDP must fit (spec 4.4.4)

Receiver = Callable[[bytes, Any], None]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._receiver(data, addr)
        except Exception:  # never let one datagram kill the endpoint
            log.exception("matter: error handling datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("matter: UDP error: %s", exc)


class UdpTransport:
    """An open endpoint: `send(datagram, addr)`, `close()`, and the bound `port`."""

    def __init__(self, transport: asyncio.DatagramTransport, family: int) -> None:
        self._transport = transport
        self.family = family

    @property
    def port(self) -> int:
        return int(self._transport.get_extra_info("sockname")[1])

    def send(self, datagram: bytes, addr: Any) -> None:
        if len(datagram) > MAX_DATAGRAM:
            log.warning("matter: %d-byte datagram exceeds %d", len(datagram), MAX_DATAGRAM)
        if self.family == socket.AF_INET6 and len(addr) == 2 and ":" not in addr[0]:
            addr = ("::ffff:" + addr[0], addr[1], 0, 0)  # IPv4 peer on the dual-stack socket
        self._transport.sendto(datagram, addr)

    def close(self) -> None:
        self._transport.close()


async def open_udp(receiver: Receiver, port: int = 5540, host: str = "::") -> UdpTransport:
    """Bind the node's socket (dual stack on `::`) and deliver every datagram to `receiver(data, addr)`."""
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = None
    family = socket.AF_INET6
    if ":" in host and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            if host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
        except OSError as exc:
            if sock is not None:
                sock.close()
            sock = None
            if host != "::":
                raise
            log.info("matter: IPv6 unavailable (%s); using IPv4 only", exc)
    if sock is None:
        family = socket.AF_INET
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0" if host == "::" else host, port))
    sock.setblocking(False)
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(receiver), sock=sock)
    return UdpTransport(transport, family)

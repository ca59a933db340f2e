"""Parse the device address a user gives to `otagw matter commission --ip ADDR [--port N]`.

Accepted: `ADDR` (IPv4 or IPv6, an IPv6 scope such as `fe80::1%eth0` allowed), `[IPv6]:PORT`, `IPv4:PORT`, each
optionally with `--port N`; a port given both ways must agree. Errors name the bad part (UserError-friendly
ValueError text).
"""

from __future__ import annotations

import ipaddress

__all__ = ["MATTER_PORT", "parse_device_address"]

MATTER_PORT = 5540


def _port(text: str, where: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise ValueError(f"{where}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{where}: port {port} is outside 1..65535")
    return port


def _host(text: str, where: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an IPv4 or IPv6 address") from None
    return text


def parse_device_address(ip: str, port: int | None = None) -> tuple[str, int]:
    """(address, port) from `--ip` text and an optional `--port`; ValueError naming what is wrong."""
    text = ip.strip()
    in_text: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"--ip {ip!r}: missing ']' after the IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"--ip {ip!r}: expected ':PORT' after ']', got {rest!r}")
            in_text = _port(rest[1:], f"--ip {ip!r}")
        host = _host(host, f"--ip {ip!r}")
    elif text.count(":") == 1:  # IPv4:PORT (a bare IPv6 address has at least two colons)
        host, _, p = text.partition(":")
        in_text = _port(p, f"--ip {ip!r}")
        host = _host(host, f"--ip {ip!r}")
    else:
        host = _host(text, f"--ip {ip!r}")
    if port is not None:
        port = _port(str(port), "--port")
        if in_text is not None and in_text != port:
            raise ValueError(f"--ip {ip!r} says port {in_text} but --port says {port}")
    return host, (port if port is not None else in_text if in_text is not None else MATTER_PORT)

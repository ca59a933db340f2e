"""Two network namespaces joined by a veth pair, for Matter peers that must not share loopback (mDNS + UDP on
addresses we create; the chip SDK's minimal mDNS skips loopback).

Each side: `lo` up, the veth end up with multicast, DAD off, and an IPv6 ULA (fd00::/8, `nodad`) of our own; the
host's interfaces are never touched. `NetnsPair.enter(side)` moves the *calling thread* into a namespace (setns) and
back, so sockets created inside the block bind there. `netns_unavailable_reason()` says why pairs cannot be made
(not root, no iproute2). Deleting a namespace deletes its veth end: `delete_pair` / `netns_pair()` clean up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def netns_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.decode(errors='replace').strip()}"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class NetnsSide:
    netns: str
    iface: str
    address: str


@dataclass
class NetnsPair:
    a: NetnsSide
    b: NetnsSide

    @contextlib.contextmanager
    def enter(self, side: NetnsSide) -> Iterator[None]:
        """Run the calling thread inside `side.netns` for the duration of the block."""
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{side.netns}") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())


def create_pair(label: str = "m1") -> NetnsPair:
    """Create namespaces `otagw-<label>-<tag>-a|b` with a veth between them; on failure nothing is left behind."""
    tag = secrets.token_hex(3)
    prefix = f"fd00:6f74:{secrets.randbelow(0xFFFF):x}::"
    a = NetnsSide(f"otagw-{label}-{tag}-a", f"otA{tag}", prefix + "1")
    b = NetnsSide(f"otagw-{label}-{tag}-b", f"otB{tag}", prefix + "2")
    created: list[str] = []
    try:
        for side in (a, b):
            _run("ip", "netns", "add", side.netns)
            created.append(side.netns)
        _run(
            "ip",
            "link",
            "add",
            a.iface,
            "netns",
            a.netns,
            "type",
            "veth",
            "peer",
            "name",
            b.iface,
            "netns",
            b.netns,
        )
        for side in (a, b):
            ns = ("ip", "netns", "exec", side.netns)
            _run(*ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
            _run(*ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
            _run(*ns, "sysctl", "-qw", f"net.ipv6.conf.{side.iface}.accept_dad=0")
            _run("ip", "-n", side.netns, "link", "set", "lo", "up")
            _run("ip", "-n", side.netns, "link", "set", side.iface, "up", "multicast", "on")
            _run("ip", "-n", side.netns, "addr", "add", f"{side.address}/64", "dev", side.iface, "nodad")
    except BaseException:  # also Ctrl-C half-way: never leave a namespace behind
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        raise
    return NetnsPair(a, b)


def delete_pair(pair: NetnsPair) -> None:
    for side in (pair.a, pair.b):
        subprocess.run(["ip", "netns", "del", side.netns], capture_output=True, check=False)


@contextlib.contextmanager
def netns_pair(label: str = "m1") -> Iterator[NetnsPair]:
    """A pair for the duration of the block, deleted afterwards (also on exceptions and KeyboardInterrupt)."""
    pair = create_pair(label)
    try:
        yield pair
    finally:
        delete_pair(pair)

"""The gateway's fabric administration: the chip SDK controller (M2's worker + our admin_ops) behind an async API,
the provider node's identity on that fabric, and the list of nodes we commissioned.

Layout under the Matter state dir (`<data_dir>/matter/`, 0700):
  fabric-admin/controller/   the SDK's storage (CA keys in plaintext: owner-only, private /data of the worker)
  fabric-admin/lock          flock held while a process drives the fabric (one SDK writer at a time)
  credentials/               the provider node's key + NOC chain (M2's identity.py, minted on this fabric)
  nodes.json                 commissioned nodes: id, identity, versions, when (0600, atomic writes)

`FabricAdmin(matter_dir, config, netns=None)`; `await start()` (creates or loads the fabric; raises
`FabricBusyError` when another process holds the lock), then `ensure_identity()`, `commission(code, ip=)`,
`node_info(node)`, `set_provider(node)`, `announce(node)`, `subscribe(node)`, `poll_events()`, `close()`.
Every call runs the synchronous runner in a thread; calls are serialised (one JSON-lines pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters.matter.fabric.address import parse_device_address
from adapters.matter.fabric.controller import ControllerError, ControllerRunner
from adapters.matter.fabric.identity import ensure_identity
from gateway.config import MatterConfig
from gateway.sources.paa import attestation_hint

# worker ops that only read a node or send it a command: safe to run side by side
CONCURRENT_OPS = frozenset({"node_info", "announce", "poll_events", "read_attribute", "fabric_info"})

__all__ = ["CONCURRENT_OPS", "FabricAdmin", "FabricBusyError", "NodeEntry", "load_nodes", "matter_dir"]

OPS_MODULE = "adapters.matter.fabric.admin_ops"
FIRST_NODE_ID = 0x0000_0000_0000_1001


class FabricBusyError(ControllerError):
    """Another process (a running gateway, another CLI command) is driving the fabric right now."""


def matter_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "matter"


@dataclass
class NodeEntry:
    """One node we commissioned (nodes.json)."""

    node_id: int
    commissioned_at: float
    vendor_id: int | None = None
    product_id: int | None = None
    vendor_name: str | None = None
    product_name: str | None = None
    software_version: int | None = None
    software_version_string: str | None = None
    hardware_version: int | None = None
    has_requestor: bool | None = None
    default_provider: int | None = None
    updated_at: float | None = None
    update_state: int | None = None
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_nodes(mdir: Path) -> dict[int, NodeEntry]:
    path = mdir / "nodes.json"
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {int(n["node_id"]): NodeEntry(**n) for n in raw.get("nodes", [])}


def _save_nodes(mdir: Path, nodes: dict[int, NodeEntry]) -> None:
    path = mdir / "nodes.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"nodes": [asdict(n) for n in sorted(nodes.values(), key=lambda n: n.node_id)]}, f, indent=1
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Borrowed:
    """Lends a started runner to identity.ensure_identity without letting it close the runner."""

    def __init__(self, runner: ControllerRunner) -> None:
        self.runner = runner

    def __enter__(self) -> ControllerRunner:
        return self.runner

    def __exit__(self, *exc: object) -> None:
        return None


class FabricAdmin:
    """See the module docstring."""

    def __init__(
        self,
        mdir: str | os.PathLike[str],
        config: MatterConfig | None = None,
        *,
        netns: str | None = None,
        timeout_s: float = 90.0,
    ) -> None:
        self.dir = Path(mdir)
        self.config = config or MatterConfig()
        self.netns = netns
        self.runner = ControllerRunner(
            self.dir / "fabric-admin", netns=netns, ops_module=OPS_MODULE, timeout_s=timeout_s
        )
        self.info: dict[str, Any] = {}
        self.nodes: dict[int, NodeEntry] = {}
        self._lock_fd: int | None = None
        self._call_lock = asyncio.Lock()

    # ------------------------------------------------------------------------------------------ lifecycle
    def _take_lock(self) -> None:
        for d in (self.dir, self.dir / "fabric-admin"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        fd = os.open(self.dir / "fabric-admin" / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FabricBusyError(
                f"{self.dir / 'fabric-admin'}: the fabric is in use by another otagw process (a running gateway?)"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def paa_store(self) -> Path:
        """The PAA trust store: `matter.paa_trust_store`, else an empty owner-only dir (no device attests)."""
        if self.config.paa_trust_store is not None:
            return Path(self.config.paa_trust_store)
        store = self.dir / "fabric-admin" / "controller" / "paa"
        return store

    def _start_sync(self) -> dict[str, Any]:
        self._take_lock()
        try:
            self.runner.start()
            paa = self.paa_store()
            self.info = self.runner.init_fabric(
                fabric_id=self.config.fabric_id,
                vendor_id=self.config.vendor_id,
                controller_node_id=self.config.controller_node_id,
                paa_trust_store=str(paa) if self.config.paa_trust_store is not None else None,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.runner.close()
            self._release_lock()
            raise
        self.nodes = load_nodes(self.dir)
        return self.info

    async def start(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._start_sync)

    async def close(self) -> None:
        await asyncio.to_thread(self.runner.close)
        self._release_lock()

    async def __aenter__(self) -> FabricAdmin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, op: str, _timeout: float | None = None, **args: Any) -> Any:
        """One worker op. Reads and announces run concurrently (the worker runs each request as its own task, so
        ten rebooted nodes are read back at once); ops that change the controller's state go one at a time."""
        if op in CONCURRENT_OPS:
            return await asyncio.to_thread(self.runner.call, op, _timeout, **args)
        async with self._call_lock:
            return await asyncio.to_thread(self.runner.call, op, _timeout, **args)

    @property
    def compressed_fabric_id(self) -> int:
        return int(self.info["compressed_fabric_id"])

    # ------------------------------------------------------------------------------------------ identity
    async def ensure_identity(self, node_id: int | None = None) -> Any:
        """The provider node's OperationalCredentials on this fabric (minted by this controller on first use)."""
        nid = node_id or self.config.node_id

        def run() -> Any:
            return ensure_identity(
                self.dir,
                nid,
                fabric_id=self.config.fabric_id,
                vendor_id=self.config.vendor_id,
                runner_factory=lambda _d: _Borrowed(self.runner),
            )

        async with self._call_lock:
            return await asyncio.to_thread(run)

    # ------------------------------------------------------------------------------------------ nodes
    def next_node_id(self) -> int:
        return max([FIRST_NODE_ID - 1, *self.nodes]) + 1

    async def commission(
        self,
        code: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        node_id: int | None = None,
        timeout_s: float = 60.0,
    ) -> NodeEntry:
        """Commission onto our fabric: by mDNS, or at `ip` (`ADDR`, `[v6]:PORT`, `v4:PORT`) and `port`."""
        nid = node_id or self.next_node_id()
        where: dict[str, Any] = {}
        if ip:
            where["ip"], where["port"] = parse_device_address(ip, port)
        try:
            got = await self.call(
                "commission", _timeout=timeout_s + 60, code=code, node_id=nid, timeout_s=timeout_s, **where
            )
        except ControllerError as exc:
            if "attestation" not in str(exc).lower():
                raise
            raise ControllerError(f"{exc}: {attestation_hint(self.config.paa_trust_store)}") from None
        nid = int(got["node_id"])
        entry = self.nodes.get(nid) or NodeEntry(nid, time.time())
        self.nodes[nid] = entry
        _save_nodes(self.dir, self.nodes)
        return entry

    async def node_info(
        self, node_id: int, timeout_ms: int | None = None, *, fresh_session: bool = False
    ) -> dict[str, Any]:
        info: dict[str, Any] = await self.call(
            "node_info", node_id=node_id, timeout_ms=timeout_ms, fresh_session=fresh_session
        )
        b = info.get("basic", {})
        e = self.nodes.get(node_id)
        if e is not None:
            e.vendor_id, e.product_id = b.get("VendorID"), b.get("ProductID")
            e.vendor_name, e.product_name = b.get("VendorName"), b.get("ProductName")
            e.software_version, e.software_version_string = (
                b.get("SoftwareVersion"),
                b.get("SoftwareVersionString"),
            )
            e.hardware_version, e.has_requestor = b.get("HardwareVersion"), bool(info.get("has_requestor"))
            e.update_state = info.get("requestor", {}).get("UpdateState")
            e.updated_at = time.time()
            _save_nodes(self.dir, self.nodes)
        return info

    async def set_provider(self, node_id: int, provider_node_id: int | None = None) -> list[Any]:
        pid = provider_node_id or self.config.node_id
        got: list[Any] = await self.call("set_provider", node_id=node_id, provider_node_id=pid)
        e = self.nodes.get(node_id)
        if e is not None:
            e.default_provider = pid
            _save_nodes(self.dir, self.nodes)
        return got

    async def announce(self, node_id: int, *, reason: int = 1, provider_node_id: int | None = None) -> None:
        await self.call(
            "announce",
            node_id=node_id,
            provider_node_id=provider_node_id or self.config.node_id,
            vendor_id=self.config.vendor_id,
            reason=reason,
        )

    async def subscribe(self, node_id: int, min_s: int = 0, max_s: int = 60) -> None:
        await self.call("subscribe", node_id=node_id, min_s=min_s, max_s=max_s)

    async def poll_events(self) -> list[dict[str, Any]]:
        got = await self.call("poll_events")
        return list(got.get("events", []))

    def save_nodes(self) -> None:
        _save_nodes(self.dir, self.nodes)

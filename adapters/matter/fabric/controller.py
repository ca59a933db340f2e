"""The chip SDK controller (fabric admin) in an isolated worker process, driven over JSON lines.

Why a subprocess: the SDK writes `/data/chip_*.ini` (a fixed path), aborts the process if its stack is not shut
down, and keeps global state. So `ControllerRunner` starts `python -m adapters.matter.fabric.controller --worker`
with a private directory `<data_dir>/controller/` (0700) that holds the SDK's storage JSON (the example issuer's CA
keys in plaintext). How the SDK's `/data` is provided is chosen per host by `datadir.choose_plan` and logged: a
private mount namespace (root), `/data` itself when it is ours (the Docker image's volume), or an unprivileged user
+ mount namespace (a plain user); see `adapters.matter.fabric.datadir`. `isolation="private"` insists on a private
`/data` (tests running several controllers at once). The worker runs with umask 077 so every file it creates is
owner-only. Optionally the worker runs in a network namespace (`netns=`, via `ip netns exec`, root only).

Parent API (synchronous; wrap in `asyncio.to_thread` from async code):

    with ControllerRunner(data_dir, netns=None) as ctl:
        info = ctl.init_fabric(fabric_id=1, vendor_id=0xFFF1, controller_node_id=112233)
        chain = ctl.issue_noc_chain(csr_der, node_id)          # NOCChain(noc, icac, rcac, ipk_epoch_key)
        der = ctl.chip_to_x509(tlv_cert); tlv_cert = ctl.x509_to_chip(der)
        ctl.establish_case(node_id, timeout_ms=20000)          # operational discovery + CASE to a node
        ctl.read_attribute(node_id, 0, "BasicInformation", "VendorID")
        ctl.invoke(node_id, 0, "OtaSoftwareUpdateProvider", "QueryImage", {...})
        ctl.call("any_op", **args)                             # raw access, incl. ops from --ops-module

`call` (and the helpers) may be used from several threads at once (e.g. `asyncio.to_thread`): writes are
serialised by a lock, one caller at a time reads stdout and routes each reply to the caller waiting for its id.

Worker protocol: one JSON object per line. Request `{"id": n, "op": name, "args": {...}}`; reply
`{"id": n, "ok": true, "result": ...}` or `{"id": n, "ok": false, "error": message, "type": exception class}`.
The worker runs each request as its own task on its event loop (the SDK's async API runs there), so replies come
in completion order, not request order; a slow op (a read-back to a rebooting node) does not hold up the rest.
`shutdown` cancels the ops still running (their callers get an error reply) before the SDK is shut down.
Bytes travel as hex strings. Ops: `init`, `fabric_info`, `issue_noc`, `chip_to_x509`, `x509_to_chip`,
`establish_case`, `read_attribute`, `invoke`, `shutdown`. `ops_module="pkg.mod"` loads extra ops from
`pkg.mod.OPS: dict[str, Callable[[WorkerState, dict], Any | Awaitable[Any]]]`. The worker always shuts the
controller, CA manager and stack down before exiting (also when stdin closes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.matter.fabric.datadir import (
    DataDirUnavailable,
    DataPlan,
    Isolation,
    choose_plan,
    enter_private_data,
)

__all__ = [
    "ControllerError",
    "ControllerRunner",
    "NOCChain",
    "runner_unavailable_reason",
]

_REPO_ROOT = Path(__file__).resolve().parents[3]
_log = logging.getLogger(__name__)


class ControllerError(RuntimeError):
    """The worker failed an operation, died, or could not be started."""


@dataclass(frozen=True)
class NOCChain:
    """An operational certificate chain minted by the fabric's issuer (Matter TLV certificates)."""

    noc: bytes
    icac: bytes | None
    rcac: bytes
    ipk_epoch_key: bytes
    fabric_id: int
    vendor_id: int


def runner_unavailable_reason(isolation: Isolation = "auto") -> str | None:
    """None when ControllerRunner can work here, else a human-readable reason (adapter start, pytest skips)."""
    # Checked without importing the SDK here: its native library is large and belongs in the worker only.
    import ctypes.util
    import importlib.util

    if importlib.util.find_spec("chip") is None:
        return "chip SDK (home-assistant-chip-core) not installed"
    for lib in ("nl-3", "nl-route-3"):
        if ctypes.util.find_library(lib) is None:
            return f"lib{lib} missing (apt-get install -y libnl-3-200 libnl-route-3-200)"
    try:
        choose_plan(isolation)
    except DataDirUnavailable as exc:
        return str(exc)
    return None


class ControllerRunner:
    """Owns one worker process; see the module docstring."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        netns: str | None = None,
        ops_module: str | None = None,
        timeout_s: float = 60.0,
        python: str = sys.executable,
        isolation: Isolation = "auto",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.private_dir = self.data_dir / "controller"
        self.netns = netns
        self.ops_module = ops_module
        self.timeout_s = timeout_s
        self.python = python
        self.isolation: Isolation = isolation
        self.plan: DataPlan | None = None  # how the worker got its /data (set by start)
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._buf = b""
        self._write_lock = threading.Lock()  # request ids and whole request lines
        self._cond = threading.Condition()  # guards the reply router below
        self._waiting: set[int] = set()  # ids whose callers still wait (late replies to others are dropped)
        self._replies: dict[int, dict[str, Any]] = {}
        self._reading = False  # one caller at a time reads stdout, for everybody
        self._exit: str | None = None  # set once stdout hit EOF: why every waiter fails

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._proc is not None:
            return
        reason = runner_unavailable_reason(self.isolation)
        if reason:
            raise ControllerError(f"cannot start the chip controller worker: {reason}")
        self.plan = choose_plan(self.isolation)
        _log.info("matter controller worker: /data mode %s (%s)", self.plan.mode, self.plan.reason)
        for d in (self.data_dir, self.private_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        cmd: list[str] = []
        if self.netns:
            cmd += ["ip", "netns", "exec", self.netns]
        cmd += [
            self.python,
            "-m",
            "adapters.matter.fabric.controller",
            "--worker",
            "--data-mode",
            self.plan.mode,
            "--private-dir",
            str(self.private_dir.resolve()),
        ]
        if self.ops_module:
            cmd += ["--ops-module", self.ops_module]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        log = open(self.private_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        os.chmod(self.private_dir / "worker.log", 0o600)
        try:
            self._buf, self._replies, self._exit = b"", {}, None
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=str(_REPO_ROOT),
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        self.call("ping")

    def close(self) -> None:
        """Shut the SDK down cleanly (shutdown op), then reap the worker; kill its process group on timeout."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._proc = proc
                with contextlib.suppress(ControllerError):
                    self.call("shutdown", _timeout=30.0)
                self._proc = None
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    stream.close()

    def __enter__(self) -> ControllerRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- calls

    def call(self, op: str, _timeout: float | None = None, **args: Any) -> Any:
        """Run one worker op and return its result; ControllerError on failure. Thread-safe."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise ControllerError("worker not started")
        with self._write_lock:
            self._next_id += 1
            rid = self._next_id
            with self._cond:
                self._waiting.add(rid)
            try:
                proc.stdin.write(json.dumps({"id": rid, "op": op, "args": args}).encode() + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):  # ValueError: stdin already closed
                with self._cond:
                    self._waiting.discard(rid)
                raise ControllerError(
                    f"worker died (exit {proc.poll()}); see {self.private_dir / 'worker.log'}"
                ) from None
        deadline = time.monotonic() + (self.timeout_s if _timeout is None else _timeout)
        try:
            reply = self._await_reply(proc, rid, op, deadline)
        finally:
            with self._cond:
                self._waiting.discard(rid)
                self._replies.pop(rid, None)
        if reply.get("ok"):
            return reply.get("result")
        raise ControllerError(f"{op}: {reply.get('type', 'Error')}: {reply.get('error')}")

    def _await_reply(
        self, proc: subprocess.Popen[bytes], rid: int, op: str, deadline: float
    ) -> dict[str, Any]:
        """Wait for reply `rid`: read stdout while no other caller does (routing every reply to its waiter),
        else sleep on the condition until the reader routes ours or gives the reader role up."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            with self._cond:
                while True:
                    if rid in self._replies:
                        return self._replies.pop(rid)
                    if self._exit is not None:
                        raise ControllerError(f"{op}: {self._exit}")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ControllerError(f"{op}: no reply within the timeout")
                    if not self._reading:
                        self._reading = True
                        break
                    self._cond.wait(remaining)
            chunk: bytes | None = None
            try:
                ready, _, _ = select.select([fd], [], [], remaining)
                chunk = os.read(fd, 65536) if ready else None
            finally:
                with self._cond:
                    self._reading = False
                    if chunk == b"":
                        self._exit = (
                            f"worker exited (code {proc.wait()}); see {self.private_dir / 'worker.log'}"
                        )
                    elif chunk:
                        self._route(chunk)
                    self._cond.notify_all()

    def _route(self, chunk: bytes) -> None:
        """File every complete reply line under its id (caller holds `_cond`)."""
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # not ours (defensive: the worker keeps fd 1 for JSON only)
            rid = reply.get("id") if isinstance(reply, dict) else None
            if rid in self._waiting:
                self._replies[rid] = reply

    def init_fabric(
        self,
        *,
        fabric_id: int = 1,
        vendor_id: int = 0xFFF1,
        controller_node_id: int = 112233,
        maximize_cert_chains: bool = False,
        paa_trust_store: str | None = None,
    ) -> dict[str, Any]:
        """Create (first run) or load (later runs) the CA, the fabric admin and the controller."""
        return dict(
            self.call(
                "init",
                fabric_id=fabric_id,
                vendor_id=vendor_id,
                controller_node_id=controller_node_id,
                maximize_cert_chains=maximize_cert_chains,
                paa_trust_store=paa_trust_store,  # None: <storage>/paa as the worker sees it
            )
        )

    def issue_noc_chain(self, csr_der: bytes, node_id: int) -> NOCChain:
        r = self.call("issue_noc", csr_der=csr_der.hex(), node_id=node_id)
        return NOCChain(
            noc=bytes.fromhex(r["noc"]),
            icac=bytes.fromhex(r["icac"]) if r.get("icac") else None,
            rcac=bytes.fromhex(r["rcac"]),
            ipk_epoch_key=bytes.fromhex(r["ipk_epoch_key"]),
            fabric_id=int(r["fabric_id"]),
            vendor_id=int(r["vendor_id"]),
        )

    def chip_to_x509(self, cert: bytes) -> bytes:
        return bytes.fromhex(self.call("chip_to_x509", cert=cert.hex()))

    def x509_to_chip(self, der: bytes) -> bytes:
        return bytes.fromhex(self.call("x509_to_chip", der=der.hex()))

    def establish_case(self, node_id: int, timeout_ms: int = 20000) -> None:
        self.call("establish_case", node_id=node_id, timeout_ms=timeout_ms, _timeout=timeout_ms / 1000 + 30)

    def read_attribute(self, node_id: int, endpoint: int, cluster: str, attribute: str) -> Any:
        return self.call(
            "read_attribute", node_id=node_id, endpoint=endpoint, cluster=cluster, attribute=attribute
        )

    def invoke(
        self,
        node_id: int,
        endpoint: int,
        cluster: str,
        command: str,
        fields: dict[str, Any] | None = None,
        timeout_ms: int = 20000,
    ) -> Any:
        return self.call(
            "invoke",
            node_id=node_id,
            endpoint=endpoint,
            cluster=cluster,
            command=command,
            fields=fields or {},
            timeout_ms=timeout_ms,
            _timeout=timeout_ms / 1000 + 30,
        )


# =============================================================================================== worker side


def _jsonable(value: Any) -> Any:
    """Best-effort JSON form of SDK results (dataclasses -> dicts, bytes -> hex, enums -> ints)."""
    import dataclasses
    import enum

    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(getattr(k, "__name__", k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


class WorkerState:
    """SDK objects held by the worker (passed to every op)."""

    def __init__(self, storage_dir: str = "/data") -> None:
        self.storage_dir = storage_dir  # where the SDK's storage JSON lives (in this process's view)
        self.stack: Any = None
        self.ca_manager: Any = None
        self.ca: Any = None
        self.admin: Any = None
        self.controller: Any = None
        self.fabric_id = 0
        self.vendor_id = 0
        self.rcac: bytes | None = None

    def require_controller(self) -> Any:
        if self.controller is None:
            raise RuntimeError("call init first")
        return self.controller

    def shutdown(self) -> None:
        for obj in (self.controller, self.ca_manager, self.stack):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.Shutdown()
        self.controller = self.ca_manager = self.stack = self.admin = self.ca = None


def _ensure_stack(st: WorkerState) -> None:
    if st.stack is not None:
        return
    from chip.CertificateAuthority import CertificateAuthorityManager
    from chip.ChipStack import ChipStack

    st.stack = ChipStack(
        persistentStoragePath=os.path.join(st.storage_dir, "chip-storage.json"),
        enableServerInteractions=False,
    )
    st.ca_manager = CertificateAuthorityManager(st.stack, st.stack.GetStorageManager())
    st.ca_manager.LoadAuthoritiesFromStorage()


async def _op_init(st: WorkerState, a: dict[str, Any]) -> Any:
    if st.controller is not None:
        return await _op_fabric_info(st, a)
    _ensure_stack(st)
    fabric_id, vendor_id = int(a.get("fabric_id", 1)), int(a.get("vendor_id", 0xFFF1))
    cas = st.ca_manager.activeCaList
    st.ca = (
        cas[0]
        if cas
        else st.ca_manager.NewCertificateAuthority(
            maximizeCertChains=bool(a.get("maximize_cert_chains", False))
        )
    )
    admins = [ad for ad in st.ca.adminList if ad.fabricId == fabric_id]
    st.admin = admins[0] if admins else st.ca.NewFabricAdmin(vendorId=vendor_id, fabricId=fabric_id)
    given = a.get("paa_trust_store")
    paa = str(given or os.path.join(st.storage_dir, "paa"))
    if given and not os.path.isdir(paa):
        # e.g. a store under /tmp while the worker has a private /tmp (user-namespace mode)
        raise FileNotFoundError(f"PAA trust store {paa} is not a directory the controller worker can see")
    os.makedirs(paa, mode=0o700, exist_ok=True)
    st.controller = st.admin.NewController(
        nodeId=int(a.get("controller_node_id", 112233)), paaTrustStorePath=paa
    )
    st.fabric_id, st.vendor_id = fabric_id, st.admin.vendorId
    return await _op_fabric_info(st, a)


async def _op_fabric_info(st: WorkerState, a: dict[str, Any]) -> Any:
    ctrl = st.require_controller()
    return {
        "fabric_id": st.fabric_id,
        "vendor_id": st.vendor_id,
        "controller_node_id": ctrl.nodeId,
        "compressed_fabric_id": ctrl.GetCompressedFabricId(),
        "rcac": st.rcac.hex() if st.rcac else None,
    }


async def _op_issue_noc(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters
    from chip.tlv import TLVWriter

    ctrl = st.require_controller()
    w = TLVWriter()
    w.put(None, {1: bytes.fromhex(a["csr_der"]), 2: os.urandom(32)})
    resp = Clusters.OperationalCredentials.Commands.CSRResponse(
        NOCSRElements=bytes(w.encoding), attestationSignature=b"\x00" * 64
    )
    chain = await ctrl.IssueNOCChain(resp, int(a["node_id"]))
    if not chain.nocBytes or not chain.rcacBytes:
        raise RuntimeError("IssueNOCChain returned no certificates")
    st.rcac = bytes(chain.rcacBytes)
    return {
        "noc": bytes(chain.nocBytes).hex(),
        "icac": bytes(chain.icacBytes).hex() if chain.icacBytes else None,
        "rcac": bytes(chain.rcacBytes).hex(),
        "ipk_epoch_key": bytes(chain.ipkBytes).hex() if chain.ipkBytes else None,
        "fabric_id": st.fabric_id,
        "vendor_id": st.vendor_id,
    }


async def _op_chip_to_x509(st: WorkerState, a: dict[str, Any]) -> Any:
    from chip.credentials import cert

    return cert.convert_chip_cert_to_x509_cert(bytes.fromhex(a["cert"])).hex()


async def _op_x509_to_chip(st: WorkerState, a: dict[str, Any]) -> Any:
    from chip.credentials import cert

    return cert.convert_x509_cert_to_chip_cert(bytes.fromhex(a["der"])).hex()


async def _op_establish_case(st: WorkerState, a: dict[str, Any]) -> Any:
    ctrl = st.require_controller()
    await ctrl.GetConnectedDevice(
        int(a["node_id"]), allowPASE=False, timeoutMs=int(a.get("timeout_ms", 20000))
    )
    return True


async def _op_read_attribute(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters

    ctrl = st.require_controller()
    cluster = getattr(Clusters, a["cluster"])
    attribute = getattr(cluster.Attributes, a["attribute"])
    endpoint = int(a["endpoint"])
    res = await ctrl.ReadAttribute(int(a["node_id"]), [(endpoint, attribute)])
    return _jsonable(res[endpoint][cluster][attribute])


async def _op_invoke(st: WorkerState, a: dict[str, Any]) -> Any:
    import chip.clusters as Clusters

    ctrl = st.require_controller()
    cluster = getattr(Clusters, a["cluster"])
    command = getattr(cluster.Commands, a["command"])(**dict(a.get("fields") or {}))
    res = await ctrl.SendCommand(
        int(a["node_id"]), int(a["endpoint"]), command, interactionTimeoutMs=int(a.get("timeout_ms", 20000))
    )
    return _jsonable(res)


async def _op_ping(st: WorkerState, a: dict[str, Any]) -> Any:
    return "pong"


_OPS: dict[str, Any] = {
    "ping": _op_ping,
    "init": _op_init,
    "fabric_info": _op_fabric_info,
    "issue_noc": _op_issue_noc,
    "chip_to_x509": _op_chip_to_x509,
    "x509_to_chip": _op_x509_to_chip,
    "establish_case": _op_establish_case,
    "read_attribute": _op_read_attribute,
    "invoke": _op_invoke,
}


async def _worker_main(ops_module: str | None, storage_dir: str) -> None:
    import asyncio
    import importlib
    import inspect

    # fd 1 is reserved for JSON replies; the SDK's C logging goes to fd 1, so point fd 1 at stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import chip.native

    chip.native.Init()
    ops = dict(_OPS)
    if ops_module:
        ops.update(importlib.import_module(ops_module).OPS)
    st = WorkerState(storage_dir)
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    def reply(obj: dict[str, Any]) -> None:
        # only ever called on the loop's thread, one whole line at a time: replies never interleave
        out.write(json.dumps(obj) + "\n")

    async def run(rid: Any, op: str, args: dict[str, Any]) -> None:
        try:
            res = ops[op](st, args)
            if inspect.isawaitable(res):
                res = await res
            reply({"id": rid, "ok": True, "result": res})
        except asyncio.CancelledError:
            reply({"id": rid, "ok": False, "error": "worker shutting down", "type": "CancelledError"})
        except Exception as exc:
            reply({"id": rid, "ok": False, "error": str(exc), "type": type(exc).__name__})

    async def cancel_running() -> None:
        for t in list(running):
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            try:
                req = json.loads(line)
                rid = req.get("id")
            except (ValueError, AttributeError) as exc:
                reply({"id": None, "ok": False, "error": str(exc), "type": type(exc).__name__})
                continue
            if req.get("op") == "shutdown":
                await cancel_running()
                st.shutdown()
                reply({"id": rid, "ok": True, "result": True})
                break
            if req.get("op") not in ops:
                reply({"id": rid, "ok": False, "error": f"unknown op {req.get('op')!r}", "type": "KeyError"})
                continue
            # each request is its own task on this loop: a slow op does not hold up the others
            task = asyncio.create_task(run(rid, req["op"], dict(req.get("args") or {})))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        await cancel_running()
        st.shutdown()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    p = argparse.ArgumentParser(description="chip SDK controller worker (JSON lines on stdin/stdout)")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--ops-module")
    p.add_argument("--data-mode", choices=["direct", "mount-namespace", "user-namespace"], required=True)
    p.add_argument("--private-dir", required=True)
    args = p.parse_args(argv)
    os.umask(0o077)
    # before anything starts a thread (unshare of a user namespace needs a single-threaded process)
    enter_private_data(args.data_mode, args.private_dir)
    storage_dir = args.private_dir if args.data_mode == "direct" else "/data"
    asyncio.run(_worker_main(args.ops_module, storage_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

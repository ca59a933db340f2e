"""Benchmark: Matter OTA end to end against matter.js requestors, otagw's provider vs matter.js's own provider.

Two network namespaces (A: the provider side, B: matter.js devices from tests/js/ota_requestor_device.mjs with
OTA_FAST=1). Needs root, the chip SDK and Node with tests/js installed.

1. The same image (default 1 MiB payload) to the same kind of matter.js requestor (fresh, version 1), once from
   otagw (UpdateCore + MatterAdapter: chip SDK fabric admin, Python provider node, BDX) and once from matter.js's
   built-in provider (tests/js/matterjs_ota_provider.mjs: CommissioningController with enableOtaProvider). Transfer
   time = from the device logging "Starting BDX session" (its last one) to the device's "applied" event (image
   downloaded, verified by the requestor, handed to applyUpdate) -- the same device-side span for both providers.
   Printed: both times, throughput and the ratio otagw / matter.js.
2. N requestors (default 10) at once against otagw: all commissioned first, then announced together; total time
   from the announcements to the last device's "applied", plus the time until the core marked all updated; the
   gateway process's peak RSS during the transfers (VmHWM, reset before them) and the controller worker's.

Thread-like link (`--loss PERCENT --idle-interval-ms N`): both namespaces drop PERCENT % of incoming packets
(nftables numgen; this machine's kernel has no sch_netem, so no added delay/jitter) and the requestors advertise a
sleepy MRP idle interval of N ms; part 1 then compares both providers over that link.

Usage: python bench/bench_matter_ota.py [--size BYTES] [--devices 10] [--skip-matterjs] [--loss 3]
       [--idle-interval-ms 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.matter.adapter import MatterAdapter  # noqa: E402
from adapters.matter.fabric.controller import ControllerError, runner_unavailable_reason  # noqa: E402
from gateway.clock import SystemClock  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.core.service import UpdateCore  # noqa: E402
from gateway.store.store import ImageStore  # noqa: E402
from tests.matter.netns import NetnsPair, create_pair, delete_pair, netns_unavailable_reason  # noqa: E402
from tests.matter.test_e2e_support import JS_DIR, MatterJsDevice, export_paas, node_unavailable_reason  # noqa: E402

PROVIDER = 0x0000_0000_0A11_0001
VID, PID = 0xFFF1, 0x8000


def make_image(tmp: Path, size: int) -> Path:
    payload, out = tmp / "payload.bin", tmp / "bench-2.ota"
    payload.write_bytes(hashlib.shake_256(b"otagw-bench").digest(size))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "image",
            "create-matter",
            "--vendor-id",
            hex(VID),
            "--product-id",
            hex(PID),
            "--version",
            "2",
            "--version-string",
            "2.0",
            str(payload),
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def _status_kb(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


DEVICE_ARGS: list[
    str
] = []  # extra ota_requestor_device.mjs arguments for every bench device (--idle-interval-ms)
LOSS_PERCENT = 0


def impair(pair: NetnsPair) -> None:
    """Drop LOSS_PERCENT % of the packets entering each namespace (both directions lossy)."""
    if not LOSS_PERCENT:
        return
    for ns in (pair.a.netns, pair.b.netns):
        for cmd in (
            ["add", "table", "inet", "otagw_loss"],
            ["add", "chain", "inet", "otagw_loss", "in", "{ type filter hook input priority 0; }"],
            [
                "add",
                "rule",
                "inet",
                "otagw_loss",
                "in",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                str(LOSS_PERCENT),
                "drop",
            ],
        ):
            subprocess.run(["ip", "netns", "exec", ns, "nft", *cmd], check=True, capture_output=True)


def transfer_seconds(dev: MatterJsDevice, applied: dict[str, Any]) -> float:
    starts = [t for t, _ in dev.marks if t <= applied["t"]]
    if not starts:
        raise RuntimeError("no BDX start seen in the device log")
    return float(applied["t"] - starts[-1])


class Gateway:
    def __init__(self, pair: NetnsPair, tmp: Path, image: Path) -> None:
        self.pair, self.tmp, self.image = pair, tmp, image

    async def __aenter__(self) -> Gateway:
        paa = export_paas(self.tmp / "paa")
        self.cfg = parse_config(
            {
                "data_dir": str(self.tmp / "gw"),
                "policy": {"budgets": {"per_network_default": 64}},
                "matter": {
                    "port": 5540,
                    "interfaces": [self.pair.a.iface],
                    "paa_trust_store": str(paa),
                    "node_id": PROVIDER,
                },
            }
        )
        self.store = ImageStore(self.cfg.data_dir)
        await self.store.open()
        await self.store.add_file(self.image)
        clock = SystemClock()
        self.core = UpdateCore(self.cfg, self.store, clock, auto_sweep=False)
        await self.core.start()
        self.adapter = MatterAdapter(
            self.cfg.matter, self.core, clock, self.cfg.data_dir, netns=self.pair.a.netns
        )
        with self.pair.enter(self.pair.a):
            await self.adapter.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.adapter.stop()
        await self.core.stop()
        await self.store.close()

    async def commission(self, ready: dict[str, Any]) -> int:
        return int((await self.adapter.commission(ready["qrPairingCode"], timeout_s=30))["node_id"])

    async def wait_updated(self, node_ids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [self.core.get_device(self.adapter.key(n).device_id) for n in node_ids]
            if all(r is not None and r.state.value == "updated" for r in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all updated: {[r.state.value if r else None for r in states]}")
            await asyncio.sleep(0.1)


async def one_otagw(pair: NetnsPair, tmp: Path, image: Path) -> float:
    dev = MatterJsDevice(pair.b.netns, tmp / "dev-otagw")
    dev.args += DEVICE_ARGS
    try:
        ready = await dev.start()
        async with Gateway(pair, tmp / "otagw1", image) as gw:
            node = await gw.commission(ready)
            impair(pair)
            await gw.adapter._announce_due()
            applied = await dev.wait_for(lambda e: e["event"] == "applied", 300, "applied")
            assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
            await gw.wait_updated([node], 120)
            return transfer_seconds(dev, applied)
    finally:
        await dev.stop()


async def one_matterjs(pair: NetnsPair, tmp: Path, image: Path) -> float:
    dev = MatterJsDevice(pair.b.netns, tmp / "dev-matterjs")
    dev.args += DEVICE_ARGS
    provider: asyncio.subprocess.Process | None = None
    try:
        ready = await dev.start()
        (tmp / "mjs").mkdir()
        log = open(tmp / "mjs" / "provider.log", "wb")  # noqa: SIM115
        provider = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            pair.a.netns,
            "node",
            str(JS_DIR / "matterjs_ota_provider.mjs"),
            "--dir",
            str(tmp / "mjs"),
            "--image",
            str(image),
            "--code",
            ready["manualPairingCode"],
            cwd=str(JS_DIR),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        impair(pair)  # from the start here: matter.js's controller commissions and serves in one process
        applied = await dev.wait_for(lambda e: e["event"] == "applied", 300, "applied (matter.js provider)")
        assert applied["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        return transfer_seconds(dev, applied)
    finally:
        if provider is not None and provider.returncode is None:
            os.killpg(provider.pid, 15)
            try:
                await asyncio.wait_for(provider.wait(), 10)
            except TimeoutError:
                os.killpg(provider.pid, 9)
                await provider.wait()
        await dev.stop()


async def announce(gw: Gateway, node: int, attempts: int = 3) -> None:
    """AnnounceOTAProvider, retried: under load a busy device can miss the controller's interaction timeout."""
    for i in range(attempts):
        try:
            await gw.adapter.announce(node)
            return
        except ControllerError:
            if i == attempts - 1:
                raise


async def many_otagw(pair: NetnsPair, tmp: Path, image: Path, n: int) -> dict[str, float]:
    devs = [
        MatterJsDevice(
            pair.b.netns, tmp / f"many-{i}", port=5540 + i, discriminator=3840 + i, passcode=20202021 + i
        )
        for i in range(n)
    ]
    try:
        async with Gateway(pair, tmp / "otagw-many", image) as gw:
            # one commissionable device at a time (they share netns B's address and host name)
            nodes = [await gw.commission(await d.start(timeout=120)) for d in devs]
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: peak RSS of the transfer phase only
            t0 = time.monotonic()
            await asyncio.gather(*(announce(gw, nd) for nd in nodes))
            applied = await asyncio.gather(
                *(d.wait_for(lambda e: e["event"] == "applied", 600, "applied") for d in devs)
            )
            t_applied = max(a["t"] for a in applied) - t0
            restarted = await asyncio.gather(
                *(d.wait_for(lambda e: e["event"] == "restarted", 600, "restarted") for d in devs)
            )
            t_restarted = max(r["t"] for r in restarted) - t0
            await gw.wait_updated(nodes, 300)
            t_updated = time.monotonic() - t0
            assert gw.adapter.admin is not None and gw.adapter.admin.runner._proc is not None
            worker = gw.adapter.admin.runner._proc.pid
            # the worker is the python process itself (its /data set-up happens inside it)
            return {
                "applied_s": t_applied,
                "restarted_s": t_restarted,
                "updated_s": t_updated,
                "gateway_peak_mib": _status_kb("self", "VmHWM") / 1024,
                "worker_peak_mib": _status_kb(worker, "VmHWM") / 1024,
                "per_device_s": sum(transfer_seconds(d, a) for d, a in zip(devs, applied, strict=True)) / n,
            }
    finally:
        await asyncio.gather(*(d.stop() for d in devs))


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1 << 20, help="payload bytes of the image (default 1 MiB)")
    ap.add_argument("--devices", type=int, default=10, help="requestors at once in part 2 (0: skip part 2)")
    ap.add_argument("--skip-matterjs", action="store_true")
    ap.add_argument("--loss", type=int, default=0, help="percent of packets dropped entering each namespace")
    ap.add_argument("--idle-interval-ms", type=int, default=0, help="requestors' MRP idle interval (sleepy)")
    a = ap.parse_args()
    global LOSS_PERCENT
    LOSS_PERCENT = a.loss
    if a.idle_interval_ms:
        DEVICE_ARGS.extend(["--idle-interval-ms", str(a.idle_interval_ms)])
    if a.loss or a.idle_interval_ms:
        print(
            f"link: {a.loss} % loss each way, requestor MRP idle interval {a.idle_interval_ms or 'default'} ms"
        )
    for reason in (netns_unavailable_reason(), runner_unavailable_reason(), node_unavailable_reason()):
        if reason:
            print(f"skipped: {reason}")
            return 0
    tmp = Path(tempfile.mkdtemp(prefix="otagw-bench-ota-"))
    image = make_image(tmp, a.size)
    size = image.stat().st_size
    mib = size / (1 << 20)
    print(f"image: {size} bytes ({mib:.2f} MiB), matter.js requestors, BDX receiver drive, 1024-byte blocks")
    try:
        pair = create_pair()
        try:
            t_otagw = await one_otagw(pair, tmp, image)
            print(f"1. otagw provider:     transfer {t_otagw:6.2f} s  ({mib / t_otagw:5.2f} MiB/s)")
        finally:
            delete_pair(pair)
        if not a.skip_matterjs:
            pair = create_pair()
            try:
                t_mjs = await one_matterjs(pair, tmp, image)
                print(f"   matter.js provider: transfer {t_mjs:6.2f} s  ({mib / t_mjs:5.2f} MiB/s)")
                print(
                    f"   ratio otagw / matter.js transfer time: {t_otagw / t_mjs:.2f} "
                    f"({'otagw faster' if t_otagw < t_mjs else 'matter.js faster'})"
                )
            finally:
                delete_pair(pair)
        if a.devices < 1:
            return 0
        pair = create_pair()
        try:
            r = await many_otagw(pair, tmp, image, a.devices)
        finally:
            delete_pair(pair)
        print(
            f"2. {a.devices} requestors at once from otagw: all applied after {r['applied_s']:.2f} s, all back up "
            f"on the new version after {r['restarted_s']:.2f} s, all verified updated after {r['updated_s']:.2f} s (mean per-device transfer {r['per_device_s']:.2f} s; "
            f"aggregate {a.devices * mib / r['applied_s']:.2f} MiB/s)"
        )
        print(
            f"   peak RSS: gateway process {r['gateway_peak_mib']:.1f} MiB, chip controller worker "
            f"{r['worker_peak_mib']:.1f} MiB"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

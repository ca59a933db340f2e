"""The matter.js OTA requestor device (`tests/js/ota_requestor_device.mjs`) as a subprocess in a network namespace,
its OTAGW-EVENT lines collected as dicts; the matter.js test PAAs for the controller's attestation trust store.

The JS lives in the source tree's `tests/js` (with its `node_modules`), not in the Python package: it is located
relative to the repository, or at `$OTAGW_MATTERJS_DIR`. `node_unavailable_reason()` says clearly when it is not
there (e.g. in an installed wheel), when Node is missing, or when matter.js is not installed (`npm ci`).
A device exiting with code 75 after installing an image is started again (a power cycle); `stop()` kills its whole
process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

JS_DIR = Path(os.environ.get("OTAGW_MATTERJS_DIR") or Path(__file__).resolve().parents[3] / "tests" / "js")
DEVICE_SCRIPT = JS_DIR / "ota_requestor_device.mjs"
PREFIX = "OTAGW-EVENT "
REBOOT_EXIT = 75


class MatterJsDeviceError(AssertionError):
    """The device exited or did not report in time (an AssertionError, so tests report it as a failed check)."""


def device_script() -> Path:
    return DEVICE_SCRIPT


def node_unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node (Node.js) not installed"
    if not DEVICE_SCRIPT.is_file():
        return (
            f"the matter.js device script is not at {DEVICE_SCRIPT} (it lives in the source tree's tests/js, "
            "not in an installed package; set OTAGW_MATTERJS_DIR to a checkout's tests/js)"
        )
    if not (JS_DIR / "node_modules" / "@matter" / "main").exists():
        return f"matter.js not installed in {JS_DIR} (run `npm ci` there)"
    return None


def export_paas(out: Path) -> Path:
    """matter.js's test PAAs (DER) for the chip SDK controller's attestation trust store."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["node", str(JS_DIR / "export_paa.mjs"), str(out)],
        cwd=str(JS_DIR),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


class MatterJsDevice:
    """The requestor device in network namespace `netns`, its files and log (`device.log`) in `workdir`."""

    def __init__(
        self,
        netns: str,
        workdir: Path,
        *,
        port: int = 5540,
        vendor_id: int = 0xFFF1,
        product_id: int = 0x8000,
        version: int = 1,
        discriminator: int = 3840,
        passcode: int = 20202021,
        fast: bool = True,
    ) -> None:
        self.netns = netns
        self.dir = workdir
        self.port = port
        self.args = [
            "--dir",
            str(workdir),
            "--port",
            str(port),
            "--vendor-id",
            hex(vendor_id),
            "--product-id",
            hex(product_id),
            "--version",
            str(version),
            "--discriminator",
            str(discriminator),
            "--passcode",
            str(passcode),
            "--reboot-exit",
        ]
        self.fast = fast
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.reboots = 0
        self.watch: tuple[str, ...] = ("Starting BDX session",)  # log lines whose arrival time is recorded
        self.marks: list[tuple[float, str]] = []

    @property
    def log_path(self) -> Path:
        return self.dir / "device.log"

    async def start(self, timeout: float = 60.0) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        await self._launch()
        self._reader = asyncio.create_task(self._run())
        return await self.wait_for(lambda e: e["event"] == "ready", timeout, "device ready")

    async def _launch(self) -> None:
        env = dict(os.environ)
        if self.fast:
            env["OTA_FAST"] = "1"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                self.netns,
                "node",
                str(DEVICE_SCRIPT),
                *self.args,
                cwd=str(JS_DIR),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                limit=1 << 24,
            )
        finally:
            log.close()

    async def _run(self) -> None:
        """Read events; a "reboot" (exit code 75 after installing) starts the device again, like power-cycling."""
        while True:
            await self._read()
            proc = self.proc
            if proc is None or await proc.wait() != REBOOT_EXIT:
                break
            self.reboots += 1
            await self._launch()
        self._changed.set()

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "ab") as log:
            while True:
                try:
                    line = await self.proc.stdout.readline()
                except ValueError:  # a log line longer than the limit: skip it
                    line = await self.proc.stdout.read(1 << 20) or b""
                    continue
                if not line:
                    break
                log.write(line)
                text = line.decode(errors="replace").strip()
                for pattern in self.watch:
                    if pattern in text:
                        self.marks.append((time.monotonic(), pattern))
                if text.startswith(PREFIX):
                    with contextlib.suppress(ValueError):
                        ev = json.loads(text[len(PREFIX) :])
                        ev["t"] = time.monotonic()
                        self.events.append(ev)
                        self._changed.set()

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            if self.proc is not None and self.proc.returncode not in (None, REBOOT_EXIT):
                raise MatterJsDeviceError(
                    f"device exited ({self.proc.returncode}) waiting for {what}; log {self.log_path}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise MatterJsDeviceError(
                    f"timeout waiting for {what}; events {self.events[-8:]}; log {self.log_path}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    async def stop(self) -> None:
        if self._reader is not None:  # first, so that no "reboot" relaunches the device behind our back
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()

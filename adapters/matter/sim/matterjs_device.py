"""The matter.js OTA requestor device (`tests/js/ota_requestor_device.mjs`) as a subprocess in a network namespace,
its OTAGW-EVENT lines collected as dicts; the matter.js test PAAs for the controller's attestation trust store.

The JS lives in a checkout's `tests/js` (with its `node_modules`), never in the Python package, and is found only
where the caller says: `$OTAGW_MATTERJS_DIR` (the test suite sets it; `otagw demo --matterjs-dir` sets it too).
`node_unavailable_reason()` says clearly when it is not set or not there, when Node is missing, or when matter.js
is not installed (`npm ci`).
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

MATTERJS_DIR_ENV = "OTAGW_MATTERJS_DIR"
PREFIX = "OTAGW-EVENT "
REBOOT_EXIT = 75


class MatterJsDeviceError(AssertionError):
    """The device exited or did not report in time (an AssertionError, so tests report it as a failed check)."""


def js_dir() -> Path:
    """The directory holding the matter.js scripts and their node_modules (`$OTAGW_MATTERJS_DIR`)."""
    where = os.environ.get(MATTERJS_DIR_ENV)
    if not where:
        raise MatterJsDeviceError(f"{MATTERJS_DIR_ENV} is not set (point it at a checkout's tests/js)")
    return Path(where)


def device_script() -> Path:
    return js_dir() / "ota_requestor_device.mjs"


def node_unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node (Node.js) not installed"
    if not os.environ.get(MATTERJS_DIR_ENV):
        return f"{MATTERJS_DIR_ENV} is not set (the matter.js scripts live in a checkout's tests/js)"
    script = device_script()
    if not script.is_file():
        return (
            f"the matter.js device script is not at {script} ({MATTERJS_DIR_ENV} names a checkout's tests/js)"
        )
    if not (js_dir() / "node_modules" / "@matter" / "main").exists():
        return f"matter.js not installed in {js_dir()} (run `npm ci` there)"
    return None


def export_paas(out: Path) -> Path:
    """matter.js's test PAAs (DER) for the chip SDK controller's attestation trust store."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["node", str(js_dir() / "export_paa.mjs"), str(out)],
        cwd=str(js_dir()),
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
        battery_percent: int | None = None,
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
        if battery_percent is not None:  # a battery device (Power Source cluster, BAT feature)
            self.args += ["--battery-percent", str(battery_percent)]
        self.fast = fast
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.reboots = 0
        # False: after installing, the device never powers on again (a bricked device: "not back after update")
        self.comes_back = True
        self.watch: tuple[str, ...] = ("Starting BDX session",)  # log lines whose arrival time is recorded
        self.marks: list[tuple[float, str]] = []

    def set_battery(self, percent: int) -> None:
        """Change a battery device's charge (the script pushes it to its Power Source cluster, and keeps it over
        restarts)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "battery-percent").write_text(f"{int(percent)}\n")

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
                str(device_script()),
                *self.args,
                cwd=str(js_dir()),
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
            if proc is None or await proc.wait() != REBOOT_EXIT or not self.comes_back:
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

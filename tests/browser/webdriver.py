"""A minimal W3C WebDriver client over aiohttp for driving headless Chromium through chromedriver (no selenium).

Only what the dashboard tests need: start chromedriver, open a session, navigate, run a script, poll a script
until it returns a truthy value (bounded), close everything.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and shutil.which(Path(path).name) is None:
            return f"{path} not installed (Debian packages chromium and chromium-driver)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDriverError(Exception):
    pass


class Browser:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._base = ""
        self._session = ""
        self._profile = tempfile.TemporaryDirectory(prefix="otagw-chromium-")

    async def __aenter__(self) -> Browser:
        port = _free_port()
        driver = shutil.which("chromedriver") or CHROMEDRIVER
        self._proc = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._base = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        deadline = time.monotonic() + 20
        while True:
            try:
                async with self._http.get(self._base + "/status") as r:
                    if (await r.json())["value"]["ready"]:
                        break
            except (aiohttp.ClientError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise WebDriverError("chromedriver did not become ready")
            await asyncio.sleep(0.1)
        binary = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium") or CHROMIUM
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": binary,
                        "args": [*FLAGS, f"--user-data-dir={self._profile.name}"],
                    },
                }
            }
        }
        value = await self._call("POST", "/session", caps)
        self._session = value["sessionId"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._session:
                await self._call("DELETE", f"/session/{self._session}")
        except Exception:
            pass
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._profile.cleanup()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self._http is not None
        async with self._http.request(method, self._base + path, json=body) as r:
            data = await r.json()
        if r.status >= 400:
            raise WebDriverError(f"{method} {path}: {data.get('value')}")
        return data.get("value", data)

    async def get(self, url: str) -> None:
        await self._call("POST", f"/session/{self._session}/url", {"url": url})

    async def url(self) -> str:
        return str(await self._call("GET", f"/session/{self._session}/url"))

    async def js(self, script: str, *args: Any) -> Any:
        return await self._call(
            "POST", f"/session/{self._session}/execute/sync", {"script": script, "args": list(args)}
        )

    async def size(self, width: int, height: int) -> None:
        """Resize the window (a phone is 360 px wide)."""
        await self._call("POST", f"/session/{self._session}/window/rect", {"width": width, "height": height})

    async def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(await self._call("GET", f"/session/{self._session}/screenshot")))

    async def wait_for(self, script: str, *args: Any, timeout: float = 15.0, what: str = "") -> Any:
        """Run `script` until it returns something truthy; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.js(script, *args)
            if last:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or script} (last: {last!r})")

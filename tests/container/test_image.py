"""The Docker image, built and run the way the README says (podman standing in for docker), updating a real Matter
device: the README's commands are parsed from README.md and run, so the two cannot drift apart.

Built once per session: the base (Debian bookworm's Python, made offline by mmdebstrap, cached in podman's store)
and the Dockerfile (`podman build --format docker`). The container runs in a network namespace of its own, joined by
a veth pair to a second namespace holding a matter.js OTA requestor device (tests/js/ota_requestor_device.mjs): the
host's interfaces are never used. The flow: /livez and /healthz answer, `otagw` commands run as uid 10001 via
`podman exec`, commission with the device's pairing code and address, add + approve an image, the device downloads
it from the container byte for byte and restarts on version 2, the container's record says `updated`, and
`podman stop` (SIGTERM) ends it with exit code 0. A second test checks the image is lean and pinned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.matter.netns import NetnsPair, create_pair, delete_pair, netns_unavailable_reason
from tests.matter.test_e2e_support import MatterJsDevice, export_paas, node_unavailable_reason

from .engine import (
    IMAGE,
    REPO,
    Command,
    base_image,
    engine_unavailable_reason,
    find_command,
    image_id,
    podman,
    readme_docker_commands,
)

pytestmark = pytest.mark.container

VID, PID = 0xFFF1, 0x8000
LOCK = REPO / "constraints" / "image.txt"
# Installed size budget of the image (MB, podman's figure): base 197, native libs 7.5, gateway + locked deps 126.
SIZE_BUDGET_MB = 360
UID = "10001"


@dataclass
class Built:
    image: str
    base: str
    base_s: float
    build_s: float
    figures: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def built() -> Built:
    reason = engine_unavailable_reason()
    if reason:
        pytest.skip(reason)
    base, base_s = base_image()
    build = find_command(readme_docker_commands(), "podman", "build")
    old = image_id(IMAGE)
    argv = build.argv[1:]
    assert argv[-1] == ".", f"README's build command does not build the checkout: {build.text}"
    argv = [IMAGE if prev == "-t" else a for prev, a in zip(["", *argv[:-1]], argv, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        # the built image's id, not the tag, is what the tests use (another run may retag meanwhile)
        iidfile = Path(tmp) / "iid"
        argv = [*argv[:-1], "--build-arg", f"PYTHON_IMAGE={base}", "--iidfile", str(iidfile), str(REPO)]
        t0 = time.monotonic()
        podman(*argv, timeout=900)
        build_s = time.monotonic() - t0
        new = iidfile.read_text().strip().removeprefix("sha256:")
    if old and old != new:
        podman(
            "rmi", old, check=False
        )  # the previous build of this tag, now dangling (fails if still in use)
    print(f"\ncontainer: base {base} ({base_s:.1f} s to make), build {build_s:.1f} s, image {new}")
    return Built(new, base, base_s, build_s)


# ----------------------------------------------------------------------------------------------- lean + pinned
PROBE = r"""
import importlib.metadata as md, json, subprocess, sys
dists = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
import chip.native, chip.ChipDeviceCtrl  # the native library loads (libnl, libgio present)
import pathlib
native = pathlib.Path(chip.native.__file__).parents[1] / "_ChipDeviceCtrl.so"
elf = native.read_bytes()
import gateway, adapters, hashlib
code = {}
for pkg in (gateway, adapters):
    root = pathlib.Path(pkg.__file__).parent
    for f in root.rglob("*.py"):
        code[f"{root.name}/{f.relative_to(root)}"] = hashlib.sha256(f.read_bytes()).hexdigest()
check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
print(json.dumps({"dists": dists, "pip_check": check.stdout.splitlines(), "native_mb": len(elf) / 1e6,
                  "native_debug": b".debug_info" in elf, "code": code}))
"""


def _lock() -> tuple[dict[str, str], set[str]]:
    pins: dict[str, str] = {}
    dropped: set[str] = set()
    for line in LOCK.read_text().splitlines():
        if m := re.match(r"#\s+([A-Za-z0-9_.-]+): ", line):
            dropped.add(m.group(1).lower())
        elif line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins, dropped


def test_image_is_lean_and_pinned(built: Built) -> None:
    size_mb = int(podman("image", "inspect", "--format", "{{.Size}}", built.image).stdout) / 1e6
    layers = podman("history", "--format", "{{.Size}}\t{{.CreatedBy}}", built.image).stdout
    print(f"\nimage {built.image}: {size_mb:.0f} MB\n{layers}")
    assert size_mb < SIZE_BUDGET_MB, f"image is {size_mb:.0f} MB (budget {SIZE_BUDGET_MB}):\n{layers}"
    assert "/wheels" not in layers or "--mount" in layers, (
        "wheels copied into a layer instead of bind-mounted"
    )

    res = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", built.image, "-c", PROBE, timeout=120
    )
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    dists: dict[str, str] = probe["dists"]
    pins, dropped = _lock()
    assert pins, f"{LOCK} pins nothing"
    wrong = {n: (v, dists.get(n)) for n, v in pins.items() if dists.get(n) != v}
    assert not wrong, f"installed versions differ from {LOCK} (pinned, installed): {wrong}"
    assert "otagw" in dists
    # the image runs this checkout's code (not a stale cached install layer)
    here = {
        str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest()
        for pkg in ("gateway", "adapters")
        for f in (REPO / pkg).rglob("*.py")
    }
    stale = sorted(k for k in here.keys() | probe["code"].keys() if here.get(k) != probe["code"].get(k))
    assert not stale, f"the image's code differs from the checkout: {stale[:10]}"
    # the chip SDK's native library without its debug info (the Dockerfile strips it: 114 -> about 38 MB)
    assert not probe["native_debug"] and probe["native_mb"] < 60, probe["native_mb"]
    assert not dropped & dists.keys(), f"dropped packages are installed: {dropped & dists.keys()}"
    for noise in ("ipython", "jedi", "prompt-toolkit", "ipdb"):
        assert noise not in dists, f"{noise} is in the image"
    # pip check may only complain about what the lock drops on purpose
    unexpected = [line for line in probe["pip_check"] if not any(f"requires {d}," in line for d in dropped)]
    assert not unexpected, f"pip check: {unexpected}"


# --------------------------------------------------------------------------------- the README's flow, end to end
@dataclass
class Run:
    """Maps the README's names (container `otagw`, volume `otagw-data`, image `otagw`, `--network host`) onto this
    test's own, and its `$VARS` onto values."""

    pair: NetnsPair
    name: str
    volume: str
    image: str
    vars: dict[str, str]

    def argv(self, cmd: Command) -> list[str]:
        src = cmd.argv
        assert src[0] in ("docker", "podman"), cmd.text
        out = ["podman"]
        sub = src[1]
        for i, tok in enumerate(src[1:], start=1):
            prev = src[i - 1]
            tok = re.sub(r"\$(\w+)", lambda m: self.vars[m.group(1)], tok)
            if prev == "--network" and tok == "host":
                # host networking's stand-in: the test's namespace (never the host's interfaces)
                tok = f"ns:/run/netns/{self.pair.a.netns}"
            elif prev == "--name" or (sub in ("exec", "stop", "kill") and i == 2 and tok == "otagw"):
                tok = self.name
            elif sub == "cp" and tok.startswith("otagw:"):
                tok = self.name + tok[len("otagw") :]
            elif tok.startswith("otagw-data"):
                tok = self.volume + tok[len("otagw-data") :]
            elif sub == "run" and i == len(src) - 1:
                assert tok == "otagw", f"README run command does not end with the image: {cmd.text}"
                tok = self.image
            out.append(tok)
        return out

    async def run(
        self, cmd: Command, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # in a thread: the matter.js device's output is read by this event loop meanwhile
        return await asyncio.to_thread(podman, *self.argv(cmd)[1:], timeout=timeout, check=check)


def _http(pair: NetnsPair, path: str) -> tuple[int, str]:
    """GET from inside the container's namespace (the API listens on its loopback, as with --network host)."""
    with pair.enter(pair.a):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:8480{path}", timeout=3) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)


async def _until(what: str, timeout: float, probe: Any) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        ok, last = await probe()
        if ok:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s; last: {last}")


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    reason = netns_unavailable_reason() or node_unavailable_reason()
    if reason:
        pytest.skip(reason)
    made = create_pair("ct")
    try:
        yield made
    finally:
        delete_pair(made)


@pytest.fixture
async def device_list() -> AsyncIterator[list[MatterJsDevice]]:
    made: list[MatterJsDevice] = []
    yield made
    for d in made:
        await d.stop()


def _firmware(tmp: Path, version: int, size: int) -> Path:
    payload, out = tmp / "payload.bin", tmp / f"light-{version}.ota"
    payload.write_bytes(hashlib.shake_256(f"otagw-container-{version}".encode()).digest(size))
    subprocess.run(
        [sys.executable, "-m", "gateway", "image", "create-matter", "--vendor-id", hex(VID), "--product-id",
         hex(PID), "--version", str(version), "--version-string", f"{version}.0", str(payload), str(out)],
        cwd=REPO, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out


def _config_dir(tmp: Path) -> Path:
    """The directory the README mounts read-only at /etc/otagw: the config and matter.js's test PAAs."""
    etc = tmp / "otagw"
    paa = export_paas(etc / "paa")
    (etc / "otagw.yaml").write_text(
        "data_dir: /data\n"
        "api:\n"
        "  listen: 127.0.0.1:8480\n"
        "matter:\n"
        "  enabled: true\n"
        "  port: 5540\n"
        "  paa_trust_store: /etc/otagw/paa\n"
        "  announce_check_s: 1\n"
    )
    for p in [tmp, etc, paa, *etc.rglob("*")]:  # readable by the container's uid 10001
        p.chmod(0o755 if p.is_dir() else 0o644)
    return etc


async def test_readme_commands_update_a_matter_device_from_the_container(
    built: Built, pair: NetnsPair, tmp_path: Path, device_list: list[MatterJsDevice]
) -> None:
    cmds = readme_docker_commands()
    tag = secrets.token_hex(3)
    firmware = _firmware(tmp_path, 2, 300_000)
    run = Run(
        pair,
        f"otagw-ct-{tag}",
        f"otagw-ct-{tag}-data",
        built.image,
        {"PWD": str(tmp_path), "FIRMWARE": str(firmware), "DEVICE_IP": pair.b.address},
    )
    _config_dir(tmp_path)
    t_start = time.monotonic()
    try:
        await run.run(find_command(cmds, "docker", "volume", "create"))
        await run.run(find_command(cmds, "docker", "run", "/etc/otagw:ro"))

        await _until("/livez 200", 60, lambda: _ok_when(200, asyncio.to_thread(_http, pair, "/livez")))
        _status, body = await _until(
            "/healthz 200 (Matter adapter running)",
            90,
            lambda: _ok_when(200, asyncio.to_thread(_http, pair, "/healthz")),
        )
        health = json.loads(body)
        assert health["status"] == "ok" and health["adapters"]["matter"]["state"] == "running", health
        t_ready = time.monotonic()

        assert (await asyncio.to_thread(podman, "exec", run.name, "id", "-u")).stdout.strip() == UID
        # the gateway itself (pid 1, the image's ENTRYPOINT) runs as uid 10001 with no effective capability
        status1 = (await asyncio.to_thread(podman, "exec", run.name, "cat", "/proc/1/status")).stdout
        assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status1, re.M), status1
        assert re.search(r"^CapEff:\s+0+$", status1, re.M), status1
        assert "ok" in (await run.run(find_command(cmds, "docker", "exec", "health"))).stdout.lower()
        await asyncio.to_thread(podman, "healthcheck", "run", run.name)  # the image's HEALTHCHECK passes
        perms = await asyncio.to_thread(
            podman, "exec", run.name, "stat", "-c", "%u %a %n", "/data", "/data/api-token"
        )
        assert perms.stdout.split("\n")[:2] == [f"{UID} 700 /data", f"{UID} 600 /data/api-token"], (
            perms.stdout
        )

        dev = MatterJsDevice(pair.b.netns, tmp_path / "device")
        device_list.append(dev)
        ready = await dev.start()
        run.vars["CODE"] = ready["manualPairingCode"]
        t0 = time.monotonic()
        await run.run(find_command(cmds, "docker", "exec", "commission"), timeout=180)
        commission_s = time.monotonic() - t0

        await run.run(find_command(cmds, "docker", "cp"))
        added = json.loads((await run.run(find_command(cmds, "docker", "exec", "image", "add"))).stdout)
        (result,) = added["results"]
        assert result["status"] == "created" and result["version"] == 2, result
        run.vars["IMAGE_ID"] = result["image_id"]
        t0 = time.monotonic()
        await run.run(find_command(cmds, "docker", "exec", "approve"))

        applied = await dev.wait_for(lambda e: e["event"] == "applied", 150, "applied")
        assert applied["sha256"] == hashlib.sha256(firmware.read_bytes()).hexdigest()
        assert applied["size"] == firmware.stat().st_size
        await dev.wait_for(lambda e: e["event"] == "restarted" and e["version"] == 2, 60, "restart on v2")

        listing = find_command(cmds, "docker", "exec", "devices", "list")

        async def updated() -> tuple[bool, Any]:
            recs = json.loads((await run.run(listing)).stdout)
            mine = [r for r in recs if r.get("protocol") == "matter"]
            done = len(mine) == 1 and mine[0]["state"] == "updated" and mine[0]["current_version"] == 2
            return done, mine

        await _until("the container's record says updated on version 2", 90, updated)
        update_s = time.monotonic() - t0

        t0 = time.monotonic()
        await run.run(find_command(cmds, "docker", "stop"), timeout=60)
        stop_s = time.monotonic() - t0
        state = await asyncio.to_thread(
            podman, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", run.name
        )
        assert state.stdout.split() == ["exited", "0"], state.stdout
        print(
            f"\ncontainer e2e: ready {t_ready - t_start:.1f} s, commission {commission_s:.1f} s, "
            f"approve->updated {update_s:.1f} s, stop {stop_s:.1f} s, total {time.monotonic() - t_start:.1f} s"
        )
    finally:
        logs = podman("logs", run.name, check=False)
        print(f"--- container log\n{logs.stdout[-6000:]}{logs.stderr[-6000:]}")
        podman("rm", "-f", "-t", "2", run.name, check=False)
        podman("volume", "rm", "-f", run.volume, check=False)


async def _ok_when(status: int, got: Any) -> tuple[bool, tuple[int, str]]:
    result: tuple[int, str] = await got
    return result[0] == status, result

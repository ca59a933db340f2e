"""The container engine for tests/container: podman (standing in for docker), the offline base image made with
mmdebstrap, the image built from the Dockerfile, and the README's Docker commands as argv lists.

scripts/container-engine installs podman/buildah/runc/mmdebstrap and writes the engine settings this kind of machine
needs (see ../shared/notes/container-build.md); this module installs nothing. The base image is cached in podman's
store under a tag derived from its recipe (`podman image exists`), so only the first run pays for mmdebstrap.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
ENGINE_CONF = Path("/etc/containers/containers.conf.d/50-sandbox.conf")

# The base: Debian bookworm's Python 3.11 (the official python:3.11-slim-bookworm needs a registry). The CA hook
# carries the host's extra CAs (an intercepting HTTPS proxy) so pip inside the build verifies TLS.
BASE_RECIPE = [
    "mmdebstrap",
    "--variant=minbase",
    "--include=python3,python3-pip,python-is-python3,ca-certificates",
    '--aptopt=Dir::Cache::pkgcache ""',
    '--aptopt=Dir::Cache::srcpkgcache ""',
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    '--customize-hook=cp /usr/local/share/ca-certificates/*.crt "$1"/usr/local/share/ca-certificates/ || true',
    '--customize-hook=chroot "$1" update-ca-certificates',
    '--customize-hook=rm -rf "$1"/var/lib/apt/lists/*',
    "bookworm",
]
BASE_CHANGES = ["ENV PIP_BREAK_SYSTEM_PACKAGES=1", "ENV LANG=C.UTF-8", 'CMD ["python3"]']
BASE_REPO = "localhost/otagw-base"
IMAGE = "localhost/otagw-test:latest"


def engine_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for podman and network namespaces (tests/container)"
    for tool in ("podman", "mmdebstrap", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/container-engine installs the container engine)"
    if not ENGINE_CONF.is_file():
        return f"{ENGINE_CONF} missing (scripts/container-engine writes it)"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError(
            f"podman {shlex.join(args)} exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
        )
    return res


def _apt_sources() -> Path:
    for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if p.is_file() and p.stat().st_size:
            return p
    raise AssertionError("no apt sources file on the host for mmdebstrap")


def base_image() -> tuple[str, float]:
    """The base image's tag (made now if podman's store has no image for this recipe) and the seconds it took."""
    sources = _apt_sources()
    key = hashlib.sha256("\n".join([*BASE_RECIPE, *BASE_CHANGES, sources.read_text()]).encode()).hexdigest()[
        :12
    ]
    tag = f"{BASE_REPO}:bookworm-{key}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag, 0.0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="otagw-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        res = subprocess.run(
            [*BASE_RECIPE, str(tar), str(sources)], capture_output=True, text=True, timeout=600, check=False
        )
        if res.returncode != 0:
            raise AssertionError(f"mmdebstrap failed ({res.returncode}):\n{res.stderr[-4000:]}")
        changes = [a for c in BASE_CHANGES for a in ("--change", c)]
        podman("import", *changes, str(tar), tag, timeout=300)
    podman("tag", tag, f"{BASE_REPO}:bookworm")  # the name scripts/lock-image uses
    return tag, time.monotonic() - t0


def image_id(ref: str) -> str | None:
    res = podman("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


@dataclass
class Command:
    """One `docker ...` command of the README: its argv (docker first) and the line it came from."""

    argv: list[str]
    text: str


def readme_docker_commands(readme: Path = README) -> list[Command]:
    """Every `docker`/`podman` command in the README's ```sh blocks (continuation lines joined, comments dropped)."""
    commands: list[Command] = []
    for block in re.findall(r"```sh\n(.*?)```", readme.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            text = line.split(" # ", 1)[0].strip()
            if text.startswith(("docker ", "podman ")):
                commands.append(Command(shlex.split(text), text))
    return commands


def find_command(commands: list[Command], *words: str) -> Command:
    """The one README command whose argv starts with `words[0]` and contains every other word as a token or
    substring of one; an AssertionError naming what is missing otherwise (the README and the test drifted)."""
    head, *rest = words
    found = [
        c for c in commands if c.argv[0] == head and all(any(w == a or w in a for a in c.argv) for w in rest)
    ]
    assert len(found) == 1, (
        f"README: expected one `{' ... '.join(words)}` command, found {[c.text for c in found]}"
    )
    return found[0]

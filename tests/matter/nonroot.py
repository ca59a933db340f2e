"""Run Python code as an unprivileged user from a root test: a real user (made with useradd), the same interpreter.

The test machine's interpreter may live under a directory only root can enter (/root/.pyenv): the helper enters a
private mount namespace (root), bind-mounts the interpreter's prefix at a path everyone can reach, optionally
bind-mounts a directory over /data (to stand in for a Docker volume the user owns), and runs the code with
`runuser`. Nothing changes on the host outside that namespace except the test user's existence.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ensure_user", "nonroot_unavailable_reason", "run_as_user"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def nonroot_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a test user and switch to it"
    for tool in ("useradd", "runuser", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def ensure_user(name: str = "otagwtest", uid: int | None = None) -> pwd.struct_passwd:
    """The test user (created, without a home, when missing; `uid` wished for, used when free)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    cmd = ["useradd", "-M", "-s", "/usr/sbin/nologin"]
    if uid is not None:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            cmd += ["-u", str(uid)]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    return pwd.getpwnam(name)


def run_as_user(
    user: str,
    code: str,
    *,
    data_over: Path | None = None,
    tmp_over: Path | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code` as `user` (see the module docstring); returns the finished process (text).
    `data_over`/`tmp_over`: directories bind-mounted over /data and /tmp for it (a container's volume and tmp)."""
    prefix = Path(sys.base_prefix)
    # not under /tmp: a worker in user-namespace mode has a private /tmp
    view = Path("/var/tmp") / f"otagw-pyview-{os.getpid()}"
    view.mkdir(exist_ok=True)
    site = view / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    pythonpath = os.pathsep.join([str(_REPO_ROOT), str(site)])
    py = view / "bin" / Path(sys.executable).name
    if not py.name.startswith("python3"):
        py = view / "bin" / "python3"
    script = (
        'set -e; mount --bind "$1" "$2"; if [ -n "$3" ]; then mount --bind "$3" /data; fi; '
        'if [ -n "$4" ]; then mount --bind "$4" /tmp; fi; shift 4; exec "$@"'
    )
    cmd = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(prefix),
        str(view),
        str(data_over or ""),
        str(tmp_over or ""),
        "runuser",
        "-u",
        user,
        "--",
        "env",
        f"PYTHONPATH={pythonpath}",
        "PYTHONDONTWRITEBYTECODE=1",
        str(py),
        "-c",
        code,
    ]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=str(_REPO_ROOT), check=False
        )
    finally:
        view.rmdir()

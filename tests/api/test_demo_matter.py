"""`otagw demo` with Matter devices, as a process: the real Matter adapter in a network namespace of the demo's own,
matter.js requestors in another, commissioned and updated by a second rollout alongside the simulated Zigbee lights.
Also: Ctrl-C in the middle of commissioning leaves no namespace and no node process behind.
Skips with the reason when not root / no Node + matter.js / no chip SDK.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli.demo import matter_unavailable_reason

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
# the demo finds the matter.js scripts only where it is told (never relative to the installed package)
os.environ.setdefault("OTAGW_MATTERJS_DIR", str(ROOT / "tests" / "js"))


def _skip_unless_matter() -> None:
    reason = matter_unavailable_reason()
    if reason:
        pytest.skip(reason)


def _leftovers(out: str, data_dir: Path) -> list[str]:
    """Namespaces named in the demo's banner that still exist, and node processes still using its data dir."""
    names = re.findall(r"netns (otagw-demo-[0-9a-f]+-[ab])", out) + re.findall(
        r"node in (otagw-demo-[0-9a-f]+-[ab])", out
    )
    assert names, out
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [n for n in names if re.search(rf"^{re.escape(n)}\b", existing, re.M)]
    procs = subprocess.run(
        ["pgrep", "-af", str(data_dir)], capture_output=True, text=True, check=False
    ).stdout
    return left + [p for p in procs.splitlines() if "ota_requestor_device" in p]


def _demo_cmd(data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--devices",
        "4",
        "--soak",
        "0",
        "--matter-devices",
        "2",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def test_demo_updates_matter_and_zigbee_devices(tmp_path: Path) -> None:
    _skip_unless_matter()
    data_dir = tmp_path / "demo"
    proc = subprocess.run(
        _demo_cmd(data_dir, "--exit-when-done", "100"),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "left out" not in out, out
    assert re.search(r"dashboard:\s+http://127\.0\.0\.1:\d+/login\?token=\S{20,}", out), out + err[-3000:]
    assert "zigbee rollout completed; devices: 1 failed, 3 updated" in out, out + err[-3000:]
    assert "matter rollout completed; devices: 2 updated" in out, out + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not _leftovers(out, data_dir)


def test_demo_ctrl_c_while_commissioning_cleans_up(tmp_path: Path) -> None:
    _skip_unless_matter()
    data_dir = tmp_path / "demo"
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        proc = subprocess.Popen(
            _demo_cmd(data_dir),
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out_f,
            stderr=err_f,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while "Ctrl-C stops it." not in out_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(1.0)  # the first matter.js device is starting / being commissioned
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
            assert proc.wait(timeout=45) == 0, err_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    out, err = out_path.read_text(), err_path.read_text()
    assert "Traceback" not in err, err[-3000:]
    assert not _leftovers(out, data_dir)

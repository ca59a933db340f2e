"""`otagw demo` end to end as a process: simulated Zigbee lights, a three-wave rollout, the summary at the end
(every light updated except the one built to fail), exit code 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_a_rollout_to_completion(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
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
            "--no-matter",
            "--data-dir",
            str(tmp_path / "demo"),
            "--exit-when-done",
            "150",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=240,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"dashboard:\s+http://127\.0\.0\.1:\d+/login\?token=\S{20,}", out), out + err[-3000:]
    assert "Matter devices left out: --no-matter given" in out, out
    assert "zigbee rollout completed; devices: 1 failed, 3 updated" in out, out + err[-3000:]
    assert "Traceback" not in err

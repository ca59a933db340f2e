"""Helpers for the Matter end-to-end tests (no tests here): the matter.js OTA requestor device as a subprocess in a
network namespace, the matter.js test PAAs, and skip reasons. The device class lives in
`adapters.matter.sim.matterjs_device` (shared with `otagw demo`), which finds the scripts only through
`$OTAGW_MATTERJS_DIR`: this module points it at this checkout's tests/js (unless the caller already chose one).
Re-exported here for test_commission*.py, test_e2e_*.py and bench/.
"""

from __future__ import annotations

import os
from pathlib import Path

from adapters.matter.sim.matterjs_device import (
    MATTERJS_DIR_ENV,
    PREFIX,
    REBOOT_EXIT,
    MatterJsDevice,
    MatterJsDeviceError,
    export_paas,
    node_unavailable_reason,
)

JS_DIR = Path(os.environ.setdefault(MATTERJS_DIR_ENV, str(Path(__file__).resolve().parents[1] / "js")))
DEVICE_SCRIPT = JS_DIR / "ota_requestor_device.mjs"

__all__ = [
    "DEVICE_SCRIPT",
    "JS_DIR",
    "PREFIX",
    "REBOOT_EXIT",
    "MatterJsDevice",
    "MatterJsDeviceError",
    "export_paas",
    "node_unavailable_reason",
]

"""Helpers for the Matter end-to-end tests (no tests here): the matter.js OTA requestor device as a subprocess in a
network namespace, the matter.js test PAAs, and skip reasons. They live in `adapters.matter.sim.matterjs_device`
(shared with `otagw demo`); re-exported here for test_commission*.py, test_e2e_*.py and bench/.
"""

from __future__ import annotations

from adapters.matter.sim.matterjs_device import (
    DEVICE_SCRIPT,
    JS_DIR,
    PREFIX,
    REBOOT_EXIT,
    MatterJsDevice,
    MatterJsDeviceError,
    export_paas,
    node_unavailable_reason,
)

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

"""Hardware-free Matter peers for the demo and the interop tests: a network-namespace pair (`netns`) and the
matter.js OTA requestor device as a subprocess (`matterjs_device`). Nothing here runs in the root namespace."""

from adapters.matter.fabric.controller import runner_unavailable_reason
from adapters.matter.sim.matterjs_device import (
    MATTERJS_DIR_ENV,
    MatterJsDevice,
    MatterJsDeviceError,
    device_script,
    export_paas,
    js_dir,
    node_unavailable_reason,
)
from adapters.matter.sim.netns import (
    NetnsPair,
    NetnsSide,
    create_pair,
    delete_pair,
    netns_pair,
    netns_unavailable_reason,
)

__all__ = [
    "MATTERJS_DIR_ENV",
    "MatterJsDevice",
    "MatterJsDeviceError",
    "NetnsPair",
    "NetnsSide",
    "create_pair",
    "delete_pair",
    "device_script",
    "export_paas",
    "js_dir",
    "netns_pair",
    "netns_unavailable_reason",
    "node_unavailable_reason",
    "runner_unavailable_reason",
]
